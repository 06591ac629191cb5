package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// client is a deliberately small HTTPS/1.1 client: fixed request bytes, a
// response parser that reads only what it must, and no connection pool, so
// that its own cost is low and the same for every peer.
//
// Every handshake is a full TLS 1.3 handshake: there is no session cache,
// so nothing resumes. Key exchange is pinned to X25519, which every peer
// supports, so no peer pays for a post-quantum key share the others skip.
type client struct {
	tls       *tls.Config
	host      string
	smallReq  []byte // keep-alive GET of the small body
	closeReq  []byte // the same with Connection: close
	bulkReq   []byte // keep-alive GET of the bulk file
	bulkBytes int64
}

// errClosed says the server ended a keep-alive connection after a response.
var errClosed = errors.New("connection closed by server")

func newClient(s *Spec) (*client, error) {
	pem, err := os.ReadFile(s.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", s.CAFile)
	}
	req := func(path, conn string) []byte {
		return []byte("GET " + path + " HTTP/1.1\r\nHost: " + s.ServerName +
			"\r\nUser-Agent: relaybench\r\nAccept: */*\r\nConnection: " + conn + "\r\n\r\n")
	}
	return &client{
		tls: &tls.Config{
			ServerName:       s.ServerName,
			RootCAs:          pool,
			MinVersion:       tls.VersionTLS13,
			CurvePreferences: []tls.CurveID{tls.X25519},
			NextProtos:       []string{"http/1.1"},
		},
		host:      s.ServerName,
		smallReq:  req(s.SmallPath, "keep-alive"),
		closeReq:  req(s.SmallPath, "close"),
		bulkReq:   req(s.BulkPath, "keep-alive"),
		bulkBytes: s.BulkBytes,
	}, nil
}

// conn is one client connection with its read buffer.
type conn struct {
	tc *tls.Conn
	br *bufio.Reader
}

// dial connects and completes the TLS handshake.
func (c *client) dial(ctx context.Context, addr string) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(nc, c.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("handshake: %w", err)
	}
	return &conn{tc: tc, br: bufio.NewReaderSize(tc, 16<<10)}, nil
}

func (k *conn) Close() error { return k.tc.Close() }

// do sends req and reads the whole response, returning the body size.
// It returns errClosed along with the size when the server said it will
// close the connection.
func (k *conn) do(req []byte) (int64, error) {
	k.tc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := k.tc.Write(req); err != nil {
		return 0, err
	}
	return readResponse(k.br)
}

// readResponse reads one HTTP/1.1 response with a 200 status and discards
// its body (Content-Length or chunked).
func readResponse(br *bufio.Reader) (int64, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return 0, err
	}
	if len(line) < 12 || string(line[:5]) != "HTTP/" || string(line[9:12]) != "200" {
		return 0, fmt.Errorf("unexpected status line %q", strings.TrimSpace(string(line)))
	}
	length, chunked, closing := int64(-1), false, false
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, err
		}
		if len(line) <= 2 {
			break
		}
		name, value, ok := strings.Cut(string(line), ":")
		if !ok {
			continue
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(name) {
		case "content-length":
			if length, err = strconv.ParseInt(value, 10, 64); err != nil {
				return 0, fmt.Errorf("bad content-length %q", value)
			}
		case "transfer-encoding":
			chunked = strings.EqualFold(value, "chunked")
		case "connection":
			closing = strings.EqualFold(value, "close")
		}
	}
	var n int64
	switch {
	case chunked:
		n, err = discardChunked(br)
	case length >= 0:
		n, err = io.CopyN(io.Discard, br, length)
	default:
		n, err = io.Copy(io.Discard, br)
		closing = true
	}
	if err != nil {
		return n, err
	}
	if closing {
		return n, errClosed
	}
	return n, nil
}

func discardChunked(br *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return total, err
		}
		sz, _, _ := strings.Cut(strings.TrimSpace(string(line)), ";")
		n, err := strconv.ParseInt(sz, 16, 64)
		if err != nil {
			return total, fmt.Errorf("bad chunk size %q", sz)
		}
		if n == 0 {
			// Trailers, then the final empty line.
			for {
				l, err := br.ReadSlice('\n')
				if err != nil {
					return total, err
				}
				if len(l) <= 2 {
					return total, nil
				}
			}
		}
		m, err := io.CopyN(io.Discard, br, n)
		total += m
		if err != nil {
			return total, err
		}
		if _, err := br.Discard(2); err != nil {
			return total, err
		}
	}
}

// probe makes one keep-alive request through addr.
func (c *client) probe(ctx context.Context, addr string) error {
	k, err := c.dial(ctx, addr)
	if err != nil {
		return err
	}
	defer k.Close()
	if _, err := k.do(c.smallReq); err != nil && !errors.Is(err, errClosed) {
		return err
	}
	return nil
}

// oneShot is a whole new connection: connect, full handshake, one request
// with Connection: close, then wait for the server's close so that the
// TIME_WAIT state lands on the server side, not on the client's ports.
func (c *client) oneShot(ctx context.Context, addr string) error {
	k, err := c.dial(ctx, addr)
	if err != nil {
		return err
	}
	defer k.Close()
	if _, err := k.do(c.closeReq); err != nil && !errors.Is(err, errClosed) {
		return err
	}
	k.tc.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, k.br)
	return nil
}
