// Package upstream keeps track of where each route's traffic may go, so
// that a home server whose IPv6 prefix changes keeps being reached, and
// nothing else ever is:
//
//   - hostnames are resolved by AAAA (A only with allow_ipv4) and
//     re-resolved shortly before their TTL, clamped to a floor and a
//     ceiling, runs out; when the resolver fails, the last good answer
//     stays in use and the log says so;
//   - a home can push its address (the relay is its own dynamic DNS; see
//     package dyndns), whole or as a /64 prefix combined with a fixed
//     interface identifier; the last pushed address survives restarts in
//     the storage directory;
//   - addresses outside a route's allowed_prefixes are never used, and a
//     route with an identity check uses a new address only after a TLS
//     handshake there shows a certificate for the route's host (or a
//     pinned key);
//   - several upstreams per route are tried in priority order or round
//     robin, with active health checks and passive ejection after failed
//     dials. Failover happens when dialing, never once a byte has moved.
//
// A change of address affects only new connections: open ones keep theirs.
//
// Typical use, by the proxy:
//
//	reg := upstream.NewRegistry(upstream.Options{Logger: logger, Metrics: m})
//	defer reg.Close()
//	routes, err := reg.Apply(cfg) // again on every reload
//	up := routes["misskey"].Main
//	addrs, err := up.Candidates(ctx) // in the order to try
//	for _, a := range addrs {
//		// dial a, refusing in net.Dialer.Control any address for which
//		// up.Allows(a) is false at that moment
//		up.Report(a, err) // feeds passive ejection
//	}
package upstream

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Upstream is what a route dials for one kind of traffic: the addresses
// its upstream set offers at the moment of the dial, each on the port for
// that traffic.
type Upstream struct {
	set  *Set
	kind kind

	// Without a set (Parse): one host resolved on every call.
	host      string
	port      uint16
	fixed     netip.AddrPort
	allowIPv4 bool
	resolver  *net.Resolver
}

// Parse returns an Upstream for host:port that is not part of any route's
// set: a name is resolved (with r, nil for the system's resolver) on every
// call to Candidates, with no TTL cache, health or failover.
//
// Deprecated: use the Upstream a Registry gives the route.
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

// String describes the upstream for messages.
func (u *Upstream) String() string {
	if u.set == nil {
		return net.JoinHostPort(u.host, strconv.Itoa(int(u.port)))
	}
	var parts []string
	for _, m := range u.set.members {
		if m.ports[u.kind] == 0 {
			continue
		}
		s := m.spec
		s.Port, s.Address = m.ports[u.kind], ""
		if s.Host != "" {
			parts = append(parts, net.JoinHostPort(s.Host, strconv.Itoa(int(s.Port))))
		} else {
			parts = append(parts, s.String())
		}
	}
	return strings.Join(parts, ", ")
}

// Candidates returns the addresses a new connection should try, in
// order. It waits, until ctx is done, for upstreams that have not been
// resolved yet (just after start or reload).
func (u *Upstream) Candidates(ctx context.Context) ([]netip.AddrPort, error) {
	if u.set != nil {
		return u.set.candidates(ctx, u.kind)
	}
	if u.fixed.IsValid() {
		return []netip.AddrPort{u.fixed}, nil
	}
	ans, err := netResolver{u.resolver}.lookup(ctx, u.host, u.allowIPv4)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", u.host, err)
	}
	if len(ans.addrs) == 0 {
		return nil, fmt.Errorf("resolve %s: %w", u.host, ErrNoAddress)
	}
	out := make([]netip.AddrPort, len(ans.addrs))
	for i, ip := range ans.addrs {
		out[i] = netip.AddrPortFrom(ip, u.port)
	}
	return out, nil
}

// Allows reports whether the set offers ap right now. The dialer asks it
// in net.Dialer.Control, so an address withdrawn since Candidates (a
// prefix change, a failed identity check) is never connected to. An
// Upstream from Parse has no standing set: the caller must check that ap
// is among the Candidates it just got.
func (u *Upstream) Allows(ap netip.AddrPort) bool {
	if u.set == nil {
		return true
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	return u.set.allows(ap)
}

// Report tells the set how a dial to ap went, for passive ejection.
func (u *Upstream) Report(ap netip.AddrPort, err error) {
	if u.set != nil {
		u.set.report(ap, err)
	}
}
