package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/relay46/relay46/upstream"
)

// ErrNotAllowed is returned when a dial targets an address that the
// route's upstream did not resolve to. It cannot happen through normal
// routing; the check is what keeps the relay from ever being an open proxy,
// whatever DNS answers or a future code path does.
var ErrNotAllowed = errors.New("address not allowed for this route")

// dialUpstream resolves up and connects to its addresses in order until
// one answers. Failover happens only here, before any byte is relayed.
func (s *Server) dialUpstream(ctx context.Context, r *route, up *upstream.Upstream) (*net.TCPConn, netip.AddrPort, error) {
	start := time.Now()
	conn, addr, err := s.dialAddrs(ctx, r, up)
	s.Metrics.DialDone(r.name, time.Since(start), err)
	return conn, addr, err
}

func (s *Server) dialAddrs(ctx context.Context, r *route, up *upstream.Upstream) (*net.TCPConn, netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeouts.Dial)
	defer cancel()
	addrs, err := up.Resolve(ctx)
	if err != nil {
		return nil, netip.AddrPort{}, err
	}
	d := net.Dialer{Timeout: r.timeouts.Dial, Control: allowOnly(addrs)}
	var errs []error
	for _, a := range addrs {
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err == nil {
			return c.(*net.TCPConn), a, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, netip.AddrPort{}, fmt.Errorf("dial %s: %w", up, errors.Join(errs...))
}

// allowOnly returns a net.Dialer Control function that refuses any address
// not in allowed. It runs after name resolution, on the address the socket
// is about to connect to.
func allowOnly(allowed []netip.AddrPort) func(network, address string, _ syscall.RawConn) error {
	return func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%w: %s", ErrNotAllowed, address)
		}
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		for _, a := range allowed {
			if a == ap {
				return nil
			}
		}
		return fmt.Errorf("%w: %s", ErrNotAllowed, address)
	}
}
