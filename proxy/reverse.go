package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/upstream"
)

// termRoute is the HTTP side of a terminated route: where requests go and
// the pooled transport that takes them there.
type termRoute struct {
	target    *url.URL
	up        *upstream.Upstream
	transport *h1Transport // safe bodiless requests; the rest to its fallback
	proxy     *httputil.ReverseProxy
	trusted   []netip.Prefix
	via       string    // the relay's pseudonym in Via (loop.go)
	vias      [3]string // its Via entries for HTTP/1.0, 1.1 and 2, built once
}

// Canonical keys (http.CanonicalHeaderKey) of the headers the proxy reads
// and sets on every request: indexing the map with them directly skips
// canonicalising the key each time.
const (
	hdrXFF     = "X-Forwarded-For"
	hdrXFProto = "X-Forwarded-Proto"
	hdrXFHost  = "X-Forwarded-Host"
	hdrXRealIP = "X-Real-Ip"
	hdrVia     = "Via"
	hdrUpgrade = "Upgrade"
)

// headerFirst is h.Get(key) for a canonical key.
func headerFirst(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// setupTerminate builds the reverse proxy of a terminated route.
func (s *Server) setupTerminate(r *route) error {
	rc := r.cfg
	target, err := url.Parse(rc.Upstream)
	if err != nil {
		return fmt.Errorf("route %s: upstream: %w", rc.Name, err)
	}
	port := target.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[target.Scheme]
	}
	up := r.origin // the route's upstream set (upstream package): failover, health, pushed addresses
	tr := &termRoute{target: target, up: up, via: s.viaName()}
	for i, v := range [][2]int{{1, 0}, {1, 1}, {2, 0}} {
		tr.vias[i] = viaEntry(&http.Request{ProtoMajor: v[0], ProtoMinor: v[1]}, tr.via)
	}
	for _, p := range rc.TrustedProxies {
		tr.trusted = append(tr.trusted, netip.MustParsePrefix(p))
	}
	tlsCfg, err := upstreamTLS(rc, target)
	if err != nil {
		return err
	}
	respTimeout := s.ResponseHeaderTimeout
	if respTimeout <= 0 {
		respTimeout = DefaultResponseHeaderTimeout
	}
	fallback := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, _, err := s.dialUpstream(ctx, r, up)
			if err != nil {
				return nil, err
			}
			return c, nil
		},
		TLSClientConfig:        tlsCfg,
		ForceAttemptHTTP2:      target.Scheme == "https",
		MaxIdleConnsPerHost:    64,
		IdleConnTimeout:        90 * time.Second,
		ResponseHeaderTimeout:  respTimeout,
		ExpectContinueTimeout:  time.Second,
		TLSHandshakeTimeout:    r.timeouts.Dial,
		MaxResponseHeaderBytes: MaxResponseHeaderBytes,
	}
	tr.transport = &h1Transport{fallback: fallback}
	tr.proxy = &httputil.ReverseProxy{
		Rewrite:      func(pr *httputil.ProxyRequest) { tr.rewrite(pr) },
		Transport:    tr.transport,
		ErrorHandler: func(w http.ResponseWriter, req *http.Request, err error) { s.proxyError(w, req, r, err) },
		ErrorLog:     zap.NewStdLog(s.logger().Named("reverseproxy")),
		BufferPool:   &s.copyBufs,
	}
	r.term = tr
	return nil
}

