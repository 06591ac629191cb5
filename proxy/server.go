// Package proxy is the relay itself: it accepts TLS connections and routes
// them by SNI, passing them through to the origin untouched or handing
// them to the in-process TLS terminator, and accepts plain HTTP
// connections and relays them by Host.
//
// Typical use:
//
//	srv := &proxy.Server{Logger: logger, Metrics: m}
//	if err := srv.Apply(cfg); err != nil { ... }
//	go srv.Serve(httpsListener, proxy.HTTPS)
//	go srv.Serve(httpListener, proxy.HTTP)
//	...
//	srv.Shutdown(ctx) // stop accepting, drain, then close what is left
//
// Where a ClientHello is routed: tls.go. Where an HTTP request head is
// routed: http.go. How bytes move: relay.go.
package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
)

// Protocol is what a listener accepts.
type Protocol string

// The listener protocols; their values name listeners in logs and metrics.
const (
	HTTPS Protocol = "https"
	HTTP  Protocol = "http"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Server relays connections according to the config it was last given by
// Apply. Its zero value is ready for Apply; fields must be set before the
// first Apply and not changed after.
type Server struct {
	// Logger receives one line per finished connection and every error.
	// Nil means no logs.
	Logger *zap.Logger
	// Metrics records what happens. Nil means no metrics.
	Metrics *metrics.Metrics
	// Resolver looks up hostname upstreams. Nil means the system's.
	Resolver *net.Resolver
	// Certs supplies certificates for terminated routes. Nil makes their
	// TLS handshakes fail (passthrough routes do not need it).
	Certs Certificates
	// ResponseHeaderTimeout bounds waiting for a terminated route's origin
	// to start its response. Zero means DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// TermTimeouts overrides the terminating HTTP servers' limits.
	TermTimeouts TermTimeouts

	termOnce   sync.Once
	terminator *terminator
	viaOnce    sync.Once
	via        string // this process in Via headers (loop.go)
	lim        limiter
	peekers    sync.Pool  // *peeker, reused across :443 connections (peek.go)
	copyBufs   bufferPool // ReverseProxy's copy buffers, shared by all terminated routes

	table     atomic.Pointer[table]
	upstreams upstreamRegistry // route upstream sets, kept across reloads (table.go)

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]io.Closer // what Shutdown closes; nil: the conn
	park      parker                 // quiet passthrough relays (park_linux.go)
	closed    bool
	wg        sync.WaitGroup // one per live connection
}

// SetLimits installs flood limits; connections already admitted are not
// affected. Safe to call at any time.
func (s *Server) SetLimits(l Limits) { s.lim.limits.Store(&l) }

// Apply validates and installs cfg. Connections already open keep the
// route they were given; new ones see cfg.
func (s *Server) Apply(cfg *config.Config) error {
	t, err := s.newTable(cfg)
	if err != nil {
		return err
	}
	for _, r := range t.routes() {
		if r.cfg.Mode == config.Terminate {
			if err := s.setupTerminate(r); err != nil {
				return err
			}
		}
	}
	if old := s.table.Swap(t); old != nil {
		// Requests in flight keep their transport; idle origin
		// connections of the old config are let go.
		for _, r := range old.routes() {
			if r.term != nil {
				r.term.transport.CloseIdleConnections()
			}
		}
	}
	return nil
}

func (s *Server) logger() *zap.Logger {
	if s.Logger == nil {
		return zap.NewNop()
	}
	return s.Logger
}

