package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// slowEnv is a hostileEnv with short limits: the hello (and :80 request
// head) deadline, the terminating server's header and upload-progress
// timeouts, and a passthrough route "bulk" with a short idle timeout whose
// origin streams a large answer to whatever it is sent.
type slowEnv struct {
	*hostileEnv
	bulkSent atomic.Int64 // bytes the bulk origin managed to write
	bigSent  atomic.Int64 // bytes the terminated origin's /x/big managed to write
}

const (
	slowHello    = 300 * time.Millisecond
	slowHeader   = 300 * time.Millisecond
	slowBodyIdle = 300 * time.Millisecond
	slowIdle     = 400 * time.Millisecond
	bigAnswer    = 32 << 20
)

func startSlowEnv(t *testing.T) *slowEnv {
	t.Helper()
	se := &slowEnv{}
	ln := serveLoopback6(t, func(c net.Conn) {
		defer c.Close()
		c.Read(make([]byte, 4096)) // the ClientHello
		n, _ := io.Copy(c, io.LimitReader(zeros{}, bigAnswer))
		se.bulkSent.Add(n)
	})
	big := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(bigAnswer))
		buf := make([]byte, 32<<10)
		for sent := 0; sent < bigAnswer; sent += len(buf) {
			if _, err := w.Write(buf); err != nil {
				return
			}
			se.bigSent.Add(int64(len(buf)))
		}
	})
	se.hostileEnv = startHostileEnv(t, fmt.Sprintf(`  - name: bulk
    hosts: [bulk.example.com]
    upstream: %q
    timeouts: {idle: %v}
timeouts: {hello: %v}
`, ln.Addr().String(), slowIdle, slowHello), big, func(s *Server) {
		s.TermTimeouts = TermTimeouts{Header: slowHeader, BodyIdle: slowBodyIdle, WriteIdle: slowIdle}
	})
	return se
}

// drip writes b one byte at a time, every gap, until it is all sent or a
// write fails; it reports how many bytes went out.
func drip(c net.Conn, b []byte, gap time.Duration) int {
	for i := range b {
		if _, err := c.Write(b[i : i+1]); err != nil {
			return i
		}
		time.Sleep(gap)
	}
	return len(b)
}

// closedWithin reads from c until it is closed and returns what arrived
// and when the close came.
func closedWithin(t *testing.T, c net.Conn, start time.Time, limit time.Duration) (string, time.Duration) {
	t.Helper()
	c.SetReadDeadline(start.Add(limit))
	b, err := io.ReadAll(c)
	d := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("still open after %v", d)
	}
	return string(b), d
}

