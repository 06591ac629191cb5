package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Certificates supplies the in-process TLS server: certificates by SNI
// (from ACME or files) and the answers to ACME challenges.
// *acme.Manager implements it.
type Certificates interface {
	// TLSConfig returns the config for terminated connections. Its
	// GetCertificate also answers acme-tls/1 challenge handshakes.
	TLSConfig() *tls.Config
	// HandleHTTPChallenge answers an ACME HTTP-01 request and reports
	// whether r was one.
	HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool
}

// Limits of the terminating HTTP servers. Documented in the README.
const (
	// TermHeaderTimeout bounds reading a request's head.
	TermHeaderTimeout = 10 * time.Second
	// TermIdleTimeout closes keep-alive connections with no request.
	TermIdleTimeout = 2 * time.Minute
	// TermMaxHeaderBytes bounds a request head (431 beyond it).
	TermMaxHeaderBytes = 64 << 10
	// TermBodyIdleTimeout cuts an upload that makes no progress for this
	// long; a slow upload that keeps moving is never cut.
	TermBodyIdleTimeout = time.Minute
	// TermWriteIdleTimeout cuts a response to a client that stops reading
	// for this long; a slow reader that keeps reading is never cut.
	TermWriteIdleTimeout = time.Minute
	// DefaultResponseHeaderTimeout bounds waiting for the origin's
	// response head (504 beyond it).
	DefaultResponseHeaderTimeout = time.Minute
	// MaxResponseHeaderBytes bounds each response head from an origin
	// (502 beyond it), so a broken origin cannot make the relay buffer
	// without end. Informational (1xx) heads, relayed to the client as
	// they come, are bounded each the same, and together by the time
	// allowed for the response head.
	MaxResponseHeaderBytes = 1 << 20
	// HTTP/2 limits per connection.
	TermMaxConcurrentStreams = 250
	TermMaxReadFrameSize     = 1 << 20
)