func upstreamTLS(rc *config.Route, target *url.URL) (*tls.Config, error) {
	if target.Scheme != "https" {
		return nil, nil
	}
	cfg := &tls.Config{ServerName: target.Hostname(), MinVersion: tls.VersionTLS12}
	if rc.UpstreamServerName != "" {
		cfg.ServerName = rc.UpstreamServerName
	}
	if rc.UpstreamCA != "" {
		pem, err := os.ReadFile(rc.UpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("route %s: upstream_ca: %w", rc.Name, err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("route %s: upstream_ca %s: no PEM certificates in it", rc.Name, rc.UpstreamCA)
		}
	}
	return cfg, nil
}

// rewrite sends the request to the origin with the Host, path and body
// exactly as the client sent them (ActivityPub signatures cover them),
// and with forwarding headers the origin can trust: client-supplied ones
// are dropped unless the client is a trusted proxy.
func (tr *termRoute) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = tr.target.Scheme
	pr.Out.URL.Host = tr.target.Host
	pr.Out.Host = pr.In.Host
	// ReverseProxy has re-encoded a query it could not parse (semicolons,
	// bad escapes, over 10,000 parameters), dropping parts of it: send
	// the query the client sent, which is what the origin's signatures
	// and parser expect.
	pr.Out.URL.RawQuery = pr.In.URL.RawQuery

	client := clientAddr(pr.In)
	realIP := client
	proto, host := "http", pr.In.Host
	if pr.In.TLS != nil {
		proto = "https"
	}
	clientStr := client.String()
	xff, realStr := clientStr, clientStr
	if tr.isTrusted(client) {
		if prior := pr.In.Header[hdrXFF]; len(prior) > 0 {
			chain := strings.Join(prior, ", ")
			xff = chain + ", " + xff
			if realIP = tr.realClient(chain, client); realIP != client {
				realStr = realIP.String()
			}
		}
		if v := headerFirst(pr.In.Header, hdrXFProto); v == "http" || v == "https" {
			proto = v
		}
		if v := headerFirst(pr.In.Header, hdrXFHost); v != "" {
			host = v
		}
	}
	// ReverseProxy has already removed X-Forwarded-* and Forwarded from
	// Out; X-Real-IP, ours to set, replaces whatever the client sent. The
	// four values share one array, each capped so an append elsewhere
	// cannot spill into the next.
	vals := []string{xff, proto, host, realStr}
	h := pr.Out.Header
	h[hdrXFF], h[hdrXFProto], h[hdrXFHost], h[hdrXRealIP] = vals[0:1:1], vals[1:2:2], vals[2:3:3], vals[3:4:4]
	h[hdrVia] = append(h[hdrVia], tr.viaFor(pr.In))
}

// viaFor is viaEntry(r, tr.via), built once for the usual versions.
func (tr *termRoute) viaFor(r *http.Request) string {
	switch {
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return tr.vias[0]
	case r.ProtoMajor == 1 && r.ProtoMinor == 1:
		return tr.vias[1]
	case r.ProtoMajor == 2:
		return tr.vias[2]
	}
	return viaEntry(r, tr.via)
}

func (tr *termRoute) isTrusted(a netip.Addr) bool {
	for _, p := range tr.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// realClient walks an X-Forwarded-For chain from the right, past trusted
// proxies, to the first address that is not one: the real client.
func (tr *termRoute) realClient(chain string, peer netip.Addr) netip.Addr {
	parts := strings.Split(chain, ",")
	for i := len(parts) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(parts[i]))
		if err != nil {
			return peer
		}
		a = a.Unmap()
		if !tr.isTrusted(a) {
			return a
		}
		peer = a
	}
	return peer
}

func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// serveTerminated handles a request on a terminated TLS connection.
func (s *Server) serveTerminated(w http.ResponseWriter, req *http.Request) {
	if req.TLS == nil {
		req.TLS, _ = req.Context().Value(tlsStateKey{}).(*tls.ConnectionState)
	}
	if req.TLS == nil {
		s.errorPage(w, req, nil, http.StatusMisdirectedRequest, "This host is not served on this connection.")
		return
	}
	t := s.table.Load()
	r := t.lookup(hostOnly(req.Host))
	sniRoute := t.lookup(req.TLS.ServerName)
	if r == nil || r.term == nil || (sniRoute != nil && sniRoute != r) {
		// A request for a name this connection was not opened for.
		s.errorPage(w, req, nil, http.StatusMisdirectedRequest, "This host is not served on this connection.")
		return
	}
	s.proxyHTTP(w, req, r)
}

// servePlain handles :80 requests for terminated hosts: ACME HTTP-01
// answers, then a redirect to HTTPS or (redirect_http: false) the proxy.
func (s *Server) servePlain(w http.ResponseWriter, req *http.Request) {
	t := s.table.Load()
	r := t.lookup(hostOnly(req.Host))
	if r == nil || r.term == nil {
		s.errorPage(w, req, nil, http.StatusMisdirectedRequest, "This host is not served on this connection.")
		return
	}
	if strings.HasPrefix(req.URL.Path, "/.well-known/acme-challenge/") && s.Certs != nil && s.Certs.HandleHTTPChallenge(w, req) {
		return
	}
	if r.cfg.RedirectHTTP {
		target := "https://" + hostOnly(req.Host) + req.URL.RequestURI()
		drainBody(req)
		w.Header().Set("Location", target)
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusPermanentRedirect)
		fmt.Fprintf(w, "<a href=\"%s\">Moved to HTTPS</a>.\n", html.EscapeString(target))
		s.Metrics.HTTPRequest(r.name, req.Method, http.StatusPermanentRedirect, 0)
		return
	}
	s.proxyHTTP(w, req, r)
}

