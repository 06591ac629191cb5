package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

func passthroughConfig(upstream string, extra string) string {
	return fmt.Sprintf(`routes:
  - name: home
    hosts: ["misskey.example.com", "*.misskey.example.com", "例え.jp"]
    upstream: %q
%s`, upstream, extra)
}

func TestPassthroughHTTPS(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), ""))

	body, cs, err := httpsGet(t, r.https, "misskey.example.com", "/hello", roots)
	if err != nil {
		t.Fatal(err)
	}
	if !cs.PeerCertificates[0].Equal(cert.Leaf) {
		t.Errorf("client saw a certificate other than the origin's: %v", cs.PeerCertificates[0].Subject)
	}
	if !strings.Contains(body, "host=misskey.example.com path=/hello") {
		t.Errorf("body = %q", body)
	}
	m := r.waitOutcome(t, "ok")
	if m["route"] != "home" || m["upstream"] != o.addr() || m["client"] == "" {
		t.Errorf("log line = %v", m)
	}
	if m["bytes_from_client"].(int64) == 0 || m["bytes_to_client"].(int64) == 0 {
		t.Errorf("bytes not counted: %v", m)
	}
}

// chunkedConn splits everything written to it into pieces of size n, with
// a pause between them, so the relay sees a ClientHello in many segments.
type chunkedConn struct {
	net.Conn
	n     int
	pause time.Duration
}

func (c *chunkedConn) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		k := min(c.n, len(p))
		m, err := c.Conn.Write(p[:k])
		written += m
		if err != nil {
			return written, err
		}
		p = p[k:]
		if len(p) > 0 {
			time.Sleep(c.pause)
		}
	}
	return written, nil
}

func dialTLS(t testing.TB, relayAddr string, cfg *tls.Config, wrap func(net.Conn) net.Conn) (*tls.Conn, error) {
	t.Helper()
	c, err := net.Dial("tcp4", relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetNoDelay(true)
	var wc net.Conn = c
	if wrap != nil {
		wc = wrap(c)
	}
	tc := tls.Client(wc, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	tc.SetDeadline(time.Time{})
	t.Cleanup(func() { tc.Close() })
	return tc, nil
}

func TestClientHelloInPieces(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), ""))
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
		piece  int
		pause  time.Duration
	}{
		{"classic hello in 5 pieces", []tls.CurveID{tls.X25519}, 60, 50 * time.Millisecond},
		{"post-quantum hello in 100-byte segments", []tls.CurveID{tls.X25519MLKEM768}, 100, 5 * time.Millisecond},
		{"post-quantum hello one byte per write", []tls.CurveID{tls.X25519MLKEM768}, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sent bytes.Buffer
			c, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com", CurvePreferences: tc.curves},
				func(c net.Conn) net.Conn {
					return &recordConn{Conn: &chunkedConn{Conn: c, n: tc.piece, pause: tc.pause}, w: &sent}
				})
			if err != nil {
				t.Fatal(err)
			}
			if tc.curves[0] == tls.X25519MLKEM768 && sent.Len() < 1400 {
				t.Errorf("ClientHello was %d bytes; a post-quantum one is about 1.8 KB", sent.Len())
			}
			if got := c.ConnectionState().CurveID; got != tc.curves[0] {
				t.Errorf("negotiated %v, want %v", got, tc.curves[0])
			}
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: misskey.example.com\r\nConnection: close\r\n\r\n")
			b, _ := io.ReadAll(c)
			if !strings.Contains(string(b), "200 OK") {
				t.Errorf("response = %q", b)
			}
		})
	}
}

// recordConn keeps a copy of the first flight written (the ClientHello).
type recordConn struct {
	net.Conn
	w    *bytes.Buffer
	once sync.Once
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.once.Do(func() { c.w.Write(p) })
	return c.Conn.Write(p)
}

func TestSNIRouting(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com", "*.misskey.example.com", "xn--r8jz45g.jp", "other.example")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), ""))
	for _, tc := range []struct {
		sni    string
		routed bool
	}{
		{"misskey.example.com", true},
		{"MiSSKey.Example.COM", true},
		{"a.misskey.example.com", true},
		{"Media.MISSKEY.example.com", true},
		{"xn--r8jz45g.jp", true}, // 例え.jp, as clients send it
		{"a.b.misskey.example.com", false},
		{"example.com", false},
		{"other.example", false},
	} {
		t.Run(tc.sni, func(t *testing.T) {
			before := o.accepted.Load()
			_, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: tc.sni}, nil)
			if tc.routed && err != nil {
				t.Fatalf("not routed: %v", err)
			}
			if !tc.routed {
				if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
					t.Fatalf("err = %v, want the unrecognized_name alert", err)
				}
				if o.accepted.Load() != before {
					t.Errorf("the origin was dialed for an unknown name")
				}
			}
		})
	}
}

