package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"time"
)

// MaxHelloBytes bounds how much the relay reads while looking for a
// complete ClientHello. Post-quantum key shares make real ClientHellos
// about 1.8 KB; 16 KiB leaves room for large extension sets while keeping
// a flood of half-sent hellos cheap.
const MaxHelloBytes = 16 << 10

// Named peek failures, tested with errors.Is. Their String forms are the
// outcome and metric reason names.
var (
	ErrHelloTimeout  = errors.New("hello_timeout")
	ErrNotTLS        = errors.New("not_tls")
	ErrHelloTooLarge = errors.New("hello_too_large")
	ErrHelloInvalid  = errors.New("hello_invalid")
	ErrHelloEOF      = errors.New("hello_eof")
)

// Hello is what routing needs from a ClientHello.
type Hello struct {
	ServerName string   // lower-case, as sent; "" when the client sent no SNI
	ALPN       []string // protocols offered, e.g. h2, http/1.1, acme-tls/1
}

// PeekHello reads from r until it holds a complete ClientHello, which
// crypto/tls parses. It returns every byte it read, to be replayed to
// whoever handles the connection next. The caller sets the read deadline.
func PeekHello(r io.Reader) (Hello, []byte, error) {
	return newPeeker().peek(r)
}

// peeker is what one ClientHello peek needs, allocated as one: the buffer
// that records the hello and the crypto/tls config whose
// GetConfigForClient captures it. The relay reuses peekers across
// connections (Server.peekers), so a routed connection costs only what
// crypto/tls allocates itself.
type peeker struct {
	rec      recordingReader
	cfg      tls.Config // GetConfigForClient is capture, bound once in newPeeker
	hello    Hello
	captured bool
}

func newPeeker() *peeker {
	p := &peeker{rec: recordingReader{buf: make([]byte, headerRoom, headerRoom+2048)}}
	// A method value bound once, rather than a closure (and the variables
	// it captures) made for every peek.
	p.cfg.GetConfigForClient = p.capture
	return p
}

func (p *peeker) capture(chi *tls.ClientHelloInfo) (*tls.Config, error) {
	// crypto/tls copies the name and protocols out of the record, so the
	// hello does not alias the recorded bytes and outlives the peeker.
	p.hello = Hello{ServerName: strings.ToLower(chi.ServerName), ALPN: chi.SupportedProtos}
	p.captured = true
	return nil, errHelloCaptured
}

// peek is PeekHello. The returned bytes belong to p: they are overwritten
// once p is reset.
func (p *peeker) peek(r io.Reader) (Hello, []byte, error) {
	rec := &p.rec
	rec.r = r
	// The first byte tells TLS (a handshake record) from everything else,
	// before crypto/tls would answer plain HTTP with an HTTP 400.
	if err := rec.fill(1); err != nil {
		return Hello{}, rec.bytes(), classify(err)
	}
	if rec.bytes()[0] != 0x16 {
		return Hello{}, rec.bytes(), ErrNotTLS
	}
	// crypto/tls only reads p.cfg: GetConfigForClient fails the handshake
	// before anything (session ticket keys) would be stored in it, so the
	// config serves peek after peek.
	err := tls.Server(readOnlyConn{rec}, &p.cfg).Handshake()
	if p.captured {
		return p.hello, rec.bytes(), nil
	}
	return Hello{}, rec.bytes(), classify(err)
}

// reset readies p for another connection.
func (p *peeker) reset() {
	p.rec.r, p.rec.off, p.rec.buf = nil, 0, p.rec.buf[:headerRoom]
	p.hello, p.captured = Hello{}, false
}

// maxPooledHello is the largest recording buffer a pooled peeker keeps:
// room for any real ClientHello, while the rare peeker grown towards
// MaxHelloBytes (a flood of oversized hellos) is left to the collector.
const maxPooledHello = 4 << 10

