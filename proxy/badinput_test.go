package proxy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// healthyConn is a relayed TLS connection kept open while a test abuses
// the relay, then checked to still work.
type healthyConn struct{ c *tls.Conn }

func openHealthy(t *testing.T, relayAddr string, cfg *tls.Config) *healthyConn {
	t.Helper()
	c, err := dialTLS(t, relayAddr, cfg, nil)
	if err != nil {
		t.Fatalf("healthy connection: %v", err)
	}
	h := &healthyConn{c}
	h.check(t)
	return h
}

// check sends one request on the healthy connection and reads the answer.
func (h *healthyConn) check(t *testing.T) {
	t.Helper()
	h.c.SetDeadline(time.Now().Add(5 * time.Second))
	defer h.c.SetDeadline(time.Time{})
	fmt.Fprintf(h.c, "GET /alive HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n")
	buf := make([]byte, 4096)
	n, err := h.c.Read(buf)
	if err != nil || !bytes.Contains(buf[:n], []byte("path=/alive")) {
		t.Fatalf("the healthy connection was affected: %q %v", buf[:n], err)
	}
}

func TestBadClientsOn443(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), "timeouts: {hello: 300ms}\n"))
	healthy := openHealthy(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"})

	oversized := append([]byte{0x16, 0x03, 0x01, 0x48, 0x00, 0x01, 0x00, 0x47, 0xfc}, bytes.Repeat([]byte{0}, 18000)...)
	for _, tc := range []struct {
		name    string
		send    []byte
		outcome string
		alert   bool
	}{
		{"plain HTTP on 443", []byte("GET / HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n"), "not_tls", false},
		{"garbage", []byte{0, 1, 2, 3, 4, 5, 6, 7}, "not_tls", false},
		{"client sends a PROXY header itself", []byte("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), "not_tls", false},
		{"silent client", nil, "hello_timeout", false},
		{"half a hello, then silence", clientHello(t, "misskey.example.com")[:100], "hello_timeout", false},
		{"oversized hello", oversized, "hello_too_large", false},
		{"unknown SNI", clientHello(t, "unknown.example"), "unknown_sni", true},
		{"no SNI", clientHello(t, ""), "unknown_sni", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.logs.TakeAll()
			before := o.accepted.Load()
			c, err := net.Dial("tcp4", r.https)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			c.Write(tc.send)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(c)
			if tc.alert != bytes.Equal(got, alertUnrecognizedName) {
				t.Errorf("relay answered %x", got)
			}
			if tc.outcome == "hello_timeout" && time.Since(start) < 250*time.Millisecond {
				t.Errorf("closed after %v, before the hello deadline", time.Since(start))
			}
			r.waitOutcome(t, tc.outcome)
			if o.accepted.Load() != before {
				t.Error("the origin was dialed")
			}
			healthy.check(t)
		})
	}
}

func TestOriginFailures(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	cfg := &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}

	t.Run("origin refuses", func(t *testing.T) {
		ln, _ := net.Listen("tcp6", "[::1]:0")
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		r := startRelay(t, passthroughConfig(addr, ""))
		start := time.Now()
		if _, err := dialTLS(t, r.https, cfg, nil); err == nil {
			t.Fatal("handshake succeeded with no origin")
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("took %v to give up on a refusing origin", d)
		}
		m := r.waitOutcome(t, "dial_failed")
		if !strings.Contains(fmt.Sprint(m["error"]), "refused") {
			t.Errorf("log does not say why: %v", m)
		}
	})

	t.Run("origin closes mid-stream", func(t *testing.T) {
		ln, _ := net.Listen("tcp6", "[::1]:0")
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{cert}})
			tc.Handshake()
			io.WriteString(tc, "partial respon")
			c.Close() // no close_notify: an abrupt end
		}()
		r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
		c, err := dialTLS(t, r.https, cfg, nil)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// The client gets every byte the origin sent, then the
		// connection ends: the relay never holds a dead stream open.
		got, _ := io.ReadAll(c)
		if string(got) != "partial respon" {
			t.Errorf("client read %q", got)
		}
	})

	t.Run("client half-closes and still gets the response", func(t *testing.T) {
		ln, _ := net.Listen("tcp6", "[::1]:0")
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			n, _ := io.Copy(io.Discard, c) // until the client's FIN arrives
			time.Sleep(100 * time.Millisecond)
			fmt.Fprintf(c, "received %d bytes", n)
		}()
		r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
		c, err := net.Dial("tcp4", r.https)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		hello := clientHello(t, "misskey.example.com")
		c.Write(hello)
		c.Write([]byte("more"))
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		if want := fmt.Sprintf("received %d bytes", len(hello)+4); string(got) != want || err != nil {
			t.Errorf("got %q, %v; want %q", got, err, want)
		}
		r.waitOutcome(t, "ok")
	})
}

func TestIdleTimeout(t *testing.T) {
	ln := serveLoopback6(t, func(c net.Conn) { defer c.Close(); io.Copy(c, c) })
	r := startRelay(t, passthroughConfig(ln.Addr().String(), "timeouts: {idle: 400ms}\n"))
	c, err := net.Dial("tcp4", r.https)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hello := clientHello(t, "misskey.example.com")
	c.Write(hello)
	io.ReadFull(c, make([]byte, len(hello)))
	// Keep it busy past the idle timeout: it must stay open.
	for range 6 {
		time.Sleep(150 * time.Millisecond)
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatalf("active connection closed: %v", err)
		}
	}
	// Then go quiet: it must close within about two idle periods.
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read data from an idle connection")
	}
	if d := time.Since(start); d < 350*time.Millisecond || d > 2*time.Second {
		t.Errorf("idle connection closed after %v, want 400ms..800ms", d)
	}
	r.waitOutcome(t, "idle_timeout")
}
