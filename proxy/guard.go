package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
)

// guardedConn holds HTTP/1.x requests to the same strict rules as the :80
// relay before Go's HTTP server sees them. Go's server is lenient where
// a proxy must not be: it accepts bare LF line ends, obs-fold and
// Content-Length beside Transfer-Encoding, each a way to make two parsers
// disagree about where a request ends.
//
// Read checks bytes as the server asks for them, on the server's own
// goroutine: each request head whole with readHead, then its body as the
// head frames it (Content-Length counted, chunked framing checked as
// copyChunked does), then the next head; after an upgrade request, raw
// bytes. It returns only checked bytes. The first refused request gets
// its status; later ones end the connection. Checking inline costs no
// goroutine and no pipe, and an idle connection holds no buffer of the
// guard's: a Read waiting for the next request reads into the caller's
// buffer, and bytes are held in a pooled buffer only while a head or a
// chunk line is incomplete.
//
// Deadlines act on the client connection itself. A read that times out
// (Go's server aborts its background read that way) returns the timeout
// and keeps what it had read of an unfinished head for the next Read.
type guardedConn struct {
	net.Conn // the client connection: writes, deadlines, addresses, close

	pool *sync.Pool // of *[]byte, guardBufSize each
	buf  []byte     // bytes read but not yet returned are buf[r:w]; nil when none
	r, w int
	ok   int // buf[r:r+ok] are checked and may be returned

	state    guardState
	left     int64 // bytes left of the body (stBody) or of a chunk (stChunkData)
	trailers int   // trailer fields seen in this chunked body
	upgrade  bool  // the request being read asked to switch protocols
	served   bool  // a request was accepted: a refusal now gets no status
	err      error // set once the guard has ended the stream
	lines    sliceLines
}

// guardState is where in the request stream the next byte belongs.
type guardState uint8

const (
	stHead      guardState = iota // a request head
	stBody                        // Content-Length body bytes
	stChunkLine                   // a chunk-size line
	stChunkData                   // a chunk's data
	stChunkCRLF                   // the CRLF after a chunk's data
	stTrailer                     // a trailer field or the empty line ending the body
	stRaw                         // after an upgrade request: unchecked
)

// guardBufSize holds most heads whole; a longer one grows the buffer up
// to MaxHeadBytes, beyond which readHead refuses it.
const guardBufSize = 4096

func newGuardBufPool() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, guardBufSize); return &b }}
}

func guardHTTP1(c net.Conn, pool *sync.Pool) *guardedConn {
	return &guardedConn{Conn: c, pool: pool}
}

func (g *guardedConn) Read(p []byte) (int, error) {
	for len(p) > 0 {
		switch {
		case g.ok > 0:
			return g.take(p), nil
		case g.err != nil:
			return 0, g.err
		case g.r == g.w:
			n, err := g.readInto(p)
			if n > 0 || err != nil {
				return n, err
			}
		default:
			// An incomplete head or chunk line is held: read the rest.
			n, err := g.fill()
			if g.ok > 0 {
				continue
			}
			if err != nil {
				return 0, err
			}
			if n == 0 {
				return 0, nil
			}
		}
	}
	return 0, nil
}

// readInto reads straight into p, so that a connection waiting for its
// next request holds no buffer of the guard's, and checks the bytes in
// place. What follows an incomplete head or chunk line is held.
func (g *guardedConn) readInto(p []byte) (int, error) {
	if (g.state == stBody || g.state == stChunkData) && int64(len(p)) > g.left {
		p = p[:g.left] // never read past a counted stage: no copy to hold
	}
	n, rerr := g.Conn.Read(p)
	c, err := g.check(p[:n])
	if err != nil {
		g.refuse(err)
	} else if c < n {
		g.hold(p[c:n])
	}
	if rerr != nil {
		rerr = g.readErr(rerr)
	}
	if c > 0 {
		return c, nil
	}
	if g.err != nil {
		return 0, g.err
	}
	return 0, rerr
}

