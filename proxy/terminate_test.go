package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// staticCerts serves one certificate for every terminated host and
// answers HTTP-01 challenges from a map, standing in for acme.Manager
// (which has its own tests against a real CA).
type staticCerts struct {
	cert       tls.Certificate
	challenges map[string]string
	once       sync.Once
	cfg        *tls.Config
}

// TLSConfig returns one config, as acme.Manager does: session resumption
// needs the same ticket keys on every connection.
func (c *staticCerts) TLSConfig() *tls.Config {
	c.once.Do(func() {
		c.cfg = &tls.Config{Certificates: []tls.Certificate{c.cert}, NextProtos: []string{"h2", "http/1.1", "acme-tls/1"}}
	})
	return c.cfg
}

func (c *staticCerts) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	v, ok := c.challenges[strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/")]
	if ok {
		io.WriteString(w, v)
	}
	return ok
}

// headerEcho answers with the request as the origin saw it.
func headerEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "host=%s uri=%s xff=%q xfp=%q xfh=%q xri=%q fwd=%q proto=%s body=%d err=%v",
			r.Host, r.RequestURI, r.Header.Values("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"),
			r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Real-IP"), r.Header.Get("Forwarded"), r.Proto, n, err)
	})
}

type termSetup struct {
	relay       *relayUnderTest
	passCert    tls.Certificate
	passRoots   *x509.CertPool
	relayRoots  *x509.CertPool
	origin      *origin // plain HTTP origin of the terminated route
	passOrigin  *origin
	challengeOK string
}

func startTermRelay(t *testing.T, extra string, h http.Handler, setup func(*Server)) *termSetup {
	t.Helper()
	ts := &termSetup{}
	ts.passCert, ts.passRoots = testCert(t, "misskey.example.com")
	relayCert, relayRoots := testCert(t, "blog.example.org", "wide.example.org")
	ts.relayRoots = relayRoots
	ts.passOrigin = startOrigin(t, &ts.passCert, false, nil)
	if h == nil {
		h = headerEcho()
	}
	ts.origin = startOrigin(t, nil, false, h)
	ts.relay = startRelayWith(t, fmt.Sprintf(`routes:
  - name: home
    hosts: [misskey.example.com]
    upstream: %q
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstream: "http://%s"
%s`, ts.passOrigin.addr(), ts.origin.addr(), extra), func(s *Server) {
		s.Certs = &staticCerts{cert: relayCert, challenges: map[string]string{"tok": "tok.thumbprint"}}
		if setup != nil {
			setup(s)
		}
	})
	return ts
}

// client returns an HTTP client that reaches every host through the relay.
func (ts *termSetup) client(h2 bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: ts.relayRoots},
		ForceAttemptHTTP2: h2,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			target := ts.relay.https
			if strings.HasSuffix(addr, ":80") {
				target = ts.relay.http
			}
			return (&net.Dialer{}).DialContext(ctx, "tcp4", target)
		},
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestPassthroughAndTerminateOnOneListener(t *testing.T) {
	ts := startTermRelay(t, "", nil, nil)
	_, cs, err := httpsGet(t, ts.relay.https, "misskey.example.com", "/", ts.passRoots)
	if err != nil {
		t.Fatal(err)
	}
	if !cs.PeerCertificates[0].Equal(ts.passCert.Leaf) {
		t.Error("passthrough host: not the origin's certificate")
	}
	body, cs, err := httpsGet(t, ts.relay.https, "blog.example.org", "/post/1?x=1", ts.relayRoots)
	if err != nil {
		t.Fatal(err)
	}
	if cs.PeerCertificates[0].Subject.CommonName != "blog.example.org" {
		t.Errorf("terminated host: certificate %v", cs.PeerCertificates[0].Subject)
	}
	for _, want := range []string{"host=blog.example.org ", "uri=/post/1?x=1 ", `xff=["127.0.0.1"]`, `xfp="https"`, `xfh="blog.example.org"`, `xri="127.0.0.1"`} {
		if !strings.Contains(body, want) {
			t.Errorf("origin saw %s; want %s", body, want)
		}
	}
}

func TestTerminateForwardingHeadersCannotBeSpoofed(t *testing.T) {
	ts := startTermRelay(t, "", nil, nil)
	req, _ := http.NewRequest("GET", "https://blog.example.org/", nil)
	req.Header.Set("X-Forwarded-For", "6.6.6.6")
	req.Header.Set("X-Real-IP", "6.6.6.6")
	req.Header.Set("X-Forwarded-Proto", "http")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("Forwarded", "for=6.6.6.6")
	req.Header.Set("Connection", "X-Forwarded-For, X-Real-IP")
	_, body := do(t, ts.client(false), req)
	if strings.Contains(body, "6.6.6.6") || strings.Contains(body, "evil") || !strings.Contains(body, `xri="127.0.0.1"`) || !strings.Contains(body, `xff=["127.0.0.1"]`) || !strings.Contains(body, `fwd=""`) {
		t.Errorf("spoofed headers reached the origin: %s", body)
	}
}

