package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/upstream"
)

// ErrNotAllowed is returned when a dial targets an address that the
// route's upstreams do not offer at that moment. It cannot happen through
// normal routing; the check is what keeps the relay from ever being an
// open proxy, whatever DNS answers, a pushed update or a future code path
// does.
var ErrNotAllowed = upstream.ErrNotAllowed

// dialUpstream connects to the first of up's addresses that answers, in
// the order the upstream set gives (healthy first, by priority or round
// robin). Failover happens only here, before any byte is relayed; each
// attempt has the route's dial timeout and is reported to the set, which
// ejects addresses that keep failing.
func (s *Server) dialUpstream(ctx context.Context, r *route, up *upstream.Upstream) (*net.TCPConn, netip.AddrPort, error) {
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, r.timeouts.Dial)
	addrs, err := up.Candidates(wctx)
	cancel()
	if err != nil {
		s.Metrics.DialDone(r.name, time.Since(start), err)
		return nil, netip.AddrPort{}, fmt.Errorf("dial %s: %w", up, err)
	}
	d := net.Dialer{Control: allowOnly(up, addrs)}
	var errs []error
	for _, a := range addrs {
		actx, cancel := context.WithTimeout(ctx, r.timeouts.Dial)
		start := time.Now()
		c, err := d.DialContext(actx, "tcp", a.String())
		cancel()
		s.Metrics.DialDone(r.name, time.Since(start), err)
		up.Report(a, err)
		if err == nil {
			return c.(*net.TCPConn), a, nil
		}
		if ce := s.logger().Check(zap.DebugLevel, "upstream dial failed"); ce != nil {
			ce.Write(zap.String("route", r.name), zap.String("address", a.String()), zap.Error(err))
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("dial %s: %w", up, errors.Join(errs...))
}

// allowOnly returns a net.Dialer Control function that refuses any address
// that is not among the candidates of this dial or that the upstream set
// no longer offers (it changed since). It runs on the address the socket
// is about to connect to, after any name resolution.
func allowOnly(up *upstream.Upstream, candidates []netip.AddrPort) func(network, address string, _ syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrNotAllowed, address)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !slices.Contains(candidates, ap) || !up.Allows(ap) {
			return fmt.Errorf("%w: %s", ErrNotAllowed, address)
		}
		return nil
	}
}