func (s *Server) getPeeker() *peeker {
	if p, ok := s.peekers.Get().(*peeker); ok {
		return p
	}
	return newPeeker()
}

// putPeeker returns p for reuse. Nothing may use the bytes p recorded
// afterwards.
func (s *Server) putPeeker(p *peeker) {
	if cap(p.rec.buf) > headerRoom+maxPooledHello {
		return
	}
	p.reset()
	s.peekers.Put(p)
}

var errHelloCaptured = errors.New("hello captured")

func classify(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, ErrHelloTooLarge):
		return ErrHelloTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return ErrHelloTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return ErrHelloEOF
	case err == nil:
		return ErrHelloInvalid
	}
	return errors.Join(ErrHelloInvalid, err)
}

// headerRoom is kept free in front of the recorded bytes for the longest
// PROXY header: 107 bytes for v1 (the spec's section 2.1); v2 without
// TLVs takes 52. Passthrough sends header and hello in one write without
// copying the hello (withHeader).
const headerRoom = 107

// recordingReader keeps every byte read, up to MaxHelloBytes.
type recordingReader struct {
	r   io.Reader
	buf []byte // buf[:headerRoom] is kept free; buf[headerRoom:] holds the bytes read
	off int    // bytes already handed to crypto/tls
}

// bytes returns the bytes read so far.
func (rr *recordingReader) bytes() []byte { return rr.buf[headerRoom:] }

func (rr *recordingReader) fill(n int) error {
	for len(rr.bytes()) < n {
		if len(rr.bytes()) >= MaxHelloBytes {
			return ErrHelloTooLarge
		}
		if cap(rr.buf)-len(rr.buf) < 512 {
			rr.buf = slices.Grow(rr.buf, min(cap(rr.buf), MaxHelloBytes-len(rr.bytes())))
		}
		m, err := rr.r.Read(rr.buf[len(rr.buf):min(cap(rr.buf), headerRoom+MaxHelloBytes)])
		rr.buf = rr.buf[:len(rr.buf)+m]
		if err != nil && len(rr.bytes()) < n {
			return err
		}
	}
	return nil
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	if rr.off == len(rr.bytes()) {
		if err := rr.fill(rr.off + 1); err != nil {
			return 0, err
		}
	}
	n := copy(p, rr.bytes()[rr.off:])
	rr.off += n
	return n, nil
}

// withHeader returns hdr followed by the bytes read, as one slice for one
// write. hdr is copied into the room in front of the bytes read, which
// stay where they are; the result shares rr's buffer.
func (rr *recordingReader) withHeader(hdr []byte) []byte {
	if len(hdr) > headerRoom {
		// Not reached with the headers the relay sends. A fresh slice,
		// never hdr itself, so hdr can live on the caller's stack.
		return append(append(make([]byte, 0, len(hdr)+len(rr.bytes())), hdr...), rr.bytes()...)
	}
	start := headerRoom - len(hdr)
	copy(rr.buf[start:], hdr)
	return rr.buf[start:]
}

// readOnlyConn lets crypto/tls read a ClientHello and swallows anything it
// tries to write back (the alert after GetConfigForClient fails).
type readOnlyConn struct{ r *recordingReader }

func (c readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c readOnlyConn) Close() error                     { return nil }
func (c readOnlyConn) LocalAddr() net.Addr              { return nil }
func (c readOnlyConn) RemoteAddr() net.Addr             { return nil }
func (c readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c readOnlyConn) SetWriteDeadline(time.Time) error { return nil }

var _ net.Conn = readOnlyConn{}

// alertUnrecognizedName is a fatal TLS alert record, unrecognized_name
// (RFC 6066 §3), sent to clients whose SNI matches no route.
var alertUnrecognizedName = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112}

// prefixConn replays bytes already read before reading the connection.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func newPrefixConn(c net.Conn, prefix []byte) *prefixConn {
	return &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(prefix), c)}
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }
