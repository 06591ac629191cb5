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
	rec := &recordingReader{r: r, buf: make([]byte, 0, 2048)}
	// The first byte tells TLS (a handshake record) from everything else,
	// before crypto/tls would answer plain HTTP with an HTTP 400.
	if err := rec.fill(1); err != nil {
		return Hello{}, rec.buf, classify(err)
	}
	if rec.buf[0] != 0x16 {
		return Hello{}, rec.buf, ErrNotTLS
	}
	var hello Hello
	var captured bool
	cfg := &tls.Config{
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			hello.ServerName = strings.ToLower(chi.ServerName)
			hello.ALPN = chi.SupportedProtos
			captured = true
			return nil, errHelloCaptured
		},
	}
	err := tls.Server(readOnlyConn{rec}, cfg).Handshake()
	if captured {
		return hello, rec.buf, nil
	}
	return Hello{}, rec.buf, classify(err)
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

// recordingReader keeps every byte read, up to MaxHelloBytes.
type recordingReader struct {
	r   io.Reader
	buf []byte
	off int // bytes already handed to crypto/tls
}

func (rr *recordingReader) fill(n int) error {
	for len(rr.buf) < n {
		if len(rr.buf) >= MaxHelloBytes {
			return ErrHelloTooLarge
		}
		if cap(rr.buf)-len(rr.buf) < 512 {
			rr.buf = slices.Grow(rr.buf, min(cap(rr.buf), MaxHelloBytes-len(rr.buf)))
		}
		m, err := rr.r.Read(rr.buf[len(rr.buf):min(cap(rr.buf), MaxHelloBytes)])
		rr.buf = rr.buf[:len(rr.buf)+m]
		if err != nil && len(rr.buf) < n {
			return err
		}
	}
	return nil
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	if rr.off == len(rr.buf) {
		if err := rr.fill(len(rr.buf) + 1); err != nil {
			return 0, err
		}
	}
	n := copy(p, rr.buf[rr.off:])
	rr.off += n
	return n, nil
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
