package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/relay46/relay46/config"
)

// seenRequest is a request as an origin saw it.
type seenRequest struct {
	Method, URI, Host, Proto string
	Header                   http.Header
	Body                     string
	BodyErr                  error
}

// recordingOrigin is a plain-HTTP origin on [::1] that keeps every request
// it receives, answers with a one-line summary of it, and serves a
// WebSocket echo at /ws.
type recordingOrigin struct {
	*origin
	mu      sync.Mutex
	seen    []seenRequest
	dropped int64        // requests forgotten from the start of seen
	n       atomic.Int64 // requests completed
	// requests being served now, and the most at once
	inflight, peak atomic.Int64
}

func startRecordingOrigin(t *testing.T, extra http.Handler) *recordingOrigin {
	ro := &recordingOrigin{}
	ro.origin = startOrigin(t, nil, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := ro.inflight.Add(1)
		defer ro.inflight.Add(-1)
		for p := ro.peak.Load(); n > p && !ro.peak.CompareAndSwap(p, n); p = ro.peak.Load() {
		}
		if r.URL.Path == "/ws" {
			wsEcho(w, r)
			return
		}
		if extra != nil && strings.HasPrefix(r.URL.Path, "/x/") {
			extra.ServeHTTP(w, r)
			return
		}
		b, err := io.ReadAll(r.Body)
		sr := seenRequest{Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), Body: string(b), BodyErr: err}
		ro.mu.Lock()
		ro.seen = append(ro.seen, sr)
		ro.mu.Unlock()
		ro.n.Add(1)
		if err != nil {
			// Like a real application: a body that broke off is an error.
			w.WriteHeader(http.StatusBadRequest)
		}
		fmt.Fprintf(w, "origin saw %s %s body=%q", r.Method, r.RequestURI, b)
	}))
	return ro
}

// last returns the most recent request the origin saw.
func (ro *recordingOrigin) last(t *testing.T) seenRequest {
	t.Helper()
	ro.mu.Lock()
	defer ro.mu.Unlock()
	if len(ro.seen) == 0 {
		t.Fatal("the origin saw no request")
	}
	return ro.seen[len(ro.seen)-1]
}

// forget drops the requests kept so far (not the count).
func (ro *recordingOrigin) forget() {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	ro.dropped += int64(len(ro.seen))
	ro.seen = nil
}

func (ro *recordingOrigin) since(n int64) []seenRequest {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	return append([]seenRequest(nil), ro.seen[n-ro.dropped:]...)
}

func wsEcho(w http.ResponseWriter, r *http.Request) {
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
}

// hostileEnv is a relay with a passthrough route (misskey.example.com:
// TLS origin, and a plain :80 origin) and a terminated route
// (blog.example.org, redirect_http off so :80 is proxied too).
type hostileEnv struct {
	relay      *relayUnderTest
	pass       *origin          // TLS origin of the passthrough route
	pass80     *recordingOrigin // its :80 origin
	term       *recordingOrigin // origin of the terminated route
	passRoots  *x509.CertPool
	relayRoots *x509.CertPool
}

func startHostileEnv(t *testing.T, routeExtra string, termHandler http.Handler, setup func(*Server)) *hostileEnv {
	t.Helper()
	e := &hostileEnv{}
	var passCert tls.Certificate
	passCert, e.passRoots = testCert(t, "misskey.example.com")
	relayCert, relayRoots := testCert(t, "blog.example.org", "*.example.org")
	e.relayRoots = relayRoots
	e.pass = startOrigin(t, &passCert, false, nil)
	e.pass80 = startRecordingOrigin(t, nil)
	e.term = startRecordingOrigin(t, termHandler)
	e.relay = startRelayWith(t, fmt.Sprintf(`routes:
  - name: home
    hosts: [misskey.example.com]
    upstream: %q
    http_upstream: %q
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstream: "http://%s"
    redirect_http: false
%s`, e.pass.addr(), e.pass80.addr(), e.term.addr(), routeExtra), func(s *Server) {
		s.Certs = &staticCerts{cert: relayCert}
		if setup != nil {
			setup(s)
		}
	})
	return e
}

