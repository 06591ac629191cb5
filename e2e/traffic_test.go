package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/coder/websocket"
)

// The origins used by both tests answer /echo by sending the request body
// back, with its length and SHA-256 as the origin received it in headers,
// so a client can check that every byte made it there and back.
const (
	hdrLen = "X-Echo-Len"
	hdrSum = "X-Echo-Sha256"
)

// echoHandler answers /echo; note, when not nil, adds origin-side facts
// (who connected, over which address) as an X-Echo-Note header.
func echoHandler(note func(r *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		sum := sha256.Sum256(body)
		w.Header().Set(hdrLen, strconv.Itoa(len(body)))
		w.Header().Set(hdrSum, hex.EncodeToString(sum[:]))
		if note != nil {
			w.Header().Set("X-Echo-Note", note(r))
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(body)
	}
}

// echoResult is what one checked request moved.
type echoResult struct {
	sent, received int64
	note           string
	proto          string
}

// errLost means an accepted request came back with different bytes than
// were sent: the one outcome that must never happen.
var errLost = errors.New("data lost or changed")

// checkedEcho POSTs size random bytes to url and checks that the origin
// received exactly them and that the response body is exactly them.
// lastOnConn asks for the connection to be closed after the response.
func checkedEcho(ctx context.Context, c *http.Client, url string, size int, lastOnConn bool) (echoResult, error) {
	body := randomBytes(size)
	sum := sha256.Sum256(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return echoResult{}, err
	}
	req.Close = lastOnConn
	resp, err := c.Do(req)
	if err != nil {
		return echoResult{}, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	res := echoResult{sent: int64(size), received: int64(len(got)), note: resp.Header.Get("X-Echo-Note"), proto: resp.Proto}
	if err != nil {
		return res, fmt.Errorf("reading response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return res, fmt.Errorf("status %s: %.200q", resp.Status, got)
	}
	want := hex.EncodeToString(sum[:])
	gotSum := sha256.Sum256(got)
	switch {
	case resp.Header.Get(hdrSum) != want || resp.Header.Get(hdrLen) != strconv.Itoa(size):
		return res, fmt.Errorf("%w: origin received %s bytes sha256 %s, sent %d sha256 %s", errLost, resp.Header.Get(hdrLen), resp.Header.Get(hdrSum), size, want)
	case hex.EncodeToString(gotSum[:]) != want:
		return res, fmt.Errorf("%w: echo of %d bytes came back as %d bytes with another sha256", errLost, size, len(got))
	}
	return res, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// wsEchoHandler accepts a WebSocket, sends greeting(r) as its first
// message, then echoes every message back.
func wsEchoHandler(greeting func(r *http.Request) string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		ctx := r.Context()
		if err := c.Write(ctx, websocket.MessageText, []byte(greeting(r))); err != nil {
			return
		}
		for {
			typ, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, typ, msg); err != nil {
				return
			}
		}
	}
}

// wsStream is a client WebSocket whose every message is checked against
// its echo, with running SHA-256s of all bytes sent and received.
type wsStream struct {
	c                  *websocket.Conn
	greeting           string
	sent, received     int64
	messages           int
	sentSum, receivSum hash.Hash
}

// dialWS opens url with client and reads the origin's greeting.
func dialWS(ctx context.Context, client *http.Client, url string) (*wsStream, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPClient: client})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(4 << 20)
	_, g, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, fmt.Errorf("reading greeting: %w", err)
	}
	return &wsStream{c: c, greeting: string(g), sentSum: sha256.New(), receivSum: sha256.New()}, nil
}

// exchange sends one message of size random bytes and checks its echo.
func (s *wsStream) exchange(ctx context.Context, size int) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	msg := randomBytes(size)
	if err := s.c.Write(ctx, websocket.MessageBinary, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	s.sent += int64(size)
	s.sentSum.Write(msg)
	_, got, err := s.c.Read(ctx)
	if err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	s.received += int64(len(got))
	s.receivSum.Write(got)
	s.messages++
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("%w: WebSocket echo of %d bytes came back as %d different bytes", errLost, size, len(got))
	}
	return nil
}

// verify compares the totals: every byte sent came back, in order.
func (s *wsStream) verify() error {
	if s.sent != s.received || !bytes.Equal(s.sentSum.Sum(nil), s.receivSum.Sum(nil)) {
		return fmt.Errorf("%w: WebSocket sent %d bytes, received %d", errLost, s.sent, s.received)
	}
	return nil
}

func (s *wsStream) close() error {
	return s.c.Close(websocket.StatusNormalClosure, "done")
}

func (s *wsStream) sha() string { return hex.EncodeToString(s.sentSum.Sum(nil))[:16] }
