package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// guardReference is the guard's specification, written the plain way:
// read each head with readHead and its body with copyBody, stop at the
// first refusal, pass everything after an upgrade request. It returns the
// bytes the server must see and the status the client must get (0: none).
func guardReference(stream []byte) ([]byte, int) {
	br := bufio.NewReaderSize(bytes.NewReader(stream), 4096)
	var out bytes.Buffer
	for first := true; ; first = false {
		h, err := readHead(br)
		if err != nil {
			var he *headError
			if first && errors.As(err, &he) {
				return out.Bytes(), he.Status
			}
			return out.Bytes(), 0
		}
		out.Write(h.raw)
		if _, err := copyBody(&out, br, h); err != nil {
			return out.Bytes(), 0
		}
		if h.upgrade {
			io.Copy(&out, br)
			return out.Bytes(), 0
		}
	}
}

// scriptConn delivers a byte stream in random pieces, with timeouts in
// between when asked, and records what is written to it.
type scriptConn struct {
	net.Conn // nil: only what the guard uses is implemented
	data     []byte
	rng      *rand.Rand
	timeouts bool
	wrote    bytes.Buffer
}

func (c *scriptConn) Read(p []byte) (int, error) {
	if c.timeouts && c.rng.IntN(3) == 0 {
		return 0, &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	}
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.data[:1+c.rng.IntN(min(len(c.data), 300))])
	c.data = c.data[n:]
	return n, nil
}

func (c *scriptConn) Write(p []byte) (int, error)      { return c.wrote.Write(p) }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (c *scriptConn) Close() error                     { return nil }

// readGuarded reads everything the guard lets through, with read sizes
// from 1 byte (Go's background read) to 8 KiB, retrying timeouts as Go's
// server resumes after aborting its background read.
func readGuarded(t *testing.T, g *guardedConn, rng *rand.Rand) []byte {
	var out []byte
	buf := make([]byte, 8192)
	for range 1_000_000 {
		n, err := g.Read(buf[:1+rng.IntN(len(buf))])
		out = append(out, buf[:n]...)
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
		case err == io.EOF:
			return out
		default:
			t.Fatalf("read error %v", err)
		}
	}
	t.Fatal("the guard makes no progress")
	return nil
}

func checkGuard(t *testing.T, stream []byte, seed uint64, timeouts bool) {
	t.Helper()
	want, status := guardReference(stream)
	rng := rand.New(rand.NewPCG(seed, 46))
	c := &scriptConn{data: stream, rng: rng, timeouts: timeouts}
	got := readGuarded(t, guardHTTP1(c, newGuardBufPool()), rng)
	if !bytes.Equal(got, want) {
		t.Fatalf("stream %.200q:\npassed %.300q\nwant   %.300q", stream, got, want)
	}
	wrote := c.wrote.String()
	switch {
	case status == 0 && wrote != "":
		t.Fatalf("stream %.200q: wrote %q, want nothing", stream, wrote)
	case status != 0 && !strings.HasPrefix(wrote, "HTTP/1.1 "+strconv.Itoa(status)+" "):
		t.Fatalf("stream %.200q: wrote %q, want status %d", stream, wrote, status)
	}
}

var guardPieces = []string{
	"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
	"GET /x?y HTTP/1.1\r\nHost: a.example\r\nAccept: */*\r\nUser-Agent: t\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
	"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 700\r\n\r\n" + strings.Repeat("b", 700),
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1a;ext=1\r\n" + strings.Repeat("c", 26) + "\r\n0\r\nT: v\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"GET /h HTTP/1.1\r\nHost: a\r\nX-Big: " + strings.Repeat("h", 5000) + "\r\n\r\n",
	"\r\nGET / HTTP/1.0\r\n\r\n",
	"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello raw\nbytes",
	// Refused heads and broken bodies.
	"GET / HTTP/1.1\nHost: a\n\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
	"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: a\r\nX: " + strings.Repeat("x", MaxHeadBytes) + "\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + strings.Repeat("0", 5000) + "1\r\n",
	"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer\r\n\r\n",
	"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nshort",
	"GET / HTTP/1.1\r\nHost: a\r\n",
}

// TestGuardMatchesReference sends streams of valid and refused requests,
// pipelined, cut at random places, read in random sizes and interrupted
// by timeouts, and checks the guard passes exactly the bytes, and writes
// exactly the status, that the plain reading of the rules does.
func TestGuardMatchesReference(t *testing.T) {
	for i, p := range guardPieces {
		checkGuard(t, []byte(p), uint64(i), false)
		checkGuard(t, []byte(p), uint64(i), true)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		var stream []byte
		for range 1 + rng.IntN(5) {
			stream = append(stream, guardPieces[rng.IntN(len(guardPieces))]...)
		}
		if rng.IntN(4) == 0 {
			stream = stream[:rng.IntN(len(stream)+1)]
		}
		checkGuard(t, stream, uint64(i), i%2 == 0)
	}
}

// FuzzGuard checks the same for any input.
func FuzzGuard(f *testing.F) {
	for _, p := range guardPieces {
		f.Add([]byte(p), uint64(0))
	}
	f.Fuzz(func(t *testing.T, stream []byte, seed uint64) {
		checkGuard(t, stream, seed, seed%2 == 0)
	})
}

// TestGuardIdleHoldsNoBuffer checks that a connection waiting for its
// next request holds no buffer of the guard's.
func TestGuardIdleHoldsNoBuffer(t *testing.T) {
	stream := []byte(guardPieces[0] + guardPieces[2] + guardPieces[4])
	rng := rand.New(rand.NewPCG(3, 4))
	g := guardHTTP1(&scriptConn{data: stream, rng: rng}, newGuardBufPool())
	readGuarded(t, g, rng)
	if g.buf != nil {
		t.Fatalf("holds a %d-byte buffer after the last request", len(g.buf))
	}
}

// guardListener guards every connection it accepts, as the terminator does.
type guardListener struct {
	net.Listener
	bufs *sync.Pool
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return guardHTTP1(c, l.bufs), nil
}

// TestGuardResumesAbortedBackgroundRead: while a handler runs, Go's server
// reads ahead in the background and aborts that read with a past deadline
// when the handler is done. Here the abort lands while the guard holds
// half of the next, pipelined head; the next request must still arrive
// whole.
func TestGuardResumesAbortedBackgroundRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(300 * time.Millisecond)
		}
		io.WriteString(w, r.URL.Path)
	})}
	go srv.Serve(guardListener{ln, newGuardBufPool()})
	defer srv.Close()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHo")
	br := bufio.NewReader(c)
	for i, want := range []string{"/slow", "/next"} {
		if i == 1 {
			time.Sleep(100 * time.Millisecond) // the background read has been aborted
			io.WriteString(c, "st: a\r\n\r\n")
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i+1, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || string(body) != want {
			t.Fatalf("response %d: %d %q, want 200 %q", i+1, resp.StatusCode, body, want)
		}
	}
}
