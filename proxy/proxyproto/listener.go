package proxyproto

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// Listener wraps a net.Listener whose peers send a PROXY header first. Its
// Accept returns [*Conn]s whose RemoteAddr and LocalAddr are the header's
// Src and Dst.
//
// Accept never reads: each Conn reads its own header on first use, so a
// client that is slow to send one delays only its own connection.
type Listener struct {
	net.Listener

	// Timeout bounds the wait for a connection's header, counted from the
	// first use of its Conn. Zero means 5s.
	Timeout time.Duration

	// Required rejects connections without a valid header: their Read and
	// Write return the error and they are closed. When false, such a
	// connection, or one whose header has not arrived within Timeout, is
	// served as a direct connection with its own addresses and all of its
	// bytes. Any client can then claim any address by sending a header, so
	// use false only where every client is trusted, as in tests.
	Required bool
}

var _ net.Listener = (*Listener)(nil)

func (l *Listener) timeout() time.Duration {
	if l.Timeout > 0 {
		return l.Timeout
	}
	return 5 * time.Second
}

// Accept waits for the next connection and returns it as a [*Conn].
func (l *Listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &Conn{
		nc:       c,
		r:        bufio.NewReader(c), // default size: room for a maxV2 header
		timeout:  l.timeout(),
		required: l.Required,
	}, nil
}

// Conn is a connection accepted by a [Listener]. Its header is read by the
// first call to Read, Write, RemoteAddr, LocalAddr or Header, which blocks
// until the header arrives or the Listener's Timeout passes. Write waits too
// because the spec forbids a receiver to speak before it has the header.
type Conn struct {
	nc       net.Conn // unexported: reading it directly would skip buffered bytes
	timeout  time.Duration
	required bool

	once   sync.Once
	hdr    Header // set by once
	hdrErr error  // set by once

	rmu sync.Mutex
	r   *bufio.Reader // holds bytes read past the header; nil once drained

	// The header is read under its own deadline, but a deadline the user
	// set must apply as well, and be in force afterwards.
	dmu          sync.Mutex
	userDeadline time.Time
	hdrDeadline  time.Time // zero unless the header is being read
}

var _ net.Conn = (*Conn)(nil)

// Header returns the connection's header, reading it if need be, or the
// error that reading it gave (one wrapping [ErrNoHeader] for a connection
// without one). With a Listener whose Required is false, the connection
// remains usable after such an error.
func (c *Conn) Header() (Header, error) {
	c.once.Do(c.readHeader)
	return c.hdr, c.hdrErr
}

func (c *Conn) readHeader() {
	c.dmu.Lock()
	c.hdrDeadline = time.Now().Add(c.timeout)
	err := c.nc.SetReadDeadline(earlier(c.userDeadline, c.hdrDeadline))
	c.dmu.Unlock()
	if err == nil {
		c.hdr, err = Read(c.r)
	}

	c.dmu.Lock()
	c.hdrDeadline = time.Time{}
	// An error here means the conn is closed; its next use will say so.
	_ = c.nc.SetReadDeadline(c.userDeadline)
	c.dmu.Unlock()

	c.hdrErr = err
	if err != nil && c.required {
		c.nc.Close()
	}
}

// handshake reads the header if need be and returns the error that should
// fail Read and Write.
func (c *Conn) handshake() error {
	c.once.Do(c.readHeader)
	if c.required {
		return c.hdrErr
	}
	return nil
}

// Read reads the bytes after the header: first those read along with the
// header, then the connection's.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	c.rmu.Lock()
	if c.r != nil {
		if c.r.Buffered() > 0 {
			n, _ := c.r.Read(p) // only copies: it never reads the conn when it has bytes
			c.rmu.Unlock()
			return n, nil
		}
		c.r = nil // later reads go straight to the conn
	}
	c.rmu.Unlock()
	return c.nc.Read(p)
}

// Write writes to the connection once its header has been read.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.nc.Write(p)
}

// CloseWrite half-closes the connection if the underlying one supports it,
// as *net.TCPConn does.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("proxyproto: %T cannot half-close: %w", c.nc, errors.ErrUnsupported)
}

// RemoteAddr returns the header's Src, or the peer's address if the header
// has no addresses or could not be read.
func (c *Conn) RemoteAddr() net.Addr {
	if h, err := c.Header(); err == nil && !h.Local {
		return net.TCPAddrFromAddrPort(h.Src)
	}
	return c.nc.RemoteAddr()
}

// LocalAddr returns the header's Dst, or the socket's address if the header
// has no addresses or could not be read.
func (c *Conn) LocalAddr() net.Addr {
	if h, err := c.Header(); err == nil && !h.Local {
		return net.TCPAddrFromAddrPort(h.Dst)
	}
	return c.nc.LocalAddr()
}

// Close closes the connection.
func (c *Conn) Close() error {
	return c.nc.Close()
}

// SetWriteDeadline sets the write deadline, as net.Conn's does.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	return c.nc.SetWriteDeadline(t)
}

// SetDeadline sets the read and write deadlines, as net.Conn's does.
func (c *Conn) SetDeadline(t time.Time) error {
	rerr := c.SetReadDeadline(t)
	if err := c.nc.SetWriteDeadline(t); err != nil {
		return err
	}
	return rerr
}

// SetReadDeadline sets the read deadline, as net.Conn's does. While the
// header is being read, the earlier of t and the header's deadline applies.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.dmu.Lock()
	defer c.dmu.Unlock()
	c.userDeadline = t
	return c.nc.SetReadDeadline(earlier(t, c.hdrDeadline))
}

// earlier returns the earlier of two deadlines, where zero means none.
func earlier(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}
