package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// relayGoroutines counts the goroutines copying for passthrough relays.
func relayGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	return strings.Count(string(buf), "proxy.(*half).run(")
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// echoOrigin echoes on [::1], without splice (so it holds no pipes), and
// answers EOF with EOF.
func echoOrigin(t *testing.T) net.Listener {
	t.Helper()
	return serveLoopback6(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
		c.(*net.TCPConn).CloseWrite()
	})
}

func dialEcho(t *testing.T, addr string, hello []byte) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.Write(hello)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn)
}

func echoes(c net.Conn, msg []byte) error {
	if _, err := c.Write(msg); err != nil {
		return err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return io.ErrUnexpectedEOF
	}
	return nil
}

// TestQuietRelaysPark: relayed connections that go quiet give up their
// goroutines (both directions parked in the parker's epoll set), wake on
// their next byte from either side, and relay it, big or small.
func TestQuietRelaysPark(t *testing.T) {
	ln := echoOrigin(t)
	r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
	hello := clientHello(t, "misskey.example.com")
	const n = 20
	var conns []*net.TCPConn
	for range n {
		conns = append(conns, dialEcho(t, r.https, hello))
	}
	if g := relayGoroutines(); g != 2*n {
		t.Fatalf("%d copying goroutines for %d active relays, want %d", g, n, 2*n)
	}
	if !waitFor(3*ParkAfter, func() bool { return relayGoroutines() == 0 }) {
		t.Fatalf("%d copying goroutines left after %v of quiet, want 0", relayGoroutines(), 3*ParkAfter)
	}
	// Woken by a small write, and by one big enough to be spliced.
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
	for i, c := range conns {
		msg := []byte("ping")
		if i%5 == 0 {
			msg = big
		}
		if err := echoes(c, msg); err != nil {
			t.Fatalf("conn %d after parking: %v", i, err)
		}
	}
	// Parked again, then the client half-closes: the origin's EOF comes
	// back and the relay ends cleanly, counting every byte.
	if !waitFor(3*ParkAfter, func() bool { return relayGoroutines() == 0 }) {
		t.Fatalf("%d copying goroutines left after the second quiet period", relayGoroutines())
	}
	c := conns[0]
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v; want EOF", rest, err)
	}
	m := r.waitOutcome(t, "ok")
	if want := int64(len(hello) + len(big)); m["bytes_from_client"] != want || m["bytes_to_client"] != want {
		t.Errorf("logged %v/%v bytes from/to client, want %d each", m["bytes_from_client"], m["bytes_to_client"], want)
	}
}

// TestParkedRelayClosed: a parked relay still ends on every path that
// ends a running one: the idle timeout, and the server's shutdown.
func TestParkedRelayClosed(t *testing.T) {
	ln := echoOrigin(t)
	hello := clientHello(t, "misskey.example.com")

	t.Run("idle timeout", func(t *testing.T) {
		r := startRelay(t, passthroughConfig(ln.Addr().String(), "timeouts: {idle: 3s}\n"))
		c := dialEcho(t, r.https, hello)
		if !waitFor(3*ParkAfter, func() bool { return relayGoroutines() == 0 }) {
			t.Fatal("relay not parked")
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("read data from an idle connection")
		}
		r.waitOutcome(t, "idle_timeout")
	})

	t.Run("shutdown", func(t *testing.T) {
		r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
		c := dialEcho(t, r.https, hello)
		if !waitFor(3*ParkAfter, func() bool { return relayGoroutines() == 0 }) {
			t.Fatal("relay not parked")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- r.srv.Shutdown(ctx) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("Shutdown did not return with a parked relay open")
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Fatal("connection still open after shutdown")
		}
		if r.srv.ActiveConns() != 0 {
			t.Errorf("%d connections still counted after shutdown", r.srv.ActiveConns())
		}
	})
}

// TestParkingUnderChurn: many connections that alternate bursts of random
// size (small ones through the buffer, big ones spliced) with pauses on
// both sides of ParkAfter, so that directions park and wake while bytes
// are in flight, still relay every byte in order, and end cleanly on
// half-close.
func TestParkingUnderChurn(t *testing.T) {
	ln := echoOrigin(t)
	r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
	hello := clientHello(t, "misskey.example.com")
	const conns, rounds = 24, 6
	errs := make(chan error, conns)
	for i := range conns {
		c := dialEcho(t, r.https, hello)
		go func() {
			rng := rand.New(rand.NewPCG(uint64(i), 46))
			for range rounds {
				n := 1 + rng.IntN(2000)
				if rng.IntN(4) == 0 {
					n = 64<<10 + rng.IntN(256<<10)
				}
				msg := make([]byte, n)
				for j := range msg {
					msg[j] = byte(rng.Uint32())
				}
				if err := echoes(c, msg); err != nil {
					errs <- err
					return
				}
				time.Sleep(time.Duration(rng.IntN(int(2*ParkAfter + ParkAfter/2))))
			}
			c.CloseWrite()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
				errs <- fmt.Errorf("after half-close: %d bytes, %v", len(rest), err)
				return
			}
			errs <- nil
		}()
	}
	for range conns {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := r.srv.park.parks.Load(); n < conns {
		t.Errorf("only %d directions parked: the pauses did not exercise parking", n)
	} else {
		t.Logf("%d directions parked and woke", n)
	}
	if !waitFor(5*time.Second, func() bool { return r.srv.ActiveConns() == 0 }) {
		t.Fatalf("%d connections still counted", r.srv.ActiveConns())
	}
	for _, o := range r.outcomes() {
		if o != "ok" {
			t.Errorf("a connection ended %q, want ok: %v", o, r.outcomes())
			break
		}
	}
}