// proxyHTTP checks a request against the route's limits and proxies it.
func (s *Server) proxyHTTP(w http.ResponseWriter, req *http.Request, r *route) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w, rc: http.NewResponseController(w), writeIdle: or(s.TermTimeouts.WriteIdle, TermWriteIdleTimeout)}
	defer func() {
		s.Metrics.HTTPRequest(r.name, req.Method, rec.code(), time.Since(start))
		s.accessLog(req, r, rec, time.Since(start))
	}()
	if looped(req.Header, r.term.via) {
		s.errorPage(rec, req, r, http.StatusLoopDetected, "This request came back to the relay that forwarded it: the site's upstream leads to the relay itself.")
		return
	}
	up := headerFirst(req.Header, hdrUpgrade)
	if up != "" && !strings.EqualFold(up, "websocket") {
		s.errorPage(rec, req, r, http.StatusBadRequest, "Only WebSocket upgrades are relayed.")
		return
	}
	if req.ContentLength > r.cfg.MaxBody {
		s.errorPage(rec, req, r, http.StatusRequestEntityTooLarge, "The request body is larger than this site accepts.")
		return
	}
	if up != "" {
		// A WebSocket lives as long as its peers want: no read deadline
		// may outlast the handshake on a connection about to be hijacked.
		http.NewResponseController(w).SetReadDeadline(time.Time{})
	} else if req.Body != nil && req.Body != http.NoBody {
		rec.upload = &progressBody{
			ReadCloser: http.MaxBytesReader(rec, req.Body, r.cfg.MaxBody),
			rc:         http.NewResponseController(w),
			idle:       or(s.TermTimeouts.BodyIdle, TermBodyIdleTimeout),
		}
		req.Body = rec.upload
	}
	r.term.proxy.ServeHTTP(rec, req)
}

// progressBody cuts an upload only when it stops making progress: each
// read may take up to TermBodyIdleTimeout.
type progressBody struct {
	io.ReadCloser
	rc       *http.ResponseController
	idle     time.Duration
	deadline atomic.Int64 // of the read in progress, in Unix ns; 0: none
	stalled  atomic.Bool  // a read timed out: the client stopped sending
}

func (b *progressBody) Read(p []byte) (int, error) {
	d := time.Now().Add(b.idle)
	b.deadline.Store(d.UnixNano())
	b.rc.SetReadDeadline(d)
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		b.stalled.Store(true)
	}
	b.deadline.Store(0)
	return n, err
}

// timedOut reports whether the upload stopped arriving. Go's server
// cancels the request's context as the read times out, so the round trip
// may fail, looking like a client that left, before the read returns.
func (b *progressBody) timedOut() bool {
	d := b.deadline.Load()
	return b.stalled.Load() || d != 0 && time.Now().UnixNano() >= d
}

// proxyError turns a failed round trip into a page the user can understand
// and a log line with the cause.
func (s *Server) proxyError(w http.ResponseWriter, req *http.Request, r *route, err error) {
	var mbe *http.MaxBytesError
	var ne net.Error
	code, msg := http.StatusBadGateway, "The origin server could not be reached or broke the connection."
	switch {
	case errors.As(err, &mbe):
		code, msg = http.StatusRequestEntityTooLarge, "The request body is larger than this site accepts."
	case uploadStalled(w):
		code, msg = http.StatusRequestTimeout, "The upload stopped arriving."
	case errors.Is(err, context.Canceled):
		// The client went away; nobody is left to read a page.
		code, msg = 499, ""
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		code, msg = http.StatusGatewayTimeout, "The origin server did not answer in time."
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
	}
	s.logger().Warn("proxy error", zap.String("route", r.name), zap.String("host", req.Host),
		zap.String("client", req.RemoteAddr), zap.Int("status", code), zap.Error(err))
	if code == 499 {
		if rec, ok := w.(*statusRecorder); ok {
			rec.status = 499
		}
		// Send nothing at all: returning would let the server answer an
		// empty 200 to a client that has only half-closed.
		panic(http.ErrAbortHandler)
	}
	s.errorPage(w, req, r, code, msg)
}

