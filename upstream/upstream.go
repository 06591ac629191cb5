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
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Upstream is what a route dials for one kind of traffic: the addresses
// its upstream set offers at the moment of the dial, each on the port for
// that traffic. A Registry gives each route its Upstreams.
type Upstream struct {
	set  *Set
	kind kind
}

// String describes the upstream for messages.
func (u *Upstream) String() string {
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
	return u.set.candidates(ctx, u.kind)
}

// Allows reports whether the set offers ap right now. The dialer asks it
// in net.Dialer.Control, so an address withdrawn since Candidates (a
// prefix change, a failed identity check) is never connected to.
func (u *Upstream) Allows(ap netip.AddrPort) bool {
	return u.set.allows(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

// Report tells the set how a dial to ap went, for passive ejection.
func (u *Upstream) Report(ap netip.AddrPort, err error) {
	u.set.report(ap, err)
}
