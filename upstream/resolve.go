package upstream

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrNoAddress means a name resolved to no usable address, or a pushed
// upstream has had no address pushed yet.
var ErrNoAddress = errors.New("no usable address")

// answer is what a lookup found: addresses in the order to try them
// (IPv6 first) and how long they may be used. A zero TTL means the
// lookup could not tell; the floor applies.
type answer struct {
	addrs []netip.Addr
	ttl   time.Duration
}

// lookuper resolves a hostname upstream.
type lookuper interface {
	lookup(ctx context.Context, host string, allowIPv4 bool) (answer, error)
}

var (
	_ lookuper = (*dnsClient)(nil)
	_ lookuper = (*hostsThen)(nil)
	_ lookuper = netResolver{}
)

// dnsClient asks DNS servers directly, so that it learns the TTL of the
// answer, which net.Resolver does not expose.
type dnsClient struct {
	servers []string // ip:port, tried in order
	timeout time.Duration
}

// queryTimeout bounds one question to one server.
const queryTimeout = 2 * time.Second

func (c *dnsClient) lookup(ctx context.Context, host string, allowIPv4 bool) (answer, error) {
	name := dns.Fqdn(host)
	a, err := c.query(ctx, name, dns.TypeAAAA)
	if err != nil {
		return answer{}, err
	}
	if allowIPv4 {
		b, err := c.query(ctx, name, dns.TypeA)
		if err != nil {
			return answer{}, err
		}
		a.addrs = append(a.addrs, b.addrs...)
		if a.ttl == 0 || b.ttl > 0 && b.ttl < a.ttl {
			a.ttl = b.ttl
		}
	}
	return a, nil
}

// query asks each server in turn until one answers. An answer without
// records of the type (NOERROR, NODATA) is an empty answer; NXDOMAIN and
// server failures are errors.
func (c *dnsClient) query(ctx context.Context, name string, qtype uint16) (answer, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = true
	timeout := c.timeout
	if timeout <= 0 {
		timeout = queryTimeout
	}
	var errs []error
	for _, srv := range c.servers {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		qctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := exchange(qctx, m, srv)
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", srv, err))
			continue
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			return parseAnswer(resp, name, qtype), nil
		case dns.RcodeNameError:
			return answer{}, fmt.Errorf("%s: %s: no such host (NXDOMAIN)", srv, strings.TrimSuffix(name, "."))
		default:
			errs = append(errs, fmt.Errorf("%s: answered %s", srv, dns.RcodeToString[resp.Rcode]))
		}
	}
	if len(errs) == 0 {
		return answer{}, errors.New("no DNS servers to ask")
	}
	return answer{}, errors.Join(errs...)
}

// exchange asks over UDP and again over TCP when the answer was truncated.
func exchange(ctx context.Context, m *dns.Msg, server string) (*dns.Msg, error) {
	resp, _, err := (&dns.Client{Net: "udp"}).ExchangeContext(ctx, m, server)
	if err == nil && resp.Truncated {
		resp, _, err = (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, server)
	}
	if err == nil && resp.Id != m.Id {
		err = errors.New("answer to another question")
	}
	return resp, err
}

// parseAnswer takes the records of qtype for name, following CNAMEs in
// the answer section. The TTL is the smallest along the chain.
func parseAnswer(resp *dns.Msg, name string, qtype uint16) answer {
	var a answer
	minTTL := func(ttl uint32) {
		d := time.Duration(ttl) * time.Second
		if a.ttl == 0 || d < a.ttl {
			a.ttl = d
		}
		if ttl == 0 {
			a.ttl = time.Nanosecond // "do not cache": the floor applies
		}
	}
	target := strings.ToLower(name)
	for range 8 { // CNAME chains longer than this are not followed
		next := ""
		for _, rr := range resp.Answer {
			h := rr.Header()
			if strings.ToLower(h.Name) != target {
				continue
			}
			switch v := rr.(type) {
			case *dns.CNAME:
				next = strings.ToLower(v.Target)
				minTTL(h.Ttl)
			case *dns.AAAA:
				if qtype == dns.TypeAAAA {
					if ip, ok := netip.AddrFromSlice(v.AAAA); ok {
						a.addrs = append(a.addrs, ip.Unmap())
						minTTL(h.Ttl)
					}
				}
			case *dns.A:
				if qtype == dns.TypeA {
					if ip, ok := netip.AddrFromSlice(v.A); ok {
						a.addrs = append(a.addrs, ip.Unmap())
						minTTL(h.Ttl)
					}
				}
			}
		}
		if len(a.addrs) > 0 || next == "" {
			break
		}
		target = next
	}
	return a
}

// hostsThen answers from a hosts file first, as the system resolver
// would, then asks DNS.
type hostsThen struct {
	hostsFile string
	dns       lookuper
}

func (h *hostsThen) lookup(ctx context.Context, host string, allowIPv4 bool) (answer, error) {
	if addrs := lookupHosts(h.hostsFile, host, allowIPv4); len(addrs) > 0 {
		return answer{addrs: addrs}, nil
	}
	return h.dns.lookup(ctx, host, allowIPv4)
}

// lookupHosts reads a hosts file for host. It is read on every call: it
// is small, and calls are as rare as TTLs allow.
func lookupHosts(path, host string, allowIPv4 bool) []netip.Addr {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	var v6, v4 []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		ip, err := netip.ParseAddr(fields[0])
		if err != nil || ip.Zone() != "" {
			continue
		}
		for _, n := range fields[1:] {
			if strings.ToLower(strings.TrimSuffix(n, ".")) != host {
				continue
			}
			if ip = ip.Unmap(); ip.Is6() {
				v6 = append(v6, ip)
			} else if allowIPv4 {
				v4 = append(v4, ip)
			}
		}
	}
	return append(v6, v4...)
}

// netResolver looks names up with a net.Resolver, which cannot tell the
// TTL: answers are used for the floor.
type netResolver struct{ r *net.Resolver }

func (n netResolver) lookup(ctx context.Context, host string, allowIPv4 bool) (answer, error) {
	network := "ip6"
	if allowIPv4 {
		network = "ip"
	}
	ips, err := n.r.LookupNetIP(ctx, network, host)
	if err != nil {
		return answer{}, err
	}
	var v6, v4 []netip.Addr
	for _, ip := range ips {
		if ip = ip.Unmap(); ip.Is6() {
			v6 = append(v6, ip)
		} else if allowIPv4 {
			v4 = append(v4, ip)
		}
	}
	return answer{addrs: append(v6, v4...)}, nil
}

// systemLookuper is what "the system's resolvers" means: /etc/hosts, then
// the name servers in /etc/resolv.conf asked directly (so TTLs are known).
// Without a readable resolv.conf it falls back to Go's resolver.
func systemLookuper(resolvConf, hostsFile string) lookuper {
	cc, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil || len(cc.Servers) == 0 {
		return netResolver{net.DefaultResolver}
	}
	var servers []string
	for _, s := range cc.Servers {
		servers = append(servers, net.JoinHostPort(s, cc.Port))
	}
	timeout := queryTimeout
	if cc.Timeout > 0 {
		timeout = time.Duration(cc.Timeout) * time.Second
	}
	return &hostsThen{hostsFile: hostsFile, dns: &dnsClient{servers: servers, timeout: timeout}}
}