// fill reads more after held bytes that do not yet make a whole head or
// chunk line, and checks them again when they might now.
func (g *guardedConn) fill() (int, error) {
	g.makeRoom()
	n, rerr := g.Conn.Read(g.buf[g.w:])
	fresh := g.buf[g.w : g.w+n]
	g.w += n
	// A head or line can only complete, or break a limit, on a newline
	// or by growing: re-parsing on every small read would let a client
	// sending a byte at a time cost quadratic work.
	if n > 0 && (bytes.IndexByte(fresh, '\n') >= 0 || g.w-g.r > g.heldLimit() || g.state == stChunkCRLF) {
		g.checkHeld()
	}
	if rerr != nil {
		rerr = g.readErr(rerr)
	}
	if g.err != nil && g.ok == 0 {
		return n, g.err
	}
	return n, rerr
}

// heldLimit is how many bytes of an incomplete unit the current state
// allows before refusing.
func (g *guardedConn) heldLimit() int {
	if g.state == stHead {
		return MaxHeadBytes
	}
	return maxChunkLine - 1
}

// take returns checked bytes, then checks what is held after them.
func (g *guardedConn) take(p []byte) int {
	n := copy(p, g.buf[g.r:g.r+g.ok])
	g.r += n
	g.ok -= n
	if g.ok == 0 && g.r < g.w {
		g.checkHeld()
	}
	if g.r == g.w {
		g.release()
	}
	return n
}

func (g *guardedConn) checkHeld() {
	c, err := g.check(g.buf[g.r:g.w])
	g.ok = c
	if err != nil {
		g.w = g.r + c // what follows the refused request is never returned
		g.refuse(err)
	}
}

// readErr passes on a timeout, which leaves the connection usable. Any
// other failure ends the stream for good, and ends it as io.EOF: the
// server then closes the connection silently, as it does for a client
// that left, instead of answering a broken TLS stream with a 400.
func (g *guardedConn) readErr(err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	if g.err == nil {
		g.err = io.EOF
	}
	return g.err
}

// refuse ends the stream; the first request of the connection also gets
// its status.
func (g *guardedConn) refuse(err error) {
	var he *headError
	if !g.served && errors.As(err, &he) {
		writeStatus(g.Conn, he.Status, he.Msg)
	}
	g.err = io.EOF
}

// hold keeps bytes read into the caller's buffer that are not checked yet.
func (g *guardedConn) hold(b []byte) {
	g.makeRoom()
	for len(g.buf)-g.w < len(b) {
		g.grow()
	}
	g.w += copy(g.buf[g.w:], b)
}

// makeRoom ensures buf has space after w, borrowing a pooled buffer,
// moving held bytes to its front, or growing it.
func (g *guardedConn) makeRoom() {
	switch {
	case g.buf == nil:
		g.buf = *g.pool.Get().(*[]byte)
	case g.w < len(g.buf):
	case g.r > 0:
		g.w = copy(g.buf, g.buf[g.r:g.w])
		g.r = 0
	default:
		g.grow()
	}
}

func (g *guardedConn) grow() {
	b := make([]byte, 2*len(g.buf))
	n := copy(b, g.buf[g.r:g.w])
	g.release()
	g.buf, g.w = b, n
}

// release gives a buffer back to the pool once nothing is held in it.
func (g *guardedConn) release() {
	if len(g.buf) == guardBufSize {
		b := g.buf
		g.pool.Put(&b)
	}
	g.buf, g.r, g.w = nil, 0, 0
}

// check advances through data as far as whole units of the request
// stream reach and reports how many bytes it checked; the rest, if any,
// is an incomplete unit, or follows a refused one when err is set.
func (g *guardedConn) check(data []byte) (int, error) {
	done := 0
	for done < len(data) {
		n, err := g.step(data[done:])
		done += n
		if err != nil || n == 0 {
			return done, err
		}
	}
	return done, nil
}