// errorPage writes a small HTML page for a status the relay produced.
func (s *Server) errorPage(w http.ResponseWriter, req *http.Request, r *route, code int, msg string) {
	if req.Body != nil {
		drainBody(req)
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	if code == http.StatusRequestEntityTooLarge || code == http.StatusMisdirectedRequest || code == http.StatusRequestTimeout {
		h.Set("Connection", "close")
	}
	w.WriteHeader(code)
	title := strconv.Itoa(code) + " " + http.StatusText(code)
	fmt.Fprintf(w, "<!doctype html>\n<title>%s</title>\n<h1>%s</h1>\n<p>%s</p>\n<hr><p>relay46</p>\n", title, title, html.EscapeString(msg))
	if r == nil {
		s.logger().Info("request refused", zap.String("host", req.Host), zap.String("client", req.RemoteAddr), zap.Int("status", code))
	}
}

// statusRecorder remembers the status and size of a response. Unwrap lets
// http.ResponseController reach Flush, Hijack and deadlines underneath.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	upload *progressBody // the request body, if read under progress deadlines

	// Each write may block for at most writeIdle: a client that stops
	// reading is cut, one that reads slowly is not. The deadline is
	// cleared after the write so a quiet stream (server-sent events)
	// waiting for its next event is not cut either.
	rc        *http.ResponseController
	writeIdle time.Duration
}

// uploadStalled reports whether the request answered through w failed
// because its body stopped arriving.
func uploadStalled(w http.ResponseWriter) bool {
	rec, ok := w.(*statusRecorder)
	return ok && rec.upload != nil && rec.upload.timedOut()
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	r.armWrite()
	n, err := r.ResponseWriter.Write(p)
	r.disarmWrite()
	r.bytes += int64(n)
	return n, err
}

func (r *statusRecorder) Flush() {
	r.armWrite()
	http.NewResponseController(r.ResponseWriter).Flush()
	r.disarmWrite()
}

func (r *statusRecorder) armWrite() {
	if r.rc != nil && r.writeIdle > 0 {
		r.rc.SetWriteDeadline(time.Now().Add(r.writeIdle))
	}
}

func (r *statusRecorder) disarmWrite() {
	if r.rc != nil && r.writeIdle > 0 {
		r.rc.SetWriteDeadline(time.Time{})
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (r *statusRecorder) code() int {
	if r.status == 0 {
		return http.StatusOK
	}
	return r.status
}

// accessLog writes one line per proxied request.
func (s *Server) accessLog(req *http.Request, r *route, rec *statusRecorder, d time.Duration) {
	if !r.cfg.AccessLog {
		return
	}
	ce := s.logger().Check(zap.InfoLevel, "request")
	if ce == nil {
		return
	}
	ce.Write(
		zap.String("route", r.name),
		zap.String("method", req.Method),
		zap.String("host", req.Host),
		zap.String("path", req.URL.Path),
		zap.String("proto", req.Proto),
		zap.Int("status", rec.code()),
		zap.Int64("bytes", rec.bytes),
		zap.Duration("duration", d),
		zap.String("client", clientAddr(req).String()),
		zap.String("upstream", r.term.target.Host),
	)
}

// bufferPool lends ReverseProxy the buffers it copies bodies with;
// without one it allocates 32 KiB per request, most of a keep-alive
// request's garbage. Its zero value is ready.
type bufferPool struct{ p sync.Pool }

// copyBufSize is the size ReverseProxy would allocate itself.
const copyBufSize = 32 << 10

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[copyBufSize]byte); ok {
		return buf[:]
	}
	return make([]byte, copyBufSize)
}

func (b *bufferPool) Put(buf []byte) {
	if len(buf) == copyBufSize {
		b.p.Put((*[copyBufSize]byte)(buf)) // a pointer: putting it allocates nothing
	}
}

var _ httputil.BufferPool = (*bufferPool)(nil)