func TestTerminateTrustedProxy(t *testing.T) {
	ts := startTermRelay(t, "    trusted_proxies: [127.0.0.1, 10.0.0.0/8]\n", nil, nil)
	req, _ := http.NewRequest("GET", "https://blog.example.org/", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.7, 10.1.2.3")
	_, body := do(t, ts.client(false), req)
	if !strings.Contains(body, `xff=["203.0.113.7, 10.1.2.3, 127.0.0.1"]`) || !strings.Contains(body, `xri="203.0.113.7"`) {
		t.Errorf("a trusted proxy's chain was not kept: %s", body)
	}
}

func TestTerminateHTTP2AndHTTP1(t *testing.T) {
	ts := startTermRelay(t, "", nil, nil)
	for _, h2 := range []bool{true, false} {
		req, _ := http.NewRequest("POST", "https://blog.example.org/up", strings.NewReader("0123456789"))
		resp, body := do(t, ts.client(h2), req)
		want := map[bool]string{true: "HTTP/2.0", false: "HTTP/1.1"}[h2]
		if resp.Proto != want || !strings.Contains(body, "body=10 ") {
			t.Errorf("h2=%v: client saw %s, origin %s", h2, resp.Proto, body)
		}
	}
}

func TestTerminatePort80(t *testing.T) {
	ts := startTermRelay(t, "", nil, nil)
	c := ts.client(false)
	req, _ := http.NewRequest("GET", "http://blog.example.org/a/b?c=d", nil)
	resp, _ := do(t, c, req)
	if resp.StatusCode != 308 || resp.Header.Get("Location") != "https://blog.example.org/a/b?c=d" {
		t.Errorf("redirect: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	req, _ = http.NewRequest("GET", "http://blog.example.org/.well-known/acme-challenge/tok", nil)
	if resp, body := do(t, c, req); resp.StatusCode != 200 || body != "tok.thumbprint" {
		t.Errorf("HTTP-01: %d %q", resp.StatusCode, body)
	}

	plain := startTermRelay(t, "    redirect_http: false\n", nil, nil)
	req, _ = http.NewRequest("GET", "http://blog.example.org/p", nil)
	if resp, body := do(t, plain.client(false), req); resp.StatusCode != 200 || !strings.Contains(body, `xfp="http"`) {
		t.Errorf("redirect_http: false: %d %s", resp.StatusCode, body)
	}
}

func TestTerminateErrorPages(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	ts := startTermRelay(t, "    max_body: 1KiB\n", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		io.Copy(io.Discard, r.Body)
	}), func(s *Server) { s.ResponseHeaderTimeout = 300 * time.Millisecond })
	c := ts.client(false)

	req, _ := http.NewRequest("GET", "https://blog.example.org/hang", nil)
	if resp, body := do(t, c, req); resp.StatusCode != 504 || !strings.Contains(body, "did not answer in time") {
		t.Errorf("hanging origin: %d %s", resp.StatusCode, body)
	}
	req, _ = http.NewRequest("POST", "https://blog.example.org/", bytes.NewReader(make([]byte, 2048)))
	if resp, body := do(t, c, req); resp.StatusCode != 413 || !strings.Contains(body, "larger than this site accepts") {
		t.Errorf("body over max_body: %d %s", resp.StatusCode, body)
	}
	req, _ = http.NewRequest("POST", "https://blog.example.org/", io.MultiReader(strings.NewReader(strings.Repeat("x", 4096))))
	req.ContentLength = -1 // chunked: the limit is found while streaming
	if resp, _ := do(t, c, req); resp.StatusCode != 413 {
		t.Errorf("chunked body over max_body: %d", resp.StatusCode)
	}

	ln, _ := net.Listen("tcp6", "[::1]:0")
	dead := ln.Addr().String()
	ln.Close()
	refused := startRelayWith(t, fmt.Sprintf("routes:\n  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://%s\"\n", dead), func(s *Server) {
		s.Certs = &staticCerts{cert: ts.relay.srv.Certs.(*staticCerts).cert}
	})
	ts.relay = refused
	req, _ = http.NewRequest("GET", "https://blog.example.org/", nil)
	if resp, body := do(t, ts.client(false), req); resp.StatusCode != 502 || !strings.Contains(body, "could not be reached") {
		t.Errorf("refusing origin: %d %s", resp.StatusCode, body)
	}
}

// TestTerminateRefusesAmbiguousRequests sends requests that two HTTP
// parsers could frame differently; none may reach the origin.
func TestTerminateRefusesAmbiguousRequests(t *testing.T) {
	var reached atomic.Int64
	ts := startTermRelay(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.Copy(io.Discard, r.Body); err == nil {
			reached.Add(1)
		}
	}), nil)
	for _, tc := range []struct{ name, req, want string }{
		{"CL and TE", "POST / HTTP/1.1\r\nHost: blog.example.org\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: blog.example.org\r\n\r\n", "HTTP/1.1 400"},
		{"two CL", "POST / HTTP/1.1\r\nHost: blog.example.org\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400"},
		{"TE obfuscated", "POST / HTTP/1.1\r\nHost: blog.example.org\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "HTTP/1.1 501"},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: blog.example.org\r\nX: a\r\n b\r\n\r\n", "HTTP/1.1 400"},
		{"bare LF", "GET / HTTP/1.1\nHost: blog.example.org\n\n", "HTTP/1.1 400"},
		{"bad chunk size", "POST / HTTP/1.1\r\nHost: blog.example.org\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dialTLS(t, ts.relay.https, &tls.Config{RootCAs: ts.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, tc.req)
			got, _ := io.ReadAll(c)
			// A bad chunk is found only after the head has gone to the
			// origin: the origin sees a body that breaks off, never a
			// complete request (the count below).
			if !strings.HasPrefix(string(got), tc.want) {
				t.Errorf("answer %q, want %q", firstLine(string(got)), tc.want)
			}
			if n := reached.Load(); n != 0 {
				t.Errorf("%d complete requests reached the origin", n)
			}
		})
	}
}