// step checks one unit at the start of data; 0 and no error means data
// holds only part of it.
func (g *guardedConn) step(data []byte) (int, error) {
	switch g.state {
	case stHead:
		return g.stepHead(data)
	case stBody, stChunkData:
		n := min(int64(len(data)), g.left)
		if g.left -= n; g.left == 0 {
			g.endCounted()
		}
		return int(n), nil
	case stChunkLine:
		return g.stepChunkLine(data)
	case stChunkCRLF:
		if len(data) < 2 {
			return 0, nil
		}
		if data[0] != '\r' || data[1] != '\n' {
			return 0, badHead(400, "chunk not followed by CRLF")
		}
		g.state = stChunkLine
		return 2, nil
	case stTrailer:
		return g.stepTrailer(data)
	}
	return len(data), nil // stRaw
}

func (g *guardedConn) stepHead(data []byte) (int, error) {
	g.lines.data = data
	h, err := parseHead(&g.lines, data[:0])
	g.lines.data = nil
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	g.served, g.upgrade = true, h.upgrade
	switch {
	case h.chunked:
		g.state = stChunkLine
	case h.contentLength > 0:
		g.state, g.left = stBody, h.contentLength
	default:
		g.endRequest()
	}
	return len(h.raw), nil
}

func (g *guardedConn) stepChunkLine(data []byte) (int, error) {
	l, n, err := chunkLine(data)
	if n == 0 || err != nil {
		return 0, err
	}
	size, err := parseChunkSize(l)
	switch {
	case err != nil:
		return 0, err
	case size == 0:
		g.state, g.trailers = stTrailer, 0
	default:
		g.state, g.left = stChunkData, size
	}
	return n, nil
}

func (g *guardedConn) stepTrailer(data []byte) (int, error) {
	l, n, err := chunkLine(data)
	if n == 0 || err != nil {
		return 0, err
	}
	if len(l) == 0 {
		g.endRequest()
		return n, nil
	}
	if g.trailers >= MaxHeaderCount {
		return 0, badHead(400, "too many trailer fields")
	}
	if _, _, err := splitField(l); err != nil {
		return 0, err
	}
	g.trailers++
	return n, nil
}

func (g *guardedConn) endCounted() {
	if g.state == stChunkData {
		g.state = stChunkCRLF
		return
	}
	g.endRequest()
}

// endRequest expects the next head, or, after an upgrade request, lets
// the rest through: it is the switched protocol's (a refused upgrade
// closes the connection: closeAfterFailedUpgrade).
func (g *guardedConn) endRequest() {
	if g.upgrade {
		g.state = stRaw
		return
	}
	g.state = stHead
}

// chunkLine finds the CRLF line at the start of data under the limits
// readChunkLine applies, returning it without the CRLF and its length
// with; n is 0 when the line is incomplete.
func chunkLine(data []byte) (line []byte, n int, err error) {
	i := bytes.IndexByte(data, '\n')
	switch {
	case i < 0 && len(data) < maxChunkLine:
		return nil, 0, nil
	case i < 0 || i+1 > maxChunkLine:
		return nil, 0, badHead(400, "chunk line too long")
	}
	line, err = checkLine(data[:i+1])
	return line, i + 1, err
}

// sliceLines gives readHead the lines of bytes already read, without
// copying them into a bufio.Reader. Running out of bytes reads as io.EOF,
// which readHead reports as an incomplete head.
type sliceLines struct{ data []byte }

func (s *sliceLines) ReadSlice(delim byte) ([]byte, error) {
	i := bytes.IndexByte(s.data, delim)
	if i < 0 {
		rest := s.data
		s.data = nil
		return rest, io.EOF
	}
	line := s.data[:i+1]
	s.data = s.data[i+1:]
	return line, nil
}

var _ lineReader = (*sliceLines)(nil)