func (e *hostileEnv) healthy(t *testing.T) *healthyConn {
	return openHealthy(t, e.relay.https, &tls.Config{RootCAs: e.passRoots, ServerName: "misskey.example.com"})
}

// healthyWS is a WebSocket through the terminated route, kept open while
// a test abuses the relay and checked to still echo.
type healthyWS struct {
	ws *websocket.Conn
	n  int
}

func (e *hostileEnv) openWS(t *testing.T) *healthyWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.relayRoots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp4", e.relay.https)
		},
	}
	ws, _, err := websocket.Dial(ctx, "wss://blog.example.org/ws", &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatalf("healthy WebSocket: %v", err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	h := &healthyWS{ws: ws}
	h.check(t)
	return h
}

func (h *healthyWS) check(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	h.n++
	want := fmt.Sprintf("ping %d", h.n)
	if err := h.ws.Write(ctx, websocket.MessageText, []byte(want)); err != nil {
		t.Fatalf("the healthy WebSocket was affected: %v", err)
	}
	_, msg, err := h.ws.Read(ctx)
	if err != nil || string(msg) != "echo:"+want {
		t.Fatalf("the healthy WebSocket was affected: %q %v", msg, err)
	}
}

// door is one way into the relay for an HTTP/1.1 request.
type door struct {
	name   string
	host   string
	origin func(*hostileEnv) *recordingOrigin
	send   func(t *testing.T, e *hostileEnv, req string) string
}

var doors = []door{
	{":80 passthrough", "misskey.example.com", func(e *hostileEnv) *recordingOrigin { return e.pass80 },
		func(t *testing.T, e *hostileEnv, req string) string { return rawHTTP(t, e.relay.http, req) }},
	{":80 terminated", "blog.example.org", func(e *hostileEnv) *recordingOrigin { return e.term },
		func(t *testing.T, e *hostileEnv, req string) string { return rawHTTP(t, e.relay.http, req) }},
	{":443 terminated", "blog.example.org", func(e *hostileEnv) *recordingOrigin { return e.term },
		func(t *testing.T, e *hostileEnv, req string) string {
			c, err := dialTLS(t, e.relay.https, &tls.Config{RootCAs: e.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, req)
			b, _ := io.ReadAll(c)
			return string(b)
		}},
}

// TestHostileHTTPRequests sends requests that two HTTP parsers could
// frame differently, or that are too large, through every HTTP door of
// the relay. A refused one gets its exact status and never reaches the
// origin; an accepted oddity is framed by the origin exactly as the relay
// framed it (the request after it arrives as a request of its own).
func TestHostileHTTPRequests(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	healthy := e.healthy(t)
	ws := e.openWS(t)
	const H = "Host: HOST\r\n"
	// Cases marked covered are already sent through that door by
	// TestHTTPBadRequests (:80 passthrough) or
	// TestTerminateRefusesAmbiguousRequests (:443 terminated).
	for _, tc := range []struct {
		name    string
		req     string
		status  int    // 0: accepted
		body    string // accepted: the body the origin must see
		covered string // doors that already have this exact case
	}{
		{"CL and TE", "POST / HTTP/1.1\r\n" + H + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "", ":80 passthrough,:443 terminated"},
		{"two equal CL", "POST / HTTP/1.1\r\n" + H + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400, "", ":80 passthrough"},
		{"CL list", "POST / HTTP/1.1\r\n" + H + "Content-Length: 3, 3\r\n\r\nabc", 400, "", ""},
		{"CL with a plus sign", "POST / HTTP/1.1\r\n" + H + "Content-Length: +3\r\n\r\nabc", 400, "", ""},
		{"TE leading space (OWS)", "POST /te HTTP/1.1\r\n" + H + "Transfer-Encoding:  chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, "hello", ""},
		{"TE trailing tab (OWS)", "POST /te HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, "hello", ""},
		{"TE Chunked", "POST /te HTTP/1.1\r\n" + H + "Transfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 0, "hello", ""},
		{"TE chunked, identity", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501, "", ":443 terminated"},
		{"TE identity", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc", 501, "", ""},
		{"TE identity, chunked", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501, "", ""},
		{"TE twice", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "", ""},
		{"TE space before colon", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400, "", ""},
		{"TE vertical tab", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: \vchunked\r\n\r\n0\r\n\r\n", 400, "", ""},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "", ""},
		{"bare LF", "GET / HTTP/1.1\n" + H + "\n", 400, "", ":80 passthrough,:443 terminated"},
		{"bare LF inside the head", "GET / HTTP/1.1\r\n" + "Host: HOST\nX: y\r\n\r\n", 400, "", ""},
		{"bare CR", "GET / HTTP/1.1\r\n" + H + "X: a\rb\r\n\r\n", 400, "", ""},
		{"bare CR in the request line", "GET /\r HTTP/1.1\r\n" + H + "\r\n", 400, "", ""},
		{"NUL in a value", "GET / HTTP/1.1\r\n" + H + "X: a\x00b\r\n\r\n", 400, "", ""},
		{"obs-fold", "GET / HTTP/1.1\r\n" + H + "X: a\r\n b\r\n\r\n", 400, "", ":80 passthrough,:443 terminated"},
		{"obs-fold of Host", "GET / HTTP/1.1\r\nHost:\r\n HOST\r\n\r\n", 400, "", ""},
		{"bad chunk size", "POST / HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n", -1, "", ""},
		{"head over 32 KiB", "GET / HTTP/1.1\r\n" + H + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 40) + "\r\n", 431, "", ":80 passthrough"},
		{"101 header fields", "GET / HTTP/1.1\r\n" + H + strings.Repeat("X-A: b\r\n", 100) + "\r\n", 431, "", ""},
		{"URL over 8 KiB", "GET /" + strings.Repeat("a", MaxTargetBytes) + " HTTP/1.1\r\n" + H + "\r\n", 414, "", ":80 passthrough"},
		{"absolute-form target", "GET http://HOST/ HTTP/1.1\r\n" + H + "\r\n", 400, "", ":80 passthrough"},
	} {
		for _, d := range doors {
			if strings.Contains(tc.covered, d.name) {
				continue
			}
			t.Run(tc.name+" on "+d.name, func(t *testing.T) {
				o := d.origin(e)
				before := o.n.Load()
				req := strings.ReplaceAll(tc.req, "HOST", d.host)
				if tc.status == 0 {
					req += "GET /after HTTP/1.1\r\nHost: " + d.host + "\r\nConnection: close\r\n\r\n"
				}
				got := d.send(t, e, req)
				switch {
				case tc.status > 0:
					if want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); !strings.HasPrefix(got, want) {
						t.Errorf("answer %q, want %s", firstLine(got), want)
					}
					if n := o.n.Load() - before; n != 0 {
						t.Errorf("%d refused requests reached the origin", n)
					}
				case tc.status < 0:
					// Found in the body, after the head went on: the
					// origin never sees a complete request. (Wait for
					// the origin to finish with it, so the next case
					// does not count it.)
					for deadline := time.Now().Add(2 * time.Second); o.n.Load() == before && time.Now().Before(deadline); {
						time.Sleep(5 * time.Millisecond)
					}
					for _, sr := range o.since(before) {
						if sr.BodyErr == nil {
							t.Errorf("origin received a complete request: %+v", sr)
						}
					}
				default:
					seen := o.since(before)
					if len(seen) != 2 || seen[0].Body != tc.body || seen[1].URI != "/after" {
						t.Errorf("origin saw %+v; want the body %q, then GET /after", seen, tc.body)
					}
					if !strings.HasPrefix(got, "HTTP/1.1 200 ") {
						t.Errorf("answer %q", firstLine(got))
					}
				}
			})
		}
	}
	healthy.check(t)
	ws.check(t)
}

// TestHostileForwardingHeaders sends forwarding headers a client could
// use to pose as someone else. On terminated routes the origin sees only
// what the relay sets, over HTTP/1.1 (:80 and :443) and HTTP/2, also when
// the client names them in Connection to have them stripped as
// hop-by-hop. A passthrough route's :80 relays the head byte for byte: it
// adds nothing and removes nothing (the PROXY header is how a passthrough
// origin learns the client), so the origin sees the client's own lines.
func TestHostileForwardingHeaders(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	healthy := e.healthy(t)
	spoof := "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil.example\r\n" +
		"X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https;host=evil.example\r\n"
	relaySet := func(t *testing.T, sr seenRequest, proto string) {
		t.Helper()
		want := map[string][]string{
			"X-Forwarded-For":   {"127.0.0.1"},
			"X-Real-Ip":         {"127.0.0.1"},
			"X-Forwarded-Proto": {proto},
			"X-Forwarded-Host":  {"blog.example.org"},
		}
		for k, v := range want {
			if got := sr.Header.Values(k); fmt.Sprint(got) != fmt.Sprint(v) {
				t.Errorf("origin saw %s: %q, want %q", k, got, v)
			}
		}
		if f := sr.Header.Values("Forwarded"); len(f) != 0 {
			t.Errorf("origin saw Forwarded: %q", f)
		}
	}
	for _, conn := range []string{"", "Connection: X-Forwarded-For, X-Real-IP\r\n", "Connection: keep-alive, X-Forwarded-Proto, X-Forwarded-Host, Forwarded\r\n"} {
		for _, d := range doors {
			t.Run(d.name+" "+strings.TrimSpace(conn), func(t *testing.T) {
				o := d.origin(e)
				req := "GET /who HTTP/1.1\r\nHost: " + d.host + "\r\n" + spoof + conn + "Connection: close\r\n\r\n"
				if got := d.send(t, e, req); !strings.HasPrefix(got, "HTTP/1.1 200 ") {
					t.Fatalf("answer %q", firstLine(got))
				}
				sr := o.last(t)
				switch d.name {
				case ":80 passthrough":
					if sr.Header.Get("X-Forwarded-For") != "6.6.6.6" || sr.Header.Get("X-Real-Ip") != "6.6.6.6" || sr.Header.Get("Forwarded") == "" {
						t.Errorf("passthrough :80 changed the client's head: %v", sr.Header)
					}
				case ":80 terminated":
					relaySet(t, sr, "http")
				default:
					relaySet(t, sr, "https")
				}
			})
		}
	}
	t.Run("HTTP/2", func(t *testing.T) {
		ts := &termSetup{relay: e.relay, relayRoots: e.relayRoots}
		req, _ := http.NewRequest("GET", "https://blog.example.org/who", nil)
		for _, h := range []string{"X-Forwarded-For", "X-Real-IP"} {
			req.Header.Set(h, "6.6.6.6")
		}
		req.Header.Set("X-Forwarded-Proto", "gopher")
		req.Header.Set("X-Forwarded-Host", "evil.example")
		req.Header.Set("Forwarded", "for=6.6.6.6")
		resp, _ := do(t, ts.client(true), req)
		if resp.ProtoMajor != 2 {
			t.Fatalf("not HTTP/2: %s", resp.Proto)
		}
		relaySet(t, e.term.last(t), "https")
	})
	healthy.check(t)
}

// TestHostileUpgrades sends upgrade requests. Terminated routes relay only
// the websocket token (the healthy WebSocket proves it passes): h2c and
// other tokens get 400 and never reach the origin, and the connection
// ends with that answer, because the strict HTTP/1 guard in front of Go's
// server has stopped checking bytes once it saw an upgrade request. A
// passthrough route's :80 relays the upgrade opaque, exactly as sent:
// switching protocols is the origin's decision.
func TestHostileUpgrades(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	ws := e.openWS(t)
	// After the refused upgrade, a request Go's lenient server would take
	// (bare LF) but the guard would refuse.
	const smuggled = "GET /smuggled HTTP/1.1\nHost: blog.example.org\n\n"
	for _, tc := range []struct {
		name, upgrade string
	}{
		{"h2c", "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings\r\n"},
		{"unknown token", "Upgrade: relay46-tunnel\r\nConnection: Upgrade\r\n"},
		{"websocket and h2c in one list", "Upgrade: websocket, h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"},
		{"upgrade token without Connection", "Upgrade: h2c\r\n"},
		{"TLS/1.0 (RFC 2817)", "Upgrade: TLS/1.0\r\nConnection: Upgrade\r\n"},
	} {
		for _, d := range doors[1:] {
			t.Run(tc.name+" on "+d.name, func(t *testing.T) {
				before := e.term.n.Load()
				got := d.send(t, e, "GET /up HTTP/1.1\r\nHost: blog.example.org\r\n"+tc.upgrade+"\r\n"+smuggled)
				if !strings.HasPrefix(got, "HTTP/1.1 400 ") || !strings.Contains(got, "Only WebSocket upgrades") {
					t.Errorf("answer %q, want 400", firstLine(got))
				}
				if strings.Count(got, "HTTP/1.1 ") != 1 {
					t.Errorf("more than one response: %q", got)
				}
				for _, sr := range e.term.since(before) {
					t.Errorf("origin saw %s %s", sr.Method, sr.URI)
				}
			})
		}
	}
	t.Run("websocket refused by the origin on :443 terminated", func(t *testing.T) {
		// The origin answers an ordinary 200 instead of 101: the
		// connection must not stay open for unchecked bytes either.
		before := e.term.n.Load()
		got := doors[2].send(t, e, "GET /plain HTTP/1.1\r\nHost: blog.example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"+smuggled)
		if !strings.HasPrefix(got, "HTTP/1.1 200 ") || strings.Count(got, "HTTP/1.1 ") != 1 {
			t.Errorf("answer %q", got)
		}
		for _, sr := range e.term.since(before + 1) {
			t.Errorf("origin saw %s %s after the failed upgrade", sr.Method, sr.URI)
		}
	})
	t.Run("h2c on :80 passthrough is relayed opaque", func(t *testing.T) {
		before := e.pass80.n.Load()
		got := rawHTTP(t, e.relay.http, "GET /up HTTP/1.1\r\nHost: misskey.example.com\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nConnection: Upgrade, HTTP2-Settings, close\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 200 ") {
			t.Errorf("answer %q", firstLine(got))
		}
		seen := e.pass80.since(before)
		if len(seen) != 1 || seen[0].Header.Get("Upgrade") != "h2c" || seen[0].Header.Get("Http2-Settings") == "" {
			t.Errorf("origin saw %+v; want the upgrade request as sent", seen)
		}
	})
	ws.check(t)
}

// TestHostileQueries checks that what the relay accepts is what it
// forwards: the origin of a terminated route sees the raw query and path
// exactly as the client sent them (ActivityPub signatures cover the
// request target), however odd; :80 passthrough forwards them untouched
// by construction.
func TestHostileQueries(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	healthy := e.healthy(t)
	many := strings.Repeat("a=1&", 10001) + "z=2"
	for _, tc := range []struct{ name, target string }{
		{"semicolon separators", "/q?a=1;b=2&c=3"},
		{"semicolon only", "/q?;"},
		{"unsorted and repeated", "/q?z=1&a=2&z=0&=&&x"},
		{"invalid percent-escape", "/q?a=%zz&b=%"},
		{"encoded delimiters", "/q?a=%26b%3D1&c=%3B"},
		{"encoded slash and dot segments in the path", "/a%2Fb/%2e%2e/c%3Bd;e?x=1"},
		{"lower-case escapes in the path", "/%7e/%c3%a9?k=%7e"},
	} {
		for _, d := range doors {
			t.Run(tc.name+" on "+d.name, func(t *testing.T) {
				got := d.send(t, e, "GET "+tc.target+" HTTP/1.1\r\nHost: "+d.host+"\r\nConnection: close\r\n\r\n")
				if !strings.HasPrefix(got, "HTTP/1.1 200 ") {
					t.Fatalf("answer %q", firstLine(got))
				}
				if uri := d.origin(e).last(t).URI; uri != tc.target {
					t.Errorf("origin saw %.120q, want %.120q", uri, tc.target)
				}
			})
		}
	}
	// Over 10,000 parameters cannot fit HTTP/1's 8 KiB target limit; over
	// HTTP/2 (a 64 KiB header list) they do.
	for _, d := range doors {
		got := d.send(t, e, "GET /q?"+strings.Repeat("&", 10001)+" HTTP/1.1\r\nHost: "+d.host+"\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 414 ") {
			t.Errorf("10,002 parameters on %s: %q, want 414", d.name, firstLine(got))
		}
	}
	t.Run("HTTP/2", func(t *testing.T) {
		ts := &termSetup{relay: e.relay, relayRoots: e.relayRoots}
		for _, target := range []string{"/q?a=1;b=2&c=3", "/q?a=%zz", "/q?" + many} {
			req, _ := http.NewRequest("GET", "https://blog.example.org"+target, nil)
			resp, _ := do(t, ts.client(true), req)
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
				t.Fatalf("%s %d", resp.Proto, resp.StatusCode)
			}
			if uri := e.term.last(t).URI; uri != target {
				t.Errorf("origin saw %.80q, want %.80q", uri, target)
			}
		}
	})
	healthy.check(t)
}

// TestRequestLoopDetected points a terminated route back at the relay: at
// its own :80, and through a second relay that proxies back to the first.
// The request that comes back is answered 508 Loop Detected instead of
// circling until connections run out; the origin-bound requests of other
// routes carry exactly one Via entry and are unaffected.
func TestRequestLoopDetected(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	healthy := e.healthy(t)
	ws := e.openWS(t)
	relayCert := e.relay.srv.Certs.(*staticCerts).cert
	loopRoute := func(to string) string {
		return fmt.Sprintf(`  - name: loop
    hosts: [loop.example.org]
    mode: terminate
    upstream: "http://%s"
    allow_ipv4: true
    redirect_http: false
`, to)
	}
	// Re-apply e's config with a route to the relay's own :80.
	apply := func(r *relayUnderTest, routes string) {
		cfg, err := config.Parse("test.yaml", []byte("listen: {http: \"127.0.0.1:0\", https: \"127.0.0.1:0\"}\nadmin: \"\"\nroutes:\n"+routes))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.srv.Apply(cfg); err != nil {
			t.Fatal(err)
		}
	}
	blog := fmt.Sprintf("  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://%s\"\n    redirect_http: false\n", e.term.addr())
	home := fmt.Sprintf("  - name: home\n    hosts: [misskey.example.com]\n    upstream: %q\n    http_upstream: %q\n", e.pass.addr(), e.pass80.addr())
	apply(e.relay, home+blog+loopRoute(e.relay.http))

	other := startRelayWith(t, "routes:\n"+loopRoute(e.relay.http), func(s *Server) { s.Certs = &staticCerts{cert: relayCert} })
	apply(e.relay, home+blog+loopRoute(e.relay.http)+strings.Replace(loopRoute(other.http), "loop", "pingpong", 2))
	apply(other, loopRoute(e.relay.http)+strings.Replace(loopRoute(e.relay.http), "loop", "pingpong", 2))

	for _, tc := range []struct{ name, host, via string }{
		{"route to the relay's own :80", "loop.example.org", ""},
		{"two relays proxying to each other", "pingpong.example.org", ""},
		{"client already sent a foreign Via", "loop.example.org", "Via: 1.1 squid, 1.0 relay46-0000000000000000\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.term.n.Load()
			got := rawHTTP(t, e.relay.http, "GET /x HTTP/1.1\r\nHost: "+tc.host+"\r\n"+tc.via+"Connection: close\r\n\r\n")
			if !strings.HasPrefix(got, "HTTP/1.1 508 Loop Detected\r\n") || !strings.Contains(got, "leads to the relay itself") {
				t.Errorf("answer %q, want 508", firstLine(got))
			}
			if e.term.n.Load() != before {
				t.Error("the loop reached an origin")
			}
		})
	}
	t.Run("a normal request carries one Via entry", func(t *testing.T) {
		got := rawHTTP(t, e.relay.http, "GET /v HTTP/1.1\r\nHost: blog.example.org\r\nVia: 1.1 squid\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 200 ") {
			t.Fatalf("answer %q", firstLine(got))
		}
		via := e.term.last(t).Header.Values("Via")
		if len(via) != 2 || via[0] != "1.1 squid" || !strings.HasPrefix(via[1], "1.1 relay46-") || len(via[1]) != len("1.1 relay46-")+16 {
			t.Errorf("origin saw Via %q", via)
		}
	})
	healthy.check(t)
	ws.check(t)
}