func TestWebSocketOutlivesHTTPTimeouts(t *testing.T) {
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			typ, msg, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			ws.Write(r.Context(), typ, append([]byte("echo:"), msg...))
		}
	})
	ts := startTermRelay(t, "", echo, func(s *Server) {
		s.TermTimeouts = TermTimeouts{Header: 200 * time.Millisecond, Idle: 200 * time.Millisecond, BodyIdle: 200 * time.Millisecond}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "wss://blog.example.org/streaming", &websocket.DialOptions{HTTPClient: ts.client(false)})
	if err != nil {
		t.Fatalf("dial: %v %v", resp, err)
	}
	defer ws.CloseNow()
	for i := range 4 {
		time.Sleep(400 * time.Millisecond) // twice every HTTP timeout
		if err := ws.Write(ctx, websocket.MessageText, []byte(fmt.Sprint(i))); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		_, msg, err := ws.Read(ctx)
		if err != nil || string(msg) != fmt.Sprintf("echo:%d", i) {
			t.Fatalf("read %d: %q %v", i, msg, err)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
}

func TestLargeUploadStreamsInBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("300 MB upload")
	}
	const size = 300 << 20
	var got atomic.Int64
	ts := startTermRelay(t, "    max_body: 1GiB\n", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		got.Store(n)
		fmt.Fprintf(w, "%d", n)
	}), nil)
	var peak uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
		}
	}()
	req, _ := http.NewRequest("POST", "https://blog.example.org/upload", io.LimitReader(zeros{}, size))
	req.ContentLength = size
	start := time.Now()
	resp, body := do(t, ts.client(false), req)
	close(stop)
	<-sampled
	if resp.StatusCode != 200 || body != fmt.Sprint(size) {
		t.Fatalf("upload: %d %q", resp.StatusCode, body)
	}
	growth := int64(peak) - int64(base.HeapInuse)
	t.Logf("300 MB upload in %v; heap in use peaked %d MiB above the start (%d MiB)", time.Since(start), growth>>20, base.HeapInuse>>20)
	if growth > 64<<20 {
		t.Errorf("heap grew by %d MiB while streaming: the body is being buffered", growth>>20)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestHeaderKeysAreCanonical: rewrite indexes header maps with these keys
// directly, which only finds and replaces what Header.Get and Set would
// if they are canonical.
func TestHeaderKeysAreCanonical(t *testing.T) {
	for _, k := range []string{hdrXFF, hdrXFProto, hdrXFHost, hdrXRealIP, hdrVia, hdrUpgrade} {
		if c := http.CanonicalHeaderKey(k); c != k {
			t.Errorf("%q is not canonical: %q", k, c)
		}
	}
}

// TestTerminateResumesTLSSessions: a client that comes back resumes its
// TLS session (TLS 1.3 tickets and TLS 1.2 session tickets) instead of
// paying for a full handshake.
func TestTerminateResumesTLSSessions(t *testing.T) {
	ts := startTermRelay(t, "", nil, nil)
	for _, v := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
		cache := tls.NewLRUClientSessionCache(4)
		var resumed []bool
		for range 3 {
			c, err := tls.Dial("tcp4", ts.relay.https, &tls.Config{
				RootCAs: ts.relayRoots, ServerName: "blog.example.org", MaxVersion: v,
				ClientSessionCache: cache, NextProtos: []string{"http/1.1"},
			})
			if err != nil {
				t.Fatal(err)
			}
			// A TLS 1.3 ticket arrives after the handshake: read a response.
			io.WriteString(c, "GET / HTTP/1.1\r\nHost: blog.example.org\r\nConnection: close\r\n\r\n")
			io.ReadAll(c)
			resumed = append(resumed, c.ConnectionState().DidResume)
			c.Close()
		}
		if want := []bool{false, true, true}; !slices.Equal(resumed, want) {
			t.Errorf("TLS %x: resumed %v, want %v", v, resumed, want)
		}
	}
}
