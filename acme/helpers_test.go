package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/relay46/relay46/acme/pebbletest"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, leakIgnores()...)
}

// leakIgnores are goroutines that outlive a Close by design:
// Pebble's VA task loop never ends, and certmagic refreshes a file lock
// every 5s and notices its release only on the next tick.
func leakIgnores() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("github.com/letsencrypt/pebble/v2/va.VAImpl.processTasks"),
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
	}
}

// checkLeaks fails the test if goroutines started during it are still
// running once all its cleanups (Close, servers, Pebble) have run. Call it
// first, so its cleanup runs last. Not for parallel tests.
func checkLeaks(t *testing.T) {
	opts := append(leakIgnores(), goleak.IgnoreCurrent())
	t.Cleanup(func() { goleak.VerifyNone(t, opts...) })
}

// testLogger logs to the test log (until the test ends: certmagic's
// goroutines may log after it) and to an observer for assertions.
func testLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	obsCore, logs := observer.New(zapcore.InfoLevel)
	w := &cutoffWriter{logf: t.Logf}
	t.Cleanup(w.cut)
	enc := zap.NewDevelopmentEncoderConfig()
	textCore := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.AddSync(w), zapcore.InfoLevel)
	return zap.New(zapcore.NewTee(textCore, obsCore)), logs
}

type cutoffWriter struct {
	mu   sync.Mutex
	logf func(string, ...any)
	done bool
}

func (w *cutoffWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.logf("%s", b[:len(b)-1])
	}
	return len(b), nil
}

func (w *cutoffWriter) cut() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// env stands in for the relay: a Pebble CA, and the loopback "port 80"
// and "port 443" its VA connects to, which hand challenges to the
// Managers the way the relay does. With several Managers, each request or
// connection goes to the next one in turn, so a validation often lands on
// a Manager that did not start it.
type env struct {
	t      *testing.T
	pebble *pebbletest.Pebble
	logMu  sync.Mutex
	log    strings.Builder // Pebble's log
	http01 atomic.Int32    // challenge requests answered
	alpn01 atomic.Int32    // acme-tls/1 handshakes completed

	mu       sync.Mutex
	managers []*Manager
	next     int
}

// envOpts varies the env: IPv6 puts the challenge listeners on [::1] and
// has Pebble's DNS answer AAAA ::1, as for an IPv6-only relay.
type envOpts struct {
	IPv6 bool
	// NonceRejectPercent has Pebble reject that share of nonces.
	NonceRejectPercent int
}

func newEnv(t *testing.T, opts envOpts) *env {
	e := &env{t: t}
	loopback := netip.MustParseAddr("127.0.0.1")
	if opts.IPv6 {
		loopback = netip.IPv6Loopback()
	}
	httpLn := listenOn(t, loopback)
	tlsLn := listenOn(t, loopback)
	e.pebble = pebbletest.Start(t, pebbletest.Opts{
		HTTPPort:           httpLn.Addr().(*net.TCPAddr).Port,
		TLSPort:            tlsLn.Addr().(*net.TCPAddr).Port,
		Addr:               loopback,
		NonceRejectPercent: opts.NonceRejectPercent,
		Logf: func(format string, args ...any) {
			e.logMu.Lock()
			fmt.Fprintf(&e.log, format+"\n", args...)
			e.logMu.Unlock()
			t.Logf(format, args...)
		},
	})
	srv := &http.Server{Handler: http.HandlerFunc(e.serveHTTP), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(httpLn) }()
	t.Cleanup(func() { _ = srv.Close() })
	serveTLS(t, tlsLn, func() *tls.Config {
		if m := e.pick(); m != nil {
			return m.TLSConfig()
		}
		return &tls.Config{}
	}, func(cs tls.ConnectionState) {
		if cs.NegotiatedProtocol == acmez.ACMETLS1Protocol {
			e.alpn01.Add(1)
		}
	})
	return e
}

func (e *env) pebbleLog() string {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.log.String()
}

func (e *env) pick() *Manager {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.managers) == 0 {
		return nil
	}
	m := e.managers[e.next%len(e.managers)]
	e.next++
	return m
}

func (e *env) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if m := e.pick(); m != nil && m.HandleHTTPChallenge(w, r) {
		e.http01.Add(1)
		return
	}
	http.NotFound(w, r)
}