// TermTimeouts overrides limits of the terminating HTTP servers; a zero
// field keeps the documented default.
type TermTimeouts struct {
	Header    time.Duration // default TermHeaderTimeout
	Idle      time.Duration // default TermIdleTimeout
	BodyIdle  time.Duration // default TermBodyIdleTimeout
	WriteIdle time.Duration // default TermWriteIdleTimeout
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// terminator runs the in-process HTTP servers that terminated connections
// are handed to: one for TLS (:443) and one for plain HTTP (:80).
type terminator struct {
	tlsLn  *chanListener
	httpLn *chanListener
	tlsSrv *http.Server
	plain  *http.Server
	bufs   *sync.Pool // the HTTP/1 guards' buffers, lent while a head is incomplete
}

func (s *Server) term() *terminator {
	s.termOnce.Do(func() {
		t := &terminator{tlsLn: newChanListener(), httpLn: newChanListener(), bufs: newGuardBufPool()}
		errLog := zap.NewStdLog(s.logger().Named("http"))
		newSrv := func(h http.Handler) *http.Server {
			srv := &http.Server{
				Handler:           h,
				ReadHeaderTimeout: or(s.TermTimeouts.Header, TermHeaderTimeout),
				IdleTimeout:       or(s.TermTimeouts.Idle, TermIdleTimeout),
				MaxHeaderBytes:    TermMaxHeaderBytes,
				ErrorLog:          errLog,
				HTTP2: &http.HTTP2Config{
					MaxConcurrentStreams: TermMaxConcurrentStreams,
					MaxReadFrameSize:     TermMaxReadFrameSize,
				},
			}
			srv.Protocols = new(http.Protocols)
			srv.Protocols.SetHTTP1(true)
			srv.Protocols.SetHTTP2(true)
			return srv
		}
		t.tlsSrv = newSrv(closeAfterFailedUpgrade(http.HandlerFunc(s.serveTerminated)))
		t.tlsSrv.ConnContext = withTLSState
		t.plain = newSrv(closeAfterFailedUpgrade(http.HandlerFunc(s.servePlain)))
		go t.tlsSrv.Serve(t.tlsLn)
		go t.plain.Serve(t.httpLn)
		s.terminator = t
	})
	return s.terminator
}

// shutdownTerm stops the terminating servers gracefully: idle keep-alive
// connections close now, active requests get until ctx is done.
func (s *Server) shutdownTerm(ctx context.Context) {
	t := s.terminator
	if t == nil {
		return
	}
	var wg sync.WaitGroup
	for _, srv := range []*http.Server{t.tlsSrv, t.plain} {
		wg.Add(1)
		go func() { defer wg.Done(); srv.Shutdown(ctx) }()
	}
	wg.Wait()
}

// terminate completes the TLS handshake for a terminated host and hands
// the connection to the in-process HTTP server. The connection ends, and
// is logged and counted whole, when that server closes it.
func (s *Server) terminate(c net.Conn, peeked []byte, r *route, l *connLog, end *connEnd) {
	if s.Certs == nil {
		l.outcome, l.err = outcomeHandshake, errors.New("no certificate source configured")
		c.Close()
		return
	}
	tc := &trackedConn{Conn: newPrefixConn(c, peeked)}
	tlsConn := tls.Server(tc, s.Certs.TLSConfig())
	tlsConn.SetDeadline(time.Now().Add(r.timeouts.Hello))
	handshakeDone := s.lim.handshaking()
	err := tlsConn.Handshake()
	handshakeDone()
	if err != nil {
		l.outcome, l.err = outcomeHandshake, err
		tlsConn.Close()
		l.fromClient, l.toClient = tc.in.Load(), tc.out.Load()
		return
	}
	tlsConn.SetDeadline(time.Time{})
	if tlsConn.ConnectionState().NegotiatedProtocol == "acme-tls/1" {
		// A CA validating TLS-ALPN-01: the handshake was the whole answer.
		l.outcome = outcomeTerminated
		tlsConn.Close()
		return
	}
	t := s.term()
	var handed net.Conn = tlsConn
	if tlsConn.ConnectionState().NegotiatedProtocol != "h2" {
		handed = guardHTTP1(tlsConn, t.bufs)
	}
	tc.onClose = endTerminated(tc, l, end)
	if !t.tlsLn.hand(handed) {
		l.outcome = outcomeShutdown
		tlsConn.Close()
	}
}

// terminateHTTP hands a :80 connection whose first request is for a
// terminated host to the in-process plain HTTP server, replaying the head.
func (s *Server) terminateHTTP(c net.Conn, br *bufio.Reader, h *reqHead, r *route, l *connLog, end *connEnd) {
	buffered, _ := br.Peek(br.Buffered())
	replay := append(append([]byte(nil), h.raw...), buffered...)
	tc := &trackedConn{Conn: newPrefixConn(c, replay)}
	tc.onClose = endTerminated(tc, l, end)
	t := s.term()
	if !t.httpLn.hand(guardHTTP1(tc, t.bufs)) {
		l.outcome = outcomeShutdown
		tc.Close()
	}
}

// endTerminated takes over end for a connection about to be handed to
// the HTTP server and returns what its Close must run: record the
// outcome, unless the hand-over was refused, then end the connection.
func endTerminated(tc *trackedConn, l *connLog, end *connEnd) func() {
	finish := end.handOff()
	return func() {
		if l.outcome == "" {
			l.outcome = outcomeTerminated
			l.fromClient, l.toClient = tc.in.Load(), tc.out.Load()
		}
		finish()
	}
}

// trackedConn counts bytes and, once handed to the HTTP server, ends the
// connection when the server closes it.
type trackedConn struct {
	net.Conn
	in, out atomic.Int64
	once    sync.Once
	onClose func() // nil until the connection is handed over
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.Add(int64(n))
	return n, err
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.Add(int64(n))
	return n, err
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	if c.onClose != nil {
		c.once.Do(c.onClose)
	}
	return err
}

type tlsStateKey struct{}

// withTLSState keeps the TLS state of a guarded HTTP/1.x connection, which
// Go's server cannot see through the guard, for the handler to restore.
func withTLSState(ctx context.Context, c net.Conn) context.Context {
	if g, ok := c.(*guardedConn); ok {
		if tc, ok := g.Conn.(*tls.Conn); ok {
			st := tc.ConnectionState()
			return context.WithValue(ctx, tlsStateKey{}, &st)
		}
	}
	return ctx
}

// chanListener is a net.Listener fed with connections the relay has
// already accepted and routed.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

// hand gives c to the server, or reports false once the listener is closed.
func (l *chanListener) hand(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return chanAddr{} }

type chanAddr struct{}

func (chanAddr) Network() string { return "relay46" }
func (chanAddr) String() string  { return "in-process" }

var _ net.Listener = (*chanListener)(nil)

// drainBody discards a small request body so the connection can be reused.
func drainBody(r *http.Request) {
	io.CopyN(io.Discard, r.Body, 64<<10)
}
