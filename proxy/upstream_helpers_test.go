package proxy

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// homeOrigin is a home server for the upstream tests: an HTTPS (or HTTP)
// server at a fixed address that answers with its name, and that can be
// stopped and started again at the same address, like a home that goes
// offline and comes back. Its certificate can be swapped while it runs.
type homeOrigin struct {
	t       testing.TB
	name    string
	network string // tcp6 or tcp4
	addr    string
	cert    atomic.Pointer[tls.Certificate] // nil: plain HTTP
	status  atomic.Int32                    // answer to /healthz; 0 means 200
	served  atomic.Int64

	mu  sync.Mutex
	srv *http.Server
	ln  net.Listener // the TCP listener under srv
}

func startHome(t testing.TB, name, network, addr string, cert *tls.Certificate) *homeOrigin {
	t.Helper()
	h := &homeOrigin{t: t, name: name, network: network, addr: addr}
	if cert != nil {
		h.cert.Store(cert)
	}
	if err := h.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.stop)
	return h
}

func (h *homeOrigin) start() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		return nil
	}
	ln, err := net.Listen(h.network, h.addr)
	if err != nil {
		return err
	}
	h.addr = ln.Addr().String()
	h.ln = ln
	if h.cert.Load() != nil {
		ln = tls.NewListener(ln, &tls.Config{
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return h.cert.Load(), nil },
			NextProtos:     []string{"http/1.1"},
		})
	}
	h.srv = &http.Server{Handler: http.HandlerFunc(h.serve), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)} // refused handshakes are the point of some tests
	go h.srv.Serve(ln)
	return nil
}

// pause stops accepting but lets connections already accepted finish, as
// an origin that goes unreachable for new connections does.
func (h *homeOrigin) pause() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		srv := h.srv
		h.srv = nil
		// Closed here, not by Shutdown in its goroutine: once pause
		// returns, a new connection is refused.
		h.ln.Close()
		done := make(chan struct{})
		go func() { srv.Shutdown(context.Background()); close(done) }()
		h.t.Cleanup(func() { <-done })
	}
}

// stop closes the listener and every open connection.
func (h *homeOrigin) stop() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		h.srv.Close()
		h.srv = nil
	}
}

func (h *homeOrigin) port() int {
	_, p, _ := net.SplitHostPort(h.addr)
	n, _ := strconv.Atoi(p)
	return n
}

func (h *homeOrigin) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		if s := int(h.status.Load()); s != 0 {
			w.WriteHeader(s)
		}
		return
	}
	h.served.Add(1)
	io.WriteString(w, h.name)
}

// loopbackPair returns a port free on both [::1] and 127.0.0.1 and
// listens on neither: the two loopback addresses stand for a home's old
// and new address, reached on the same port as a prefix change keeps it.
func loopbackPair(t testing.TB) int {
	t.Helper()
	for range 50 {
		l6, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Fatalf("IPv6 loopback is needed for these tests: %v", err)
		}
		port := l6.Addr().(*net.TCPAddr).Port
		l4, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		l6.Close()
		if err == nil {
			l4.Close()
			return port
		}
	}
	t.Fatal("no port free on both loopback addresses")
	return 0
}

// whoServes makes one new HTTPS connection through the relay and returns
// the name of the origin that answered.
func whoServes(t testing.TB, r *relayUnderTest, host string, roots *x509.CertPool) (string, error) {
	t.Helper()
	body, _, err := httpsGet(t, r.https, host, "/", roots)
	return body, err
}

// waitServes polls new connections until origin name answers, and
// returns how long that took.
func waitServes(t testing.TB, r *relayUnderTest, host string, roots *x509.CertPool, name string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < within {
		if got, err = whoServes(t, r, host, roots); err == nil && got == name {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("after %s new connections still reach %q (error %v), want %q", within, got, err, name)
	return 0
}

// steadyServes checks that every new connection for d reaches name.
func steadyServes(t testing.TB, r *relayUnderTest, host string, roots *x509.CertPool, name string, d time.Duration) {
	t.Helper()
	for start := time.Now(); time.Since(start) < d; time.Sleep(50 * time.Millisecond) {
		got, err := whoServes(t, r, host, roots)
		if err != nil || got != name {
			t.Fatalf("a new connection reached %q (error %v), want %q", got, err, name)
		}
	}
}

// keptConn is a client connection through the relay, kept open to show
// that an address change leaves it where it was.
type keptConn struct {
	c  *tls.Conn
	br *bufio.Reader
}

func keepConn(t testing.TB, r *relayUnderTest, host string, roots *x509.CertPool) *keptConn {
	t.Helper()
	c, err := tls.Dial("tcp4", r.https, &tls.Config{ServerName: host, RootCAs: roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &keptConn{c: c, br: bufio.NewReader(c)}
}

// ask sends one request on the kept connection and returns the answer.
func (k *keptConn) ask(t testing.TB, host string) string {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(k.c, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host)
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		t.Fatalf("the kept connection broke: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// testCA issues certificates from one root, as a public CA would for
// several subscribers.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay46 test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pool: x509.NewCertPool()}
	ca.pool.AddCert(cert)
	ca.pem = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return ca
}

func (ca *testCA) issue(t testing.TB, names ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// pinOf is the pin_sha256 of a certificate's key.
func pinOf(c tls.Certificate) string {
	sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func writeTemp(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func bcryptHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// logCount counts logged messages.
func (r *relayUnderTest) logCount(msg string) int {
	return r.logs.FilterMessage(msg).Len()
}

// countOutcome counts finished connections with outcome o.
func (r *relayUnderTest) countOutcome(o string) int {
	n := 0
	for _, got := range r.outcomes() {
		if got == o {
			n++
		}
	}
	return n
}

var errNoAnswer = errors.New("no answer")

// getText sends a GET and returns status and trimmed body.
func getText(c *http.Client, req *http.Request) (int, string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}
