package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
)

// errHostChanged ends the relay of a keep-alive connection whose next
// request is for a host another route serves: its origin must not see it.
var errHostChanged = errors.New("next request is for another route")

// handleHTTP routes one :80 connection by the Host of its first request
// and relays it to the route's http_upstream.
func (s *Server) handleHTTP(c net.Conn, t *table, end *connEnd) {
	l := &connLog{listener: HTTP, client: addrPort(c.RemoteAddr()), start: time.Now()}
	end.add(func() { s.finish(l) })

	br := bufio.NewReaderSize(c, 4096)
	c.SetReadDeadline(time.Now().Add(t.cfg.Timeouts.Hello))
	handshakeDone := s.lim.handshaking()
	h, err := readHead(br)
	handshakeDone()
	c.SetReadDeadline(time.Time{})
	if err != nil {
		l.err = err
		var he *headError
		switch {
		case errors.As(err, &he):
			l.outcome = outcomeBadRequest
			reason := metrics.PeekMalformed
			if he.Status == http.StatusRequestHeaderFieldsTooLarge || he.Status == http.StatusRequestURITooLong {
				reason = metrics.PeekTooLarge
			}
			s.Metrics.PeekFailed(string(HTTP), reason)
			writeStatus(c, he.Status, he.Msg)
		default:
			l.outcome = peekOutcome(classify(err))
			s.Metrics.PeekFailed(string(HTTP), metricReason(classify(err)))
			c.Close()
		}
		return
	}
	l.fromClient = int64(len(h.raw))
	l.sni = h.host
	r := t.lookup(hostOnly(h.host))
	if r == nil || (r.cfg.Mode == config.Passthrough && r.http == nil) {
		s.Metrics.UnknownHost(string(HTTP))
		l.outcome = outcomeUnknownHost
		writeStatus(c, http.StatusMisdirectedRequest, "no route for this host")
		return
	}
	l.route, l.mode = r, string(r.cfg.Mode)
	if !r.acquire() {
		l.outcome = outcomeRouteLimit
		s.Metrics.Refused(string(HTTP), metrics.RefusedRouteLimit)
		writeStatus(c, http.StatusServiceUnavailable, "too many connections for this site; try again shortly")
		return
	}
	end.add(r.release)
	if r.cfg.Mode == config.Terminate {
		s.terminateHTTP(c, br, h, r, l, end)
		return
	}

	up, addr, err := s.dialUpstream(context.Background(), r, r.http)
	l.upstream = addr
	if err != nil {
		l.outcome, l.err = outcomeDialFailed, err
		writeStatus(c, http.StatusBadGateway, "the origin did not answer")
		return
	}
	first := appendProxyHeader(make([]byte, 0, 64+len(h.raw)), r.proxyVer, c)
	first = append(first, h.raw...)
	up.SetWriteDeadline(time.Now().Add(r.timeouts.Dial))
	if _, err := up.Write(first); err != nil {
		l.outcome, l.err = outcomeDialFailed, err
		up.Close()
		writeStatus(c, http.StatusBadGateway, "the origin did not answer")
		return
	}
	up.SetWriteDeadline(time.Time{})
	var stop error
	res := relay(c, up, s.requestCopier(c, br, h, r, t, &stop), r.timeouts.Idle)
	l.fromClient = res.fromClient
	l.toClient = res.toClient
	l.outcome, l.err = relayOutcome(res), res.err
	if stop != nil && l.err == nil {
		l.err = stop
	}
}

// requestCopier forwards the body of the first request, then each further
// request on the connection, checking every head as it goes. A request
// for another route, or one that must be refused, ends the client's half
// of the relay cleanly: responses already on their way still arrive.
func (s *Server) requestCopier(c net.Conn, br *bufio.Reader, h *reqHead, r *route, t *table, stop *error) copier {
	return func(dst net.Conn) (int64, error) {
		n := int64(len(h.raw))
		for {
			m, err := copyBody(dst, br, h)
			n += m
			if err != nil {
				return n, err
			}
			if h.upgrade {
				// Switching protocols (WebSocket): the rest is opaque.
				m, err := io.Copy(dst, br)
				return n + m, err
			}
			if h.closeAfter {
				return n, nil
			}
			next, err := readHead(br)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					*stop = err
				}
				return n, nil
			}
			if t.lookup(hostOnly(next.host)) != r {
				*stop = errHostChanged
				return n, nil
			}
			w, err := dst.Write(next.raw)
			n += int64(w)
			if err != nil {
				return n, err
			}
			h = next
		}
	}
}

// hostOnly strips a port from a Host header value.
func hostOnly(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
}

// writeStatus answers a request the relay will not forward and closes the
// connection gracefully, so the answer is not lost to a reset.
func writeStatus(c net.Conn, code int, msg string) {
	body := "relay46: " + msg + "\n"
	resp := "HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n" +
		"Connection: close\r\n\r\n" + body
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	c.Write([]byte(resp))
	lingerClose(c)
}

// lingerClose half-closes c and drains what the client still sends for a
// moment before closing, so that closing with unread input does not reset
// the connection and destroy a response the client has not yet read.
func lingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		c.SetReadDeadline(time.Now().Add(time.Second))
		io.CopyN(io.Discard, c, 64<<10)
	}
	c.Close()
}
