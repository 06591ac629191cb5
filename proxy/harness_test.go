package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay46/relay46/internal/leaktest"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/proxy/proxyproto"
)

func TestMain(m *testing.M) { leaktest.Main(m, "relay46/proxy.", "the proxy") }

// testCert makes a self-signed ECDSA certificate for names.
func testCert(t testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// origin is a test origin on [::1] that counts its connections.
type origin struct {
	ln       net.Listener
	accepted atomic.Int64
	headers  chan proxyproto.Header // PROXY headers seen, when it expects them
}

func (o *origin) addr() string { return o.ln.Addr().String() }

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// startOrigin starts an HTTP(S) origin on [::1]. With pp it requires a
// PROXY header and reports it; with cert it serves TLS.
func startOrigin(t testing.TB, cert *tls.Certificate, pp bool, h http.Handler) *origin {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback is needed for these tests: %v", err)
	}
	o := &origin{ln: ln, headers: make(chan proxyproto.Header, 100)}
	var inner net.Listener = countingListener{ln, &o.accepted}
	if pp {
		inner = &headerListener{&proxyproto.Listener{Listener: inner, Required: true}, o.headers}
	}
	if cert != nil {
		inner = tls.NewListener(inner, &tls.Config{Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2", "http/1.1"}})
	}
	if h == nil {
		h = echoHandler()
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(inner)
	t.Cleanup(func() { srv.Close() })
	return o
}

// headerListener reports each connection's PROXY header.
type headerListener struct {
	*proxyproto.Listener
	out chan proxyproto.Header
}

func (l *headerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	go func() {
		if h, err := c.(*proxyproto.Conn).Header(); err == nil {
			select {
			case l.out <- h:
			default:
			}
		}
	}()
	return c, nil
}

func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "host=%s path=%s remote=%s body=%d", r.Host, r.URL.Path, r.RemoteAddr, len(body))
	})
}

type relayUnderTest struct {
	srv   *Server
	https string // 127.0.0.1:port
	http  string
	logs  *observer.ObservedLogs
}

// startRelay runs a proxy.Server with the YAML config body (listen and
// admin are filled in) on fresh loopback listeners.
func startRelay(t testing.TB, yaml string) *relayUnderTest {
	t.Helper()
	return startRelayWith(t, yaml, nil)
}

// startRelayWith is startRelay with a chance to set Server fields first.
func startRelayWith(t testing.TB, yaml string, setup func(*Server)) *relayUnderTest {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte("listen: {http: \"127.0.0.1:0\", https: \"127.0.0.1:0\"}\nadmin: \"\"\n"+yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	core, logs := observer.New(zap.DebugLevel)
	s := &Server{Logger: zap.New(core)}
	if setup != nil {
		setup(s)
	}
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	r := &relayUnderTest{srv: s, logs: logs}
	for _, p := range []Protocol{HTTPS, HTTP} {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if p == HTTPS {
			r.https = ln.Addr().String()
		} else {
			r.http = ln.Addr().String()
		}
		go s.Serve(ln, p)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return r
}

// outcomes returns the outcome of every finished connection logged so far.
func (r *relayUnderTest) outcomes() []string {
	var out []string
	for _, e := range r.logs.FilterMessage("connection").All() {
		out = append(out, e.ContextMap()["outcome"].(string))
	}
	return out
}

// waitOutcome waits until a connection finished with outcome o.
func (r *relayUnderTest) waitOutcome(t testing.TB, o string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, e := range r.logs.FilterMessage("connection").All() {
			if m := e.ContextMap(); m["outcome"] == o {
				return m
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	var all []map[string]any
	for _, e := range r.logs.FilterMessage("connection").All() {
		all = append(all, e.ContextMap())
	}
	t.Fatalf("no connection finished with outcome %q; connections: %v", o, all)
	return nil
}

// httpsGet makes one HTTPS request to the relay with SNI host, trusting roots.
func httpsGet(t testing.TB, relayAddr, host, path string, roots *x509.CertPool) (string, *tls.ConnectionState, error) {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp4", relayAddr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := c.Get("https://" + host + path)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.TLS, err
}

// serveLoopback6 accepts on [::1]:0 until the test ends and hands each
// connection to handle in a goroutine of its own; handle closes it.
func serveLoopback6(t testing.TB, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln
}
