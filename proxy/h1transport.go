package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// h1Transport carries a terminated route's bodiless GET, HEAD and OPTIONS
// requests — most of a site's traffic — to a plain-HTTP origin over kept-
// alive HTTP/1.1 connections, in the handler's own goroutine. Go's
// http.Transport hands every request to two goroutines per origin
// connection (one writes, one reads) and back; doing without them is about
// a quarter of the relay's CPU per request. Everything else — a body,
// an upgrade, any other method, an https origin — goes to fallback, which
// is that http.Transport.
//
// A pooled connection is reused only when its last response was read to
// its end with nothing left over, the origin did not ask to close it, and
// it has nothing to say before the next request is written: bytes or a
// FIN waiting on an idle connection mean it is out of step or closing, and
// it is dropped. Requests that meet a pooled connection closed under them
// are retried once on a new one, as http.Transport does; only safe methods
// come here, so that is always allowed.
//
// It dials, bounds its pool and waits for response heads as fallback is
// configured to (DialContext, MaxIdleConnsPerHost, IdleConnTimeout,
// ResponseHeaderTimeout; a body has no timeout).
type h1Transport struct {
	fallback *http.Transport

	mu   sync.Mutex
	idle []*h1Conn // most recently used last
}

type h1Conn struct {
	c     net.Conn
	lr    headLimit // what br reads through
	br    *bufio.Reader
	bw    *bufio.Writer
	since time.Time // idle since
}

// abort makes the connection's blocked reads and writes fail now.
func (pc *h1Conn) abort() { pc.c.SetDeadline(aLongTimeAgo) }

// headLimit bounds what an origin connection may send while its response
// head is being read to MaxResponseHeaderBytes; the body is unbounded.
type headLimit struct {
	c    net.Conn
	left int64 // < 0: no limit
}

var errResponseHeadTooLarge = errors.New("origin's response head is larger than the relay accepts")

func (l *headLimit) Read(p []byte) (int, error) {
	if l.left < 0 {
		return l.c.Read(p)
	}
	if l.left == 0 {
		return 0, errResponseHeadTooLarge
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.c.Read(p)
	l.left -= int64(n)
	return n, err
}

var _ http.RoundTripper = (*h1Transport)(nil)

// aLongTimeAgo, as a deadline, makes a blocked read or write return now.
var aLongTimeAgo = time.Unix(1, 0)

func (t *h1Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !h1Eligible(req) {
		return t.fallback.RoundTrip(req)
	}
	for attempt := 0; ; attempt++ {
		pc, reused, err := t.get(req.Context())
		if err != nil {
			return nil, err
		}
		resp, err := t.exchange(pc, req)
		if err == nil {
			return resp, nil
		}
		pc.c.Close()
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		if !reused || attempt > 0 || !closedUnder(err) {
			return nil, err
		}
	}
}

// h1Eligible reports whether req is one h1Transport carries itself.
func h1Eligible(req *http.Request) bool {
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
	default:
		return false
	}
	return req.URL.Scheme == "http" && req.ContentLength == 0 &&
		(req.Body == nil || req.Body == http.NoBody) &&
		len(req.TransferEncoding) == 0 && req.Header["Upgrade"] == nil
}

// closedUnder reports whether err is what a kept-alive connection the
// origin had closed gives: the request could not be sent, or no response
// began.
func closedUnder(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isReset(err)
}

// exchange writes req and reads the response head. The body, read by the
// caller, gives the connection back to the pool at its end.
func (t *h1Transport) exchange(pc *h1Conn, req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	// The origin has ResponseHeaderTimeout to send the response head. A client that
	// leaves, before or during the response, ends the exchange: the
	// connection's reads fail at once and it is not reused. (The timeout
	// is set first so that it can never undo the client's.)
	pc.c.SetDeadline(time.Now().Add(t.fallback.ResponseHeaderTimeout))
	stop := context.AfterFunc(ctx, pc.abort)
	if err := req.Write(pc.bw); err != nil {
		stop()
		return nil, err
	}
	if err := pc.bw.Flush(); err != nil {
		stop()
		return nil, err
	}
	resp, err := t.readResponse(pc, req)
	pc.lr.left = -1
	if err != nil {
		stop()
		return nil, err
	}
	if !stop() {
		return nil, ctx.Err() // the deadline above may be the client's
	}
	pc.c.SetDeadline(time.Time{})
	resp.Body = &h1Body{t: t, pc: pc, body: resp.Body, keep: !resp.Close && !req.Close,
		stop: context.AfterFunc(ctx, pc.abort)}
	return resp, nil
}