// TestSlowClients holds connections open the slow way and checks each is
// cut at its documented limit, by the clock and not by lack of bytes,
// while a healthy WebSocket and a passthrough connection on the same
// relay stay open and working.
func TestSlowClients(t *testing.T) {
	se := startSlowEnv(t)
	ws := se.openWS(t)
	healthy := se.healthy(t)
	hello := clientHello(t, "misskey.example.com")

	t.Run("slow ClientHello: one byte every 50ms, cut at timeouts.hello", func(t *testing.T) {
		se.relay.logs.TakeAll()
		before := se.pass.accepted.Load()
		// The relay's clock starts when it accepts, which can be before
		// Dial returns here: start ours first.
		start := time.Now()
		c, _ := net.Dial("tcp4", se.relay.https)
		defer c.Close()
		go drip(c, hello, 50*time.Millisecond) // would take ~90s
		got, d := closedWithin(t, c, start, 3*time.Second)
		if got != "" || d < slowHello || d > slowHello+1500*time.Millisecond {
			t.Errorf("closed after %v with %q; want %v", d, got, slowHello)
		}
		se.relay.waitOutcome(t, "hello_timeout")
		if se.pass.accepted.Load() != before {
			t.Error("the origin was dialed")
		}
	})

	t.Run("slow request head on :80: one byte every 50ms, cut at timeouts.hello", func(t *testing.T) {
		se.relay.logs.TakeAll()
		before := se.pass80.n.Load()
		c, _ := net.Dial("tcp4", se.relay.http)
		defer c.Close()
		start := time.Now()
		go drip(c, []byte("GET / HTTP/1.1\r\nHost: misskey.example.com\r\nX-Slow: "+strings.Repeat("s", 100)+"\r\n\r\n"), 50*time.Millisecond)
		got, d := closedWithin(t, c, start, 3*time.Second)
		if got != "" || d < slowHello || d > slowHello+1500*time.Millisecond {
			t.Errorf("closed after %v with %q; want %v", d, got, slowHello)
		}
		se.relay.waitOutcome(t, "hello_timeout")
		if se.pass80.n.Load() != before {
			t.Error("the origin was reached")
		}
	})

	t.Run("slow headers on a terminated route: cut at the header timeout", func(t *testing.T) {
		before := se.term.n.Load()
		c, err := dialTLS(t, se.relay.https, &tls.Config{RootCAs: se.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		go drip(c, []byte("GET / HTTP/1.1\r\nHost: blog.example.org\r\nX-Slow: "+strings.Repeat("s", 100)+"\r\n\r\n"), 50*time.Millisecond)
		// Go's server closes without an answer when the head is late.
		got, d := closedWithin(t, c, start, 3*time.Second)
		if got != "" || d < slowHeader || d > slowHeader+1500*time.Millisecond {
			t.Errorf("closed after %v with %q; want %v", d, got, slowHeader)
		}
		if se.term.n.Load() != before {
			t.Error("the origin was reached")
		}
	})

	t.Run("stalled upload on a terminated route: cut after BodyIdle without progress", func(t *testing.T) {
		before := se.term.n.Load()
		c, err := dialTLS(t, se.relay.https, &tls.Config{RootCAs: se.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: blog.example.org\r\nContent-Length: 1000\r\n\r\n"+strings.Repeat("u", 100))
		start := time.Now()
		got, d := closedWithin(t, c, start, 5*time.Second)
		if d < slowBodyIdle || d > slowBodyIdle+1500*time.Millisecond {
			t.Errorf("cut after %v; want %v", d, slowBodyIdle)
		}
		if !strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "upload stopped arriving") {
			t.Errorf("answer %q; want 408", got)
		}
		for _, sr := range se.term.since(before) {
			if sr.BodyErr == nil {
				t.Errorf("origin received a complete upload of %d bytes", len(sr.Body))
			}
		}
	})

	t.Run("slow upload that keeps moving completes", func(t *testing.T) {
		c, err := dialTLS(t, se.relay.https, &tls.Config{RootCAs: se.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		body := strings.Repeat("m", 12)
		start := time.Now()
		io.WriteString(c, "POST /upload HTTP/1.1\r\nHost: blog.example.org\r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
		drip(c, []byte(body), slowBodyIdle/3) // 1.2s in all: 4x BodyIdle
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("after %v: %v %v", time.Since(start), resp, err)
		}
		if sr := se.term.last(t); sr.Body != body || sr.BodyErr != nil {
			t.Errorf("origin got %q, %v", sr.Body, sr.BodyErr)
		}
	})

	t.Run("slow reader on passthrough: cut at timeouts.idle", func(t *testing.T) {
		se.relay.logs.TakeAll()
		c, _ := net.Dial("tcp4", se.relay.https)
		defer c.Close()
		c.(*net.TCPConn).SetReadBuffer(64 << 10)
		c.Write(clientHello(t, "bulk.example.com"))
		start := time.Now()
		// Read nothing: the origin's answer fills the buffers, nothing
		// moves, and the idle watch closes both sides.
		m := se.relay.waitOutcome(t, "idle_timeout")
		d := time.Since(start)
		if d < slowIdle || d > 3*slowIdle+2*time.Second {
			t.Errorf("cut after %v; want within a few idle periods of %v", d, slowIdle)
		}
		t.Logf("passthrough slow reader cut after %v; relayed %v bytes to the client; the origin wrote %d of %d", d.Round(time.Millisecond), m["bytes_to_client"], se.bulkSent.Load(), bigAnswer)
	})

	for _, h2 := range []bool{false, true} {
		name := map[bool]string{false: "HTTP/1.1", true: "HTTP/2"}[h2]
		t.Run("slow reader on a terminated route over "+name+": cut at WriteIdle, no silent success", func(t *testing.T) {
			// A client that stops reading holds back the origin (the
			// relay buffers nothing) and is cut once a write has waited
			// WriteIdle: reading on afterwards ends in an error, never in
			// a short body taken for the whole.
			se.bigSent.Store(0)
			ts := &termSetup{relay: se.relay, relayRoots: se.relayRoots}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", "https://blog.example.org/x/big", nil)
			client := ts.client(h2)
			client.Timeout = 0
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if h2 != (resp.ProtoMajor == 2) {
				t.Fatalf("protocol %s", resp.Proto)
			}
			time.Sleep(4 * slowIdle) // well past WriteIdle
			held := se.bigSent.Load()
			if held > 24<<20 {
				t.Errorf("origin wrote %d MiB to a client that reads nothing: the relay is buffering", held>>20)
			}
			ws.check(t)
			n, err := io.Copy(io.Discard, resp.Body)
			if err == nil || n >= bigAnswer {
				t.Errorf("stalled reader got %d of %d bytes, err %v; want the response cut with an error", n, bigAnswer, err)
			}
			t.Logf("%s slow reader: cut after WriteIdle %v; origin held back after %d KiB; client read %d KiB then %v", name, slowIdle, held>>10, n>>10, err)
		})
	}

	ws.check(t)
	healthy.check(t)
}

// TestHalfClosedClientGetsNoFakeSuccess sends a request and half-closes
// (shutdown(SHUT_WR)), as some scripted clients do. Go's server takes the
// FIN for a client that left and cancels the request; the relay must then
// send nothing rather than an empty "200 OK" that looks like success.
func TestHalfClosedClientGetsNoFakeSuccess(t *testing.T) {
	e := startHostileEnv(t, "", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(300 * time.Millisecond):
		case <-r.Context().Done():
		}
		io.WriteString(w, "late answer")
	}), nil)
	ws := e.openWS(t)
	for _, d := range doors[1:] {
		t.Run(d.name, func(t *testing.T) {
			var c net.Conn
			if d.name == ":80 terminated" {
				c, _ = net.Dial("tcp4", e.relay.http)
			} else {
				tc, err := dialTLS(t, e.relay.https, &tls.Config{RootCAs: e.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"http/1.1"}}, nil)
				if err != nil {
					t.Fatal(err)
				}
				c = tc
			}
			defer c.Close()
			io.WriteString(c, "GET /x/slow HTTP/1.1\r\nHost: blog.example.org\r\n\r\n")
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(c)
			if len(got) != 0 {
				t.Errorf("a cancelled request was answered: %q; want nothing", got)
			}
		})
	}
	ws.check(t)
}
