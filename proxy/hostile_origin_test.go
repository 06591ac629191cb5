package proxy

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// blackhole returns an address on [::1] that never completes a TCP
// handshake: a socket listening with a backlog of 0 whose one queue slot
// is taken, so the kernel drops every further SYN and a dial can only
// time out.
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.IPv6Loopback(), uint16(sa.(*syscall.SockaddrInet6).Port)).String()
	// Fill the accept queue; a dial that then completes means this
	// kernel does not drop SYNs on overflow.
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp6", addr, 200*time.Millisecond)
		if err != nil {
			break
		}
		t.Cleanup(func() { c.Close() })
		if i > 4 {
			t.Skip("this kernel accepts connections beyond the listen backlog; no blackhole")
		}
	}
	return addr
}

// badOrigin is a raw TCP origin on [::1] that reads one request (or the
// client's first bytes, for passthrough) and then misbehaves as act says.
func badOrigin(t *testing.T, act func(c *net.TCPConn, req *http.Request)) string {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					req = nil // passthrough: a ClientHello, not a request
				}
				act(c.(*net.TCPConn), req)
				select { // hold the connection as act left it
				case <-stop:
				case <-time.After(10 * time.Second):
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// reset closes c with a TCP RST instead of a FIN.
func reset(c *net.TCPConn) {
	c.SetLinger(0)
	c.Close()
}

// Misbehaviours, shared by passthrough and terminated origins.
var (
	resetAtOnce = func(c *net.TCPConn, _ *http.Request) { reset(c) }
	resetMid    = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("r", 64<<10))
		time.Sleep(50 * time.Millisecond)
		reset(c)
	}
	malformed = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 abc\r\nContent-Length: 2\r\n\r\nok")
		c.Close()
	}
	notHTTP = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "SSH-2.0-OpenSSH_9.6\r\n")
		c.Close()
	}
	closeMidLength = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"+strings.Repeat("c", 64<<10))
		c.Close()
	}
	closeMidChunked = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n"+strings.Repeat("c", 64<<10)+"\r\n")
		c.Close()
	}
	// Too little to fill the relay's write buffer: nothing reaches the
	// client before the origin breaks.
	closeEarly = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("c", 1000))
		c.Close()
	}
	stallAtOnce = func(c *net.TCPConn, _ *http.Request) {}
	stallMid    = func(c *net.TCPConn, _ *http.Request) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"+strings.Repeat("s", 1000))
	}
)

// TestHostileOriginsPassthrough relays to origins that fail in every way
// networks fail. The relay only carries bytes: the client gets what the
// origin sent and then a clean end of the connection, never a hang, and
// the log says what happened.
func TestHostileOriginsPassthrough(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	good := startOrigin(t, &cert, false, nil)
	type tcase struct {
		name, host string
		addr       string
		outcome    string
		errHas     string        // the logged error mentions this
		within     time.Duration // the client's connection ends within
	}
	cases := []tcase{
		{"origin does not answer the dial (timeouts.dial)", "timeout", blackhole(t), "dial_failed", "timeout", 3 * time.Second},
		{"origin resets at once", "reset", badOrigin(t, resetAtOnce), "aborted", "reset", 3 * time.Second},
		{"origin resets mid-stream", "resetmid", badOrigin(t, resetMid), "aborted", "reset", 3 * time.Second},
		{"origin answers with something not TLS", "nottls", badOrigin(t, notHTTP), "ok", "", 3 * time.Second},
		{"origin accepts, then says nothing (timeouts.idle)", "stall", badOrigin(t, stallAtOnce), "idle_timeout", "", 4 * time.Second},
	}
	cfg := fmt.Sprintf("routes:\n  - name: home\n    hosts: [misskey.example.com]\n    upstream: %q\n", good.addr())
	for _, tc := range cases {
		cfg += fmt.Sprintf("  - name: %s\n    hosts: [%s.example.com]\n    upstream: %q\n    timeouts: {dial: 300ms, idle: 400ms}\n", tc.host, tc.host, tc.addr)
	}
	r := startRelay(t, cfg)
	healthy := openHealthy(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r.logs.TakeAll()
			c, err := net.Dial("tcp4", r.https)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			// A real TLS client: it must fail, and fail promptly.
			tc2 := tls.Client(c, &tls.Config{ServerName: tc.host + ".example.com", InsecureSkipVerify: true})
			tc2.SetDeadline(start.Add(5 * time.Second))
			err = tc2.Handshake()
			if err == nil {
				_, err = io.ReadAll(tc2)
			}
			d := time.Since(start)
			c.Close() // as a real client does after a failure
			var ne net.Error
			if err == nil || errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("client: %v after %v; want a failed handshake", err, d)
			}
			if d > tc.within {
				t.Errorf("client waited %v, want at most %v", d, tc.within)
			}
			m := r.waitOutcome(t, tc.outcome)
			if !strings.Contains(fmt.Sprint(m["error"]), tc.errHas) {
				t.Errorf("logged error %q does not say %q", m["error"], tc.errHas)
			}
			t.Logf("client: %v after %v; relay: %s %v", err, d.Round(time.Millisecond), tc.outcome, m["error"])
			healthy.check(t)
		})
	}
}