func TestACMETLSALPNPassesThrough(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The origin answers acme-tls/1 like an ACME client solving TLS-ALPN-01.
	sawALPN := make(chan []string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		tc := tls.Server(c, &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"acme-tls/1"},
			GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
				sawALPN <- chi.SupportedProtos
				return nil, nil
			},
		})
		tc.Handshake()
	}()
	r := startRelay(t, passthroughConfig(ln.Addr().String(), ""))
	c, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com", NextProtos: []string{"acme-tls/1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.ConnectionState().NegotiatedProtocol; p != "acme-tls/1" {
		t.Errorf("negotiated %q, want acme-tls/1", p)
	}
	if got := <-sawALPN; len(got) != 1 || got[0] != "acme-tls/1" {
		t.Errorf("origin saw ALPN %v", got)
	}
}

func TestUnknownSNIFallbackRoute(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com", "other.example")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), "unknown_sni: home\n"))
	for _, sni := range []string{"other.example", ""} {
		cfg := &tls.Config{RootCAs: roots, ServerName: sni}
		if sni == "" {
			cfg = &tls.Config{InsecureSkipVerify: true} // IP-address dial: no SNI is sent
		}
		if _, err := dialTLS(t, r.https, cfg, nil); err != nil {
			t.Errorf("SNI %q: fallback route not used: %v", sni, err)
		}
	}
}

func TestPeekHelloErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"plain http", []byte("GET / HTTP/1.1\r\n\r\n"), ErrNotTLS},
		{"sslv2 hello", []byte{0x80, 0x2e, 0x01, 0x03, 0x01}, ErrNotTLS},
		{"empty", nil, ErrHelloEOF},
		{"truncated record", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}, ErrHelloEOF},
		{"garbage hello body", []byte{0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0, 0, 0, 0}, ErrHelloInvalid},
		{"not a client hello", []byte{0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00}, ErrHelloInvalid},
		{"oversized", append([]byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xfc}, make([]byte, MaxHelloBytes+10)...), ErrHelloTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := PeekHello(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// clientHello returns the bytes of a real ClientHello for sni.
func clientHello(t testing.TB, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		tls.Client(b, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		b.Close()
	}()
	buf := make([]byte, 8192)
	a.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := a.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestPeekHelloReturnsEveryByte(t *testing.T) {
	hello := clientHello(t, "misskey.example.com")
	rest := []byte("early data that must be replayed too")
	h, peeked, err := PeekHello(io.MultiReader(bytes.NewReader(hello), bytes.NewReader(rest)))
	if err != nil {
		t.Fatal(err)
	}
	if h.ServerName != "misskey.example.com" {
		t.Errorf("ServerName = %q", h.ServerName)
	}
	if !bytes.HasPrefix(peeked, hello) {
		t.Errorf("peeked bytes are not the hello as sent")
	}
}

// TestPeekerReuse peeks one connection after another with the same pooled
// peekers, as the relay does: nothing of an earlier hello (its name, its
// bytes, a buffer it grew) may show in a later one.
func TestPeekerReuse(t *testing.T) {
	var s Server
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + ".example"
	for i, tc := range []struct {
		in  []byte
		sni string
		err error
	}{
		{clientHello(t, "misskey.example.com"), "misskey.example.com", nil},
		{[]byte("GET / HTTP/1.1\r\n\r\n"), "", ErrNotTLS},
		{clientHello(t, long), long, nil},
		{clientHello(t, ""), "", nil},
		{clientHello(t, "a.example")[:100], "", ErrHelloEOF},
		{clientHello(t, "b.example"), "b.example", nil},
	} {
		p := s.getPeeker()
		h, peeked, err := p.peek(&pieceReader{data: tc.in, n: 300})
		if !errors.Is(err, tc.err) || h.ServerName != tc.sni {
			t.Errorf("%d: peek = %q, %v; want %q, %v", i, h.ServerName, err, tc.sni, tc.err)
		}
		if !bytes.Equal(peeked, tc.in) {
			t.Errorf("%d: peeked %d bytes, not the %d sent", i, len(peeked), len(tc.in))
		}
		s.putPeeker(p)
	}
}