// Serve accepts connections on ln until ln is closed or Shutdown is called.
// Temporary accept errors (such as running out of file descriptors) back
// off and retry instead of returning.
func (s *Server) Serve(ln net.Listener, p Protocol) error {
	if !s.track(ln) {
		ln.Close()
		return ErrServerClosed
	}
	defer s.untrack(ln)
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logger().Warn("accept failed; retrying", zap.String("listener", string(p)), zap.Error(err), zap.Duration("backoff", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		reason, release := s.lim.admit(addrPort(c.RemoteAddr()).Addr())
		if reason != "" {
			s.refuse(c, p, reason)
			continue
		}
		if !s.addConn(c) {
			release()
			c.Close()
			continue
		}
		go s.handle(c, p, release)
	}
}

// handle serves one accepted connection; release ends its admission.
func (s *Server) handle(c net.Conn, p Protocol, release func()) {
	end := new(connEnd)
	end.add(release)
	end.add(func() { s.doneConn(c) })
	defer end.run()
	s.Metrics.ConnStarted(string(p))
	t := s.table.Load()
	if t == nil {
		c.Close()
		return
	}
	switch p {
	case HTTPS:
		s.handleTLS(c, t, end)
	case HTTP:
		s.handleHTTP(c, t, end)
	default:
		c.Close()
	}
}

// connEnd is what must happen when a connection ends (its log line and
// metrics, route and admission counts, shutdown tracking), run last added
// first, like defers. A connection handed to the terminator ends when the
// HTTP server closes it, long after its handler has returned: rather than
// keep a goroutine per connection waiting for that, the handler hands
// the connEnd to the connection's Close.
type connEnd struct {
	fns    []func()
	handed bool
}

func (e *connEnd) add(f func()) { e.fns = append(e.fns, f) }

// run runs the connEnd unless it was handed off.
func (e *connEnd) run() {
	if !e.handed {
		e.runAll()
	}
}

// handOff makes run do nothing and returns the function that ends the
// connection instead, for exactly one caller to call once.
func (e *connEnd) handOff() func() {
	e.handed = true
	return e.runAll
}

func (e *connEnd) runAll() {
	for i := len(e.fns) - 1; i >= 0; i-- {
		e.fns[i]()
	}
}

// connLog is what one finished connection reports.
type connLog struct {
	listener   Protocol
	client     netip.AddrPort
	route      *route
	mode       string
	sni        string // SNI or Host the client asked for
	upstream   netip.AddrPort
	outcome    string
	start      time.Time
	fromClient int64
	toClient   int64
	err        error
}

// Outcomes of a connection, as logged and counted.
const (
	outcomeOK          = "ok"
	outcomeUnknownSNI  = "unknown_sni"
	outcomeUnknownHost = "unknown_host"
	outcomeDialFailed  = "dial_failed"
	outcomeIdle        = "idle_timeout"
	outcomeAborted     = "aborted"
	outcomeBadRequest  = "bad_request"
	outcomeTerminated  = "terminated"
	outcomeHandshake   = "handshake_failed"
	outcomeShutdown    = "shutdown"
	outcomeRouteLimit  = "route_limit"
)

// metricOutcome folds a logged outcome into the metric's small fixed set.
func metricOutcome(o string) string {
	switch o {
	case outcomeOK, outcomeTerminated:
		return metrics.OutcomeOK
	case outcomeUnknownSNI, outcomeUnknownHost:
		return metrics.OutcomeUnknownHost
	case outcomeDialFailed:
		return metrics.OutcomeDialFailed
	case outcomeIdle:
		return metrics.OutcomeTimeout
	case outcomeHandshake:
		return metrics.OutcomeHandshakeFailed
	case outcomeAborted:
		return metrics.OutcomeError
	case outcomeShutdown:
		return metrics.OutcomeShutdown
	case outcomeRouteLimit:
		return metrics.OutcomeRefused
	}
	return metrics.OutcomePeekFailed
}

func (s *Server) finish(l *connLog) {
	d := time.Since(l.start)
	routeName, mode := "none", l.mode
	if l.route != nil {
		routeName = l.route.name
	}
	if mode == "" {
		mode = "none"
	}
	// Bytes count as relayed only once an origin (or the terminator) took
	// them: a refused ClientHello was read, never relayed.
	relayedIn, relayedOut := l.fromClient, l.toClient
	if !l.upstream.IsValid() && l.outcome != outcomeTerminated {
		relayedIn, relayedOut = 0, 0
	}
	s.Metrics.ConnFinished(string(l.listener), routeName, mode, metricOutcome(l.outcome), d, relayedIn, relayedOut)
	log := s.logger()
	lvl := zap.InfoLevel
	if l.outcome != outcomeOK && l.outcome != outcomeTerminated {
		lvl = zap.WarnLevel
	} else if l.route != nil && !l.route.cfg.AccessLog {
		return
	}
	if ce := log.Check(lvl, "connection"); ce != nil {
		fields := []zap.Field{
			zap.String("listener", string(l.listener)),
			zap.String("route", routeName),
			zap.String("mode", mode),
			zap.String("client", l.client.String()),
			zap.String("host", l.sni),
			zap.String("outcome", l.outcome),
			zap.Int64("bytes_from_client", l.fromClient),
			zap.Int64("bytes_to_client", l.toClient),
			zap.Duration("duration", d),
		}
		if l.upstream.IsValid() {
			fields = append(fields, zap.String("upstream", l.upstream.String()))
		}
		if l.err != nil {
			fields = append(fields, zap.Error(l.err))
		}
		ce.Write(fields...)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if a != nil {
		if ap, err := netip.ParseAddrPort(a.String()); err == nil {
			return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		}
	}
	return netip.AddrPort{}
}

func (s *Server) track(ln net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[ln] = struct{}{}
	return true
}

func (s *Server) untrack(ln net.Listener) {
	s.mu.Lock()
	delete(s.listeners, ln)
	s.mu.Unlock()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) addConn(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]io.Closer{}
	}
	s.conns[c] = nil
	s.wg.Add(1)
	return true
}

// closeWith makes Shutdown close c by closing closer, which owns it.
func (s *Server) closeWith(c net.Conn, closer io.Closer) {
	s.mu.Lock()
	if _, ok := s.conns[c]; ok {
		s.conns[c] = closer
	}
	s.mu.Unlock()
}

func (s *Server) doneConn(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown stops accepting, waits for open connections to finish until
// ctx is done, then closes those still open and waits for their
// goroutines. It is safe to call more than once.
func (s *Server) Shutdown(ctx context.Context) error {
	defer s.closeUpstreams()
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.mu.Unlock()

	go s.shutdownTerm(ctx)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		if t := s.terminator; t != nil {
			t.tlsLn.Close()
			t.httpLn.Close()
		}
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	n := len(s.conns)
	for c, closer := range s.conns {
		if closer != nil {
			closer.Close()
		} else {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.logger().Info("grace period over; closed open connections", zap.Int("connections", n))
	<-done
	if t := s.terminator; t != nil {
		t.tlsLn.Close()
		t.httpLn.Close()
	}
	return ctx.Err()
}

// ActiveConns returns the number of connections being handled.
func (s *Server) ActiveConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}
