package proxy

import (
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// TestIdleRelayHoldsNoPipes: an idle relayed connection costs its two
// sockets and nothing else — no splice pipes held while waiting.
func TestIdleRelayHoldsNoPipes(t *testing.T) {
	ln := serveLoopback6(t, func(c net.Conn) {
		defer c.Close()
		io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}) // no splice: no pipe of its own
	})
	r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
	hello := clientHello(t, "misskey.example.com")
	const n = 50
	before := openFDs(t)
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp4", r.https)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(hello)
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(100 * time.Millisecond)
	// Per connection, in this process: the client socket, the relay's two,
	// and the origin's accepted one.
	perConn := float64(openFDs(t)-before) / n
	t.Logf("%.2f descriptors per idle relayed connection in this process (4 are sockets)", perConn)
	if perConn > 4.2 {
		t.Errorf("%.2f descriptors per idle connection: pipes are being held", perConn)
	}
	// They still work.
	for _, c := range conns {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
}