// newManager makes a Manager against this env's Pebble, routed to by the
// env's listeners and closed at the end of the test.
func (e *env) newManager(opts Options) *Manager {
	e.t.Helper()
	opts.CA = e.pebble.DirectoryURL
	opts.CARoots = e.pebble.DirectoryRoots
	if opts.Storage == "" {
		opts.Storage = e.t.TempDir()
	}
	if opts.Logger == nil {
		opts.Logger, _ = testLogger(e.t)
	}
	m, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = m.Close() })
	e.mu.Lock()
	e.managers = append(e.managers, m)
	e.mu.Unlock()
	return m
}

func listen(t *testing.T) net.Listener {
	return listenOn(t, netip.MustParseAddr("127.0.0.1"))
}

func listenOn(t *testing.T, ip netip.Addr) net.Listener {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// serveTLS is the relay's in-process TLS server in miniature: handshake
// with the config, close acme-tls/1 connections right away, and hold the
// others open until the client hangs up.
func serveTLS(t *testing.T, ln net.Listener, config func() *tls.Config, handshook func(tls.ConnectionState)) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				conn := tls.Server(c, config())
				if err := conn.Handshake(); err != nil {
					return
				}
				handshook(conn.ConnectionState())
				if conn.ConnectionState().NegotiatedProtocol != acmez.ACMETLS1Protocol {
					_, _ = io.Copy(io.Discard, conn)
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
}

// serveManager starts a loopback TLS server for m alone and returns its
// address: what a browser reaching the relay would see.
func serveManager(t *testing.T, m *Manager) string {
	ln := listen(t)
	serveTLS(t, ln, m.TLSConfig, func(tls.ConnectionState) {})
	return ln.Addr().String()
}

// fetchLeaf connects with SNI host, trusting only roots, and verifies the
// chain once more explicitly: name, server-auth usage, and a P-256 key.
func fetchLeaf(addr, host string, roots *x509.CertPool) (*x509.Certificate, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{
		ServerName: host,
		RootCAs:    roots,
		NextProtos: []string{"h2", "http/1.1"},
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	certs := conn.ConnectionState().PeerCertificates
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	leaf := certs[0]
	if _, err := leaf.Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return nil, fmt.Errorf("explicit verification: %w", err)
	}
	if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("leaf key is %T, want ECDSA P-256", leaf.PublicKey)
	}
	return leaf, nil
}

// waitLeaf polls until host is served with a valid chain for which ok
// holds, and returns that leaf.
func waitLeaf(t *testing.T, addr, host string, roots *x509.CertPool, ok func(*x509.Certificate) bool) *x509.Certificate {
	t.Helper()
	var last error
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		leaf, err := fetchLeaf(addr, host, roots)
		if err == nil && (ok == nil || ok(leaf)) {
			return leaf
		}
		if err != nil {
			last = err
		} else {
			last = errors.New("served certificate did not change")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not served as expected: %v", host, last)
	return nil
}

// recorder collects OnEvent calls.
type recorder struct {
	mu     sync.Mutex
	events []Event
}

func (r *recorder) record(e Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) all() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

func (r *recorder) wait(t *testing.T, kind, host, result string) Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range r.all() {
			if e.Kind == kind && e.Host == host && e.Result == result {
				return e
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %s/%s event for %s; got %+v", kind, result, host, r.all())
	return Event{}
}

func (r *recorder) count(kind, host, result string) int {
	n := 0
	for _, e := range r.all() {
		if e.Kind == kind && e.Host == host && e.Result == result {
			n++
		}
	}
	return n
}

var certmagicAttempts = certmagic.AttemptsCtxKey

func testChallenge(host, typ, token string) acme.Challenge {
	return acme.Challenge{
		Type:             typ,
		Token:            token,
		KeyAuthorization: token + ".thumbprint",
		Identifier:       acme.Identifier{Type: "dns", Value: host},
	}
}

func newRequest(method, host, path string) (*httptest.ResponseRecorder, *http.Request) {
	r := httptest.NewRequest(method, "http://"+host+path, nil)
	r.Host = host
	return httptest.NewRecorder(), r
}

func testCSR(t *testing.T, host string) *x509.CertificateRequest {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := acmez.NewCSR(key, []string{host})
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func parseChain(t *testing.T, chainPEM []byte) []*x509.Certificate {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, chainPEM = pem.Decode(chainPEM)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		t.Fatal("no certificates in chain")
	}
	return certs
}

func parseLeaf(t *testing.T, chainPEM []byte) *x509.Certificate {
	return parseChain(t, chainPEM)[0]
}