// readResponse reads the response head, passing informational (1xx)
// heads to the client trace ReverseProxy installs (which relays them).
// Each head may have MaxResponseHeaderBytes, as in http.Transport; the
// response head's deadline bounds them all.
func (t *h1Transport) readResponse(pc *h1Conn, req *http.Request) (*http.Response, error) {
	for {
		// Counted from what is not yet buffered: at most one more
		// buffer's worth.
		pc.lr.left = MaxResponseHeaderBytes
		resp, err := http.ReadResponse(pc.br, req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode >= 200 {
			return resp, nil
		}
		if resp.StatusCode == http.StatusSwitchingProtocols {
			return nil, errors.New("origin switched protocols on a request without Upgrade")
		}
		if trace := httptrace.ContextClientTrace(req.Context()); trace != nil && trace.Got1xxResponse != nil {
			if err := trace.Got1xxResponse(resp.StatusCode, textproto.MIMEHeader(resp.Header)); err != nil {
				return nil, err
			}
		}
	}
}

// get returns a pooled connection that is still in step, or dials one.
func (t *h1Transport) get(ctx context.Context) (*h1Conn, bool, error) {
	now := time.Now()
	for {
		t.mu.Lock()
		n := len(t.idle)
		if n == 0 {
			t.mu.Unlock()
			break
		}
		pc := t.idle[n-1]
		t.idle[n-1] = nil
		t.idle = t.idle[:n-1]
		t.mu.Unlock()
		if now.Sub(pc.since) < t.fallback.IdleConnTimeout && quiet(pc.c) {
			return pc, true, nil
		}
		pc.c.Close()
	}
	c, err := t.fallback.DialContext(ctx, "tcp", "")
	if err != nil {
		return nil, false, err
	}
	pc := &h1Conn{c: c, lr: headLimit{c: c, left: -1}, bw: bufio.NewWriterSize(c, 4096)}
	pc.br = bufio.NewReaderSize(&pc.lr, 4096)
	return pc, false, nil
}

// put pools a connection whose response was read to the end.
func (t *h1Transport) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 {
		pc.c.Close() // more than the response said: out of step
		return
	}
	pc.since = time.Now()
	t.mu.Lock()
	if len(t.idle) >= t.fallback.MaxIdleConnsPerHost {
		t.mu.Unlock()
		pc.c.Close()
		return
	}
	t.idle = append(t.idle, pc)
	t.mu.Unlock()
}

// CloseIdleConnections closes the pooled connections of both transports.
func (t *h1Transport) CloseIdleConnections() {
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, pc := range idle {
		pc.c.Close()
	}
	t.fallback.CloseIdleConnections()
}

// quiet reports whether an idle connection has nothing waiting: no bytes
// (which no request asked for) and no FIN.
func quiet(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	ok = false
	raw.Control(func(fd uintptr) {
		var b [1]byte
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = err == unix.EAGAIN
	})
	return ok
}

// h1Body is a response body that pools its connection at a clean end.
type h1Body struct {
	t    *h1Transport
	pc   *h1Conn
	body io.ReadCloser
	keep bool
	stop func() bool
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(b.keep)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false) // not read to the end: the rest would be in the way
	}
	return nil
}

func (b *h1Body) finish(reuse bool) {
	b.done = true
	if b.stop() && reuse {
		b.t.put(b.pc)
		return
	}
	b.pc.c.Close()
}
