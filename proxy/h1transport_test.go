package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// termRelayTo starts a relay terminating blog.example.org to a plain-HTTP
// origin at addr and returns a client for it.
func termRelayTo(t *testing.T, addr string) *http.Client {
	t.Helper()
	cert, roots := testCert(t, "blog.example.org")
	r := startRelayWith(t, fmt.Sprintf("routes:\n  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://%s\"\n", addr), func(s *Server) {
		s.Certs = &staticCerts{cert: cert}
	})
	ts := &termSetup{relay: r, relayRoots: roots}
	t.Cleanup(func() { closeIdleOrigins(r.srv) })
	return ts.client(false)
}

func get(t *testing.T, c *http.Client, method, path string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "https://blog.example.org"+path, nil)
	resp, body := do(t, c, req)
	return resp.StatusCode, body
}

// TestOriginConnectionsReused: sequential GET, HEAD and OPTIONS requests
// share one kept-alive connection to the origin.
func TestOriginConnectionsReused(t *testing.T) {
	o := startOrigin(t, nil, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.URL.Path)
	}))
	c := termRelayTo(t, o.addr())
	for i := range 30 {
		method := []string{"GET", "HEAD", "OPTIONS"}[i%3]
		code, body := get(t, c, method, fmt.Sprintf("/%d", i))
		want := fmt.Sprintf("%s /%d", method, i)
		if method == "HEAD" {
			want = ""
		}
		if code != 200 || body != want {
			t.Fatalf("request %d: %d %q, want 200 %q", i, code, body, want)
		}
	}
	if n := o.accepted.Load(); n != 1 {
		t.Errorf("the origin accepted %d connections for 30 sequential requests, want 1", n)
	}
}

// rawOrigin answers each request on a connection with answer(i, request
// number on that connection) written as is; it closes the connection when
// answer says so.
func rawOrigin(t *testing.T, answer func(conn, req int) (reply string, closeAfter bool, thenWrite string)) net.Listener {
	t.Helper()
	var conns atomic.Int32
	return serveLoopback6(t, func(c net.Conn) {
		defer c.Close()
		conn := int(conns.Add(1))
		br := bufio.NewReader(c)
		for req := 1; ; req++ {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			reply, closeAfter, later := answer(conn, req)
			io.WriteString(c, reply)
			if later != "" {
				time.Sleep(50 * time.Millisecond)
				io.WriteString(c, later)
			}
			if closeAfter {
				return
			}
		}
	})
}

// TestOriginClosesKeptAliveConnection: an origin that closes each
// connection after its response (without saying so) never costs a client
// an error: the closed connection is not reused, or the request is retried.
func TestOriginClosesKeptAliveConnection(t *testing.T) {
	ln := rawOrigin(t, func(conn, req int) (string, bool, string) {
		return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n%02d", conn%100), true, ""
	})
	c := termRelayTo(t, ln.Addr().String())
	for i := range 10 {
		if code, body := get(t, c, "GET", "/"); code != 200 || len(body) != 2 {
			t.Fatalf("request %d: %d %q", i, code, body)
		}
		time.Sleep(10 * time.Millisecond) // the origin's FIN arrives
	}
}

// TestOriginBytesBeyondResponse: bytes an origin sends beyond the response
// it was asked for — at once, or after a pause — never reach the next
// client as its response: that connection is dropped.
func TestOriginBytesBeyondResponse(t *testing.T) {
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
	for _, delayed := range []bool{false, true} {
		t.Run(fmt.Sprintf("delayed=%v", delayed), func(t *testing.T) {
			ln := rawOrigin(t, func(conn, req int) (string, bool, string) {
				reply := "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"
				if req > 1 {
					return reply, false, ""
				}
				if delayed {
					return reply, false, smuggled
				}
				return reply + smuggled, false, ""
			})
			c := termRelayTo(t, ln.Addr().String())
			for i := range 4 {
				if code, body := get(t, c, "GET", "/"); code != 200 || body != "good" {
					t.Fatalf("request %d: %d %q, want 200 %q", i, code, body, "good")
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestH1TransportLeavesTheRestToHTTPTransport: requests with a body and
// other methods still work, through the fallback.
func TestH1TransportLeavesTheRestToHTTPTransport(t *testing.T) {
	o := startOrigin(t, nil, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %d", r.Method, len(b))
	}))
	c := termRelayTo(t, o.addr())
	for _, m := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		req, _ := http.NewRequest(m, "https://blog.example.org/", strings.NewReader("body"))
		if resp, body := do(t, c, req); resp.StatusCode != 200 || body != m+" 4" {
			t.Errorf("%s: %d %q", m, resp.StatusCode, body)
		}
	}
}

// TestOriginResponseHeadLimits: an origin whose response head exceeds
// MaxResponseHeaderBytes gets the client a 502, on both transports; 1xx
// heads before a response are relayed, each within the same limit.
func TestOriginResponseHeadLimits(t *testing.T) {
	huge := "HTTP/1.1 200 OK\r\n" + strings.Repeat("X-Filler: "+strings.Repeat("a", 1000)+"\r\n", MaxResponseHeaderBytes/1000+10) + "Content-Length: 2\r\n\r\nok"
	hint := "HTTP/1.1 103 Early Hints\r\nLink: </" + strings.Repeat("a", 1000) + ".css>; rel=preload\r\n\r\n"
	hints := strings.Repeat(hint, 20) + "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for name, tc := range map[string]struct {
		reply string
		code  int
	}{"huge head": {huge, http.StatusBadGateway}, "1xx heads": {hints, http.StatusOK}} {
		t.Run(name, func(t *testing.T) {
			ln := rawOrigin(t, func(conn, req int) (string, bool, string) { return tc.reply, true, "" })
			c := termRelayTo(t, ln.Addr().String())
			if code, _ := get(t, c, "GET", "/"); code != tc.code {
				t.Errorf("GET: %d, want %d", code, tc.code)
			}
			req, _ := http.NewRequest("POST", "https://blog.example.org/", strings.NewReader("x"))
			if resp, _ := do(t, c, req); resp.StatusCode != tc.code {
				t.Errorf("POST (fallback transport): %d, want %d", resp.StatusCode, tc.code)
			}
		})
	}
}
