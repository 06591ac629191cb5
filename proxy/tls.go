package proxy

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/proxy/proxyproto"
)

// handleTLS routes one :443 connection by the SNI of its ClientHello.
// end holds what must happen when the connection ends; a parked relay
// takes it over and runs it when it finishes, after handleTLS returned.
func (s *Server) handleTLS(c net.Conn, t *table, end *connEnd) {
	l := &connLog{listener: HTTPS, client: addrPort(c.RemoteAddr()), start: time.Now()}
	end.add(func() { s.finish(l) })
	r, p := s.routeHello(c, t, l)
	if r == nil {
		return
	}
	end.add(r.release)
	if r.cfg.Mode == config.Terminate {
		// The terminator replays the peeked bytes from its own
		// goroutines: p is not reused, its buffer goes with the
		// connection. A full TLS handshake dwarfs the allocation.
		s.terminate(c, p.rec.bytes(), r, l, end)
		return
	}
	s.passthrough(c, p, r, l, end)
}

// routeHello peeks the ClientHello and finds, and admits the connection
// to, its route. When it returns no route, c has been answered and closed;
// otherwise the caller owns p, which holds the peeked bytes, and the
// route's slot (release).
func (s *Server) routeHello(c net.Conn, t *table, l *connLog) (r *route, p *peeker) {
	held := s.getPeeker()
	defer func() {
		if r == nil {
			s.putPeeker(held)
		}
	}()
	c.SetReadDeadline(time.Now().Add(t.cfg.Timeouts.Hello))
	handshakeDone := s.lim.handshaking()
	hello, peeked, err := held.peek(c)
	handshakeDone()
	c.SetReadDeadline(time.Time{})
	l.fromClient = int64(len(peeked))
	if err != nil {
		l.outcome, l.err = peekOutcome(err), err
		s.Metrics.PeekFailed(string(HTTPS), metricReason(err))
		c.Close()
		return nil, nil
	}
	l.sni = hello.ServerName
	r = t.lookup(hello.ServerName)
	if r == nil {
		s.Metrics.UnknownHost(string(HTTPS))
		if r = t.unknownSNI; r == nil {
			l.outcome = outcomeUnknownSNI
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(alertUnrecognizedName)
			c.Close()
			return nil, nil
		}
	}
	l.route, l.mode = r, string(r.cfg.Mode)
	if !r.acquire() {
		l.outcome = outcomeRouteLimit
		s.Metrics.Refused(string(HTTPS), metrics.RefusedRouteLimit)
		c.Close()
		return nil, nil
	}
	return r, held
}

// passthrough dials the route's origin, sends the PROXY header and the
// peeked ClientHello, then relays bytes untouched in both directions. It
// returns p to the pool as soon as the hello is sent, not when the
// connection ends, so idle connections do not each hold a buffer. A
// parked relay takes end over and runs it when it finishes.
func (s *Server) passthrough(c net.Conn, p *peeker, r *route, l *connLog, end *connEnd) {
	up, addr, err := s.dialUpstream(context.Background(), r, r.tls)
	l.upstream = addr
	if err != nil {
		s.putPeeker(p)
		l.outcome, l.err = outcomeDialFailed, err
		c.Close()
		return
	}
	var hdr [headerRoom]byte
	first := p.rec.withHeader(appendProxyHeader(hdr[:0], r.proxyVer, c))
	up.SetWriteDeadline(time.Now().Add(r.timeouts.Dial))
	_, err = up.Write(first)
	s.putPeeker(p)
	if err != nil {
		l.outcome, l.err = outcomeDialFailed, err
		up.Close()
		c.Close()
		return
	}
	up.SetWriteDeadline(time.Time{})
	// Handed off before the relay starts: a parked relay may finish, on
	// its own goroutines, before startParked has returned.
	done := end.handOff()
	finished := func(res relayResult) {
		l.fromClient += res.fromClient
		l.toClient = res.toClient
		l.outcome, l.err = relayOutcome(res), res.err
		done()
	}
	if ct, ok := c.(*net.TCPConn); ok {
		if pr, ok := s.park.startParked(ct, up, r.timeouts.Idle, finished); ok {
			s.closeWith(c, pr)
			pr.copyFromClient()
			return
		}
	}
	finished(relay(c, up, rawCopier(c), r.timeouts.Idle))
}

// appendProxyHeader appends the PROXY header for version v (0: none)
// describing c: the client's address and the address it connected to.
func appendProxyHeader(b []byte, v int, c net.Conn) []byte {
	src, dst := addrPort(c.RemoteAddr()), addrPort(c.LocalAddr())
	switch v {
	case 1:
		return proxyproto.AppendV1(b, src, dst)
	case 2:
		return proxyproto.AppendV2(b, src, dst)
	}
	return b
}

func relayOutcome(res relayResult) string {
	switch {
	case res.idle:
		return outcomeIdle
	case res.err != nil:
		return outcomeAborted
	}
	return outcomeOK
}

func peekOutcome(err error) string {
	for _, e := range []error{ErrHelloTimeout, ErrNotTLS, ErrHelloTooLarge, ErrHelloEOF, ErrHelloInvalid} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return ErrHelloInvalid.Error()
}

// metricReason maps a peek error to the metric's fixed reason set.
func metricReason(err error) string {
	switch {
	case errors.Is(err, ErrHelloTimeout):
		return "timeout"
	case errors.Is(err, ErrNotTLS):
		return "not_tls"
	case errors.Is(err, ErrHelloTooLarge):
		return "too_large"
	case errors.Is(err, ErrHelloEOF):
		return "eof"
	}
	return "malformed"
}
