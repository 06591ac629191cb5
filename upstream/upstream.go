// Package upstream resolves where a route's traffic goes: an IPv6 literal,
// or a hostname looked up by AAAA (A only when IPv4 is allowed), so that
// a resolver that prefers IPv4 can never turn an IPv6-only origin into a
// dead end.
//
// Typical use:
//
//	up, err := upstream.Parse("home.example.net:443", false, nil)
//	addrs, err := up.Resolve(ctx) // [2001:db8::2:64]:443 …
package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// ErrNoAddress means a hostname resolved to no usable address.
var ErrNoAddress = errors.New("no usable address")

// Upstream is one origin address, fixed or by name.
type Upstream struct {
	host      string
	port      uint16
	fixed     netip.AddrPort // valid when host is an IP literal
	allowIPv4 bool
	resolver  *net.Resolver
}

// Parse reads host:port. Names are resolved with r (nil means the
// system's resolver) by AAAA, plus A when allowIPv4 is set.
func Parse(hostport string, allowIPv4 bool, r *net.Resolver) (*Upstream, error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("bad port %q", ps)
	}
	u := &Upstream{host: host, port: uint16(port), allowIPv4: allowIPv4, resolver: r}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		if ip.Is4() && !allowIPv4 {
			return nil, fmt.Errorf("%s is IPv4 and IPv4 is not allowed", host)
		}
		u.fixed = netip.AddrPortFrom(ip, u.port)
	}
	if u.resolver == nil {
		u.resolver = net.DefaultResolver
	}
	return u, nil
}

// String returns the upstream as configured.
func (u *Upstream) String() string {
	return net.JoinHostPort(u.host, strconv.Itoa(int(u.port)))
}

// Resolve returns the addresses to try, in order.
func (u *Upstream) Resolve(ctx context.Context) ([]netip.AddrPort, error) {
	if u.fixed.IsValid() {
		return []netip.AddrPort{u.fixed}, nil
	}
	network := "ip6"
	if u.allowIPv4 {
		network = "ip"
	}
	ips, err := u.resolver.LookupNetIP(ctx, network, u.host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", u.host, err)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		ip = ip.Unmap()
		if ip.Is4() && !u.allowIPv4 {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, u.port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", u.host, ErrNoAddress)
	}
	return out, nil
}
