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
func (s *Server) handleTLS(c net.Conn, t *table, end *connEnd) {
	l := &connLog{listener: HTTPS, client: addrPort(c.RemoteAddr()), start: time.Now()}
	end.add(func() { s.finish(l) })

	c.SetReadDeadline(time.Now().Add(t.cfg.Timeouts.Hello))
	handshakeDone := s.lim.handshaking()
	hello, peeked, err := PeekHello(c)
	handshakeDone()
	c.SetReadDeadline(time.Time{})
	l.fromClient = int64(len(peeked))
	if err != nil {
		l.outcome, l.err = peekOutcome(err), err
		s.Metrics.PeekFailed(string(HTTPS), metricReason(err))
		c.Close()
		return
	}
	l.sni = hello.ServerName
	r := t.lookup(hello.ServerName)
	if r == nil {
		s.Metrics.UnknownHost(string(HTTPS))
		if r = t.unknownSNI; r == nil {
			l.outcome = outcomeUnknownSNI
			c.SetWriteDeadline(time.Now().Add(time.Second))
			c.Write(alertUnrecognizedName)
			c.Close()
			return
		}
	}
	l.route, l.mode = r, string(r.cfg.Mode)
	if !r.acquire() {
		l.outcome = outcomeRouteLimit
		s.Metrics.Refused(string(HTTPS), metrics.RefusedRouteLimit)
		c.Close()
		return
	}
	end.add(r.release)
	if r.cfg.Mode == config.Terminate {
		s.terminate(c, peeked, r, l, end)
		return
	}
	s.passthrough(c, peeked, r, l)
}

// passthrough dials the route's origin, sends the PROXY header and the
// peeked ClientHello, then relays bytes untouched in both directions.
func (s *Server) passthrough(c net.Conn, peeked []byte, r *route, l *connLog) {
	up, addr, err := s.dialUpstream(context.Background(), r, r.tls)
	l.upstream = addr
	if err != nil {
		l.outcome, l.err = outcomeDialFailed, err
		c.Close()
		return
	}
	first := make([]byte, 0, 64+len(peeked))
	first = appendProxyHeader(first, r.proxyVer, c)
	first = append(first, peeked...)
	up.SetWriteDeadline(time.Now().Add(r.timeouts.Dial))
	if _, err := up.Write(first); err != nil {
		l.outcome, l.err = outcomeDialFailed, err
		up.Close()
		c.Close()
		return
	}
	up.SetWriteDeadline(time.Time{})
	res := relay(c, up, rawCopier(c), r.timeouts.Idle)
	l.fromClient += res.fromClient
	l.toClient = res.toClient
	l.outcome, l.err = relayOutcome(res), res.err
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