// TestHostileOriginsTerminated proxies to origins that fail in every way
// networks fail. Before a response starts, the client gets a 502 or 504
// page. Once one has started, the failure is visible: a body with a
// Content-Length ends short with an error, a chunked one without its
// last chunk, an HTTP/2 stream is reset. Never a short body that looks
// complete.
func TestHostileOriginsTerminated(t *testing.T) {
	type tcase struct {
		name, host string
		addr       string
		status     int // 0: the response starts, then breaks
		// the head was flushed before the break: the client sees 200,
		// then an error reading the body
		started bool
	}
	cases := []tcase{
		{"origin does not answer the dial", "timeout", blackhole(t), 504, false},
		{"origin resets at once", "reset", badOrigin(t, resetAtOnce), 502, false},
		{"origin answers a malformed status line", "malformed", badOrigin(t, malformed), 502, false},
		{"origin answers something not HTTP", "nothttp", badOrigin(t, notHTTP), 502, false},
		{"origin resets mid-body", "resetmid", badOrigin(t, resetMid), 0, true},
		{"origin closes mid-body (Content-Length)", "closecl", badOrigin(t, closeMidLength), 0, true},
		{"origin closes mid-body (chunked)", "closechunked", badOrigin(t, closeMidChunked), 0, true},
		{"origin closes after 1,000 body bytes", "closeearly", badOrigin(t, closeEarly), 0, false},
	}
	var routes string
	for _, tc := range append(cases, tcase{host: "stall", addr: badOrigin(t, stallMid)}) {
		routes += fmt.Sprintf("  - name: %s\n    hosts: [%s.example.org]\n    mode: terminate\n    upstream: \"http://%s\"\n    timeouts: {dial: 300ms}\n", tc.host, tc.host, tc.addr)
	}
	e := startHostileEnv(t, routes, nil, nil)
	ws := e.openWS(t)
	healthy := e.healthy(t)
	ts := &termSetup{relay: e.relay, relayRoots: e.relayRoots}
	for _, tc := range cases {
		for _, h2 := range []bool{false, true} {
			proto := map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2]
			t.Run(tc.name+" over "+proto, func(t *testing.T) {
				req, _ := http.NewRequest("GET", "https://"+tc.host+".example.org/x", nil)
				start := time.Now()
				resp, err := ts.client(h2).Do(req)
				if err != nil {
					// The origin broke before the relay had flushed the
					// response head: the client sees the failure at once.
					if tc.status != 0 || tc.started {
						t.Errorf("request failed: %v", err)
					}
					t.Logf("no response: %v, after %v", err, time.Since(start).Round(time.Millisecond))
					return
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				d := time.Since(start)
				if tc.status != 0 {
					if resp.StatusCode != tc.status || err != nil || !strings.Contains(string(body), "relay46") {
						t.Errorf("got %d %v %.60q; want the %d page", resp.StatusCode, err, body, tc.status)
					}
				} else if !tc.started || resp.StatusCode != 200 || err == nil || len(body) >= 1000000 {
					// The status was already sent when the origin broke.
					t.Errorf("got %d with %d bytes and err %v: a broken body looked complete", resp.StatusCode, len(body), err)
				}
				if d > 4*time.Second {
					t.Errorf("took %v", d)
				}
				t.Logf("%d, %d body bytes, err %v, after %v", resp.StatusCode, len(body), err, d.Round(time.Millisecond))
			})
		}
	}
	t.Run("chunked answer cut short has no last chunk (raw HTTP/1.1)", func(t *testing.T) {
		c, err := dialTLS(t, e.relay.https, &tls.Config{RootCAs: e.relayRoots, ServerName: "closechunked.example.org", NextProtos: []string{"http/1.1"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /x HTTP/1.1\r\nHost: closechunked.example.org\r\n\r\n")
		raw, _ := io.ReadAll(c)
		if !strings.Contains(string(raw), "Transfer-Encoding: chunked") || strings.HasSuffix(string(raw), "0\r\n\r\n") {
			t.Errorf("raw answer ends %q", raw[max(0, len(raw)-40):])
		}
	})
	t.Run("origin stalls mid-body: the client's own timeout ends it, with an error", func(t *testing.T) {
		// Nothing in the relay times out an origin that stops sending
		// in the middle of a body; what must hold is that the client
		// sees no success.
		// (The head and first 1,000 bytes wait in the relay's write
		// buffer, which is flushed when full or when the body ends.)
		for _, h2 := range []bool{false, true} {
			c := ts.client(h2)
			c.Timeout = 500 * time.Millisecond
			req, _ := http.NewRequest("GET", "https://stall.example.org/x", nil)
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("h2=%v: %v; want the client's timeout", h2, err)
			}
		}
	})
	ws.check(t)
	healthy.check(t)
}
