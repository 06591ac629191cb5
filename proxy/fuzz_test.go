package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// FuzzPeekHello feeds arbitrary bytes, in arbitrary pieces, to the
// ClientHello peek. It must never panic, never return more than the bound,
// always return every byte it consumed, and classify every failure.
func FuzzPeekHello(f *testing.F) {
	f.Add(clientHello(f, "misskey.example.com"), uint8(7))
	f.Add(clientHello(f, ""), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(3))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00}, uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		r := &pieceReader{data: data, n: int(piece) + 1}
		h, peeked, err := PeekHello(r)
		if len(peeked) > MaxHelloBytes {
			t.Fatalf("peeked %d bytes, over the bound", len(peeked))
		}
		if !bytes.HasPrefix(data, peeked) {
			t.Fatal("peeked bytes are not a prefix of the input")
		}
		if err == nil {
			if h.ServerName != strings.ToLower(h.ServerName) {
				t.Fatalf("server name not lower-cased: %q", h.ServerName)
			}
			return
		}
		known := false
		for _, e := range []error{ErrNotTLS, ErrHelloEOF, ErrHelloInvalid, ErrHelloTooLarge, ErrHelloTimeout} {
			known = known || errors.Is(err, e)
		}
		if !known {
			t.Fatalf("unclassified error %v", err)
		}
	})
}

// pieceReader returns data n bytes at a time, like a slow network.
type pieceReader struct {
	data []byte
	n    int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	k := min(len(p), r.n, len(r.data))
	copy(p, r.data[:k])
	r.data = r.data[k:]
	return k, nil
}

// FuzzReadHead checks the request-head reader: no panic; an accepted head
// is exactly a prefix of the input, ends in CRLFCRLF, stays within the
// bound and has unambiguous framing; a refused one carries a status.
func FuzzReadHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"\r\nOPTIONS * HTTP/1.1\r\nHost: a\r\nX: y\r\n \tz\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		h, err := readHead(br)
		if err != nil {
			var he *headError
			if errors.As(err, &he) && (he.Status < 400 || he.Status > 505) {
				t.Fatalf("status %d", he.Status)
			}
			return
		}
		if !bytes.HasPrefix(data, h.raw) || !bytes.HasSuffix(h.raw, []byte("\r\n\r\n")) {
			t.Fatalf("raw head %q is not what was read", h.raw)
		}
		if len(h.raw) > MaxHeadBytes {
			t.Fatalf("head of %d bytes accepted", len(h.raw))
		}
		if h.chunked && h.contentLength >= 0 {
			t.Fatal("both chunked and Content-Length accepted")
		}
		if h.proto == "HTTP/1.1" && h.host == "" && !strings.Contains(strings.ToLower(string(h.raw)), "\r\nhost:") {
			t.Fatal("HTTP/1.1 request without Host accepted")
		}
		// The body reader must not panic either.
		copyBody(io.Discard, br, h)
	})
}
