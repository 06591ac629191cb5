package proxyproto_test

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/internal/leaktest"

	"github.com/relay46/relay46/proxy/proxyproto"
)

func TestMain(m *testing.M) {
	leaktest.Main(m, "relay46/proxy/proxyproto.", "proxyproto")
}

// listen returns a Listener on a loopback address of network, skipping the
// test if the host has no such address.
func listen(t *testing.T, network string, required bool, timeout time.Duration) *proxyproto.Listener {
	t.Helper()
	addr := map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network]
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	pl := &proxyproto.Listener{Listener: ln, Required: required, Timeout: timeout}
	t.Cleanup(func() { pl.Close() })
	return pl
}

// dial connects to ln and writes each of parts, pausing between them so they
// arrive in separate segments, then half-closes.
func dial(t *testing.T, ln net.Listener, parts ...[]byte) *net.TCPConn {
	t.Helper()
	c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	tc := c.(*net.TCPConn)
	go func() {
		for i, p := range parts {
			if i > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := tc.Write(p); err != nil {
				return
			}
		}
		tc.CloseWrite()
	}()
	return tc
}

func accept(t *testing.T, ln net.Listener) *proxyproto.Conn {
	t.Helper()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*proxyproto.Conn)
}

func TestListener(t *testing.T) {
	const data = "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
	client4, server4 := ap("203.0.113.7:50123"), ap("198.51.100.1:443")
	client6, server6 := ap("[2001:db8::7]:50123"), ap("[2001:db8::1]:443")
	tests := []struct {
		name     string
		header   []byte
		want     proxyproto.Header
		wantAddr bool // RemoteAddr and LocalAddr come from the header
	}{
		{"v1 TCP4", proxyproto.AppendV1(nil, client4, server4), proxyproto.Header{Version: 1, Src: client4, Dst: server4}, true},
		{"v1 TCP6", proxyproto.AppendV1(nil, client6, server6), proxyproto.Header{Version: 1, Src: client6, Dst: server6}, true},
		{"v2 TCP4", proxyproto.AppendV2(nil, client4, server4), proxyproto.Header{Version: 2, Src: client4, Dst: server4}, true},
		{"v2 TCP6", proxyproto.AppendV2(nil, client6, server6), proxyproto.Header{Version: 2, Src: client6, Dst: server6}, true},
		{
			"v2 mapped",
			proxyproto.AppendV2(nil, netip.AddrPortFrom(netip.AddrFrom16(client4.Addr().As16()), client4.Port()), server4),
			proxyproto.Header{Version: 2, Src: client4, Dst: server4}, true,
		},
		{"v1 UNKNOWN", proxyproto.AppendV1(nil, netip.AddrPort{}, netip.AddrPort{}), proxyproto.Header{Version: 1, Local: true}, false},
		{"v2 LOCAL", proxyproto.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{}), proxyproto.Header{Version: 2, Local: true}, false},
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				ln := listen(t, network, true, 5*time.Second)
				// The header in two segments, the data in a third.
				half := len(tt.header) / 2
				client := dial(t, ln, tt.header[:half], tt.header[half:], []byte(data))
				c := accept(t, ln)

				got, err := io.ReadAll(c)
				if err != nil || string(got) != data {
					t.Errorf("read %q, %v; want %q", got, err, data)
				}
				if h, err := c.Header(); h != tt.want || err != nil {
					t.Errorf("Header() = %+v, %v; want %+v", h, err, tt.want)
				}
				wantRemote, wantLocal := client.LocalAddr().String(), client.RemoteAddr().String()
				if tt.wantAddr {
					wantRemote, wantLocal = tt.want.Src.String(), tt.want.Dst.String()
				}
				if got := c.RemoteAddr().String(); got != wantRemote {
					t.Errorf("RemoteAddr() = %s, want %s", got, wantRemote)
				}
				if got := c.LocalAddr().String(); got != wantLocal {
					t.Errorf("LocalAddr() = %s, want %s", got, wantLocal)
				}
				// The connection still works the other way.
				if _, err := c.Write([]byte("ok")); err != nil {
					t.Errorf("Write: %v", err)
				}
				c.CloseWrite()
				if reply, err := io.ReadAll(client); string(reply) != "ok" || err != nil {
					t.Errorf("client read %q, %v; want %q", reply, err, "ok")
				}
			})
		}
	}
}

// TestListenerSlowClient checks that a client that never sends its header
// holds up neither Accept nor other clients, and is cut off after Timeout.
func TestListenerSlowClient(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, network := range []string{"tcp4", "tcp6"} {
		t.Run(network, func(t *testing.T) {
			ln := listen(t, network, true, timeout)
			quiet, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer quiet.Close()
			quietConn := accept(t, ln)

			header := proxyproto.AppendV1(nil, ap("203.0.113.7:1"), ap("198.51.100.1:2"))
			dial(t, ln, header, []byte("hello"))
			start := time.Now()
			fast := accept(t, ln)
			if got, err := io.ReadAll(fast); string(got) != "hello" || err != nil {
				t.Errorf("other client: read %q, %v", got, err)
			}
			if d := time.Since(start); d > timeout/2 {
				t.Errorf("other client took %v", d)
			}

			// Its Timeout runs from the first use of its Conn.
			start = time.Now()
			_, err = quietConn.Read(make([]byte, 1))
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("quiet client: Read error %v, want deadline exceeded", err)
			}
			if d := time.Since(start); d < timeout*8/10 {
				t.Errorf("quiet client cut off after %v, before Timeout %v", d, timeout)
			}
			if _, err := quietConn.Write([]byte("x")); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("quiet client: Write error %v, want the header's", err)
			}
			// The server closed it.
			quiet.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := quiet.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("quiet client: read %d, %v after rejection; want the connection closed", n, err)
			}
		})
	}
}

// TestListenerRequired checks that connections without a valid header are
// refused when a header is required.
func TestListenerRequired(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantErr error
	}{
		{"plain HTTP", "GET / HTTP/1.1\r\n\r\n", proxyproto.ErrNoHeader},
		{"invalid v1", "PROXY TCP4 192.0.2.1 192.0.2.11 01 2\r\nGET / HTTP/1.1\r\n\r\n", proxyproto.ErrInvalid},
		{"truncated v2", "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00", io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ln := listen(t, "tcp4", true, 5*time.Second)
			client := dial(t, ln, []byte(tt.in))
			c := accept(t, ln)
			if n, err := c.Read(make([]byte, 64)); n != 0 || !errors.Is(err, tt.wantErr) {
				t.Errorf("Read = %d, %v; want %v", n, err, tt.wantErr)
			}
			if _, err := c.Header(); !errors.Is(err, tt.wantErr) {
				t.Errorf("Header() error %v, want %v", err, tt.wantErr)
			}
			if got, want := c.RemoteAddr().String(), client.LocalAddr().String(); got != want {
				t.Errorf("RemoteAddr() = %s, want the socket's %s", got, want)
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := client.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("client read %d, %v; want the connection closed", n, err)
			}
		})
	}
}

// TestListenerNotRequired checks that connections without a valid header
// are served as direct connections, every byte intact.
func TestListenerNotRequired(t *testing.T) {
	const timeout = 200 * time.Millisecond
	tests := []struct {
		name    string
		parts   []string
		wantErr error
	}{
		{"plain HTTP", []string{"GET / HTTP/1.1\r\n\r\n"}, proxyproto.ErrNoHeader},
		{"TLS", []string{"\x16\x03\x01\x00\x05hello"}, proxyproto.ErrNoHeader},
		{"one byte", []string{"x"}, proxyproto.ErrNoHeader},
		{"invalid v1", []string{"PROXY TCP4 192.0.2.1 192.0.2.11 01 2\r\nrest"}, proxyproto.ErrInvalid},
		{"signature prefix then data", []string{"\r\n\r\n", "\r\nnot quit"}, proxyproto.ErrNoHeader},
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				ln := listen(t, network, false, timeout)
				var parts [][]byte
				for _, p := range tt.parts {
					parts = append(parts, []byte(p))
				}
				client := dial(t, ln, parts...)
				c := accept(t, ln)
				got, err := io.ReadAll(c)
				if want := strings.Join(tt.parts, ""); string(got) != want || err != nil {
					t.Errorf("read %q, %v; want %q", got, err, want)
				}
				if h, err := c.Header(); h != (proxyproto.Header{}) || !errors.Is(err, tt.wantErr) {
					t.Errorf("Header() = %+v, %v; want error %v", h, err, tt.wantErr)
				}
				if got, want := c.RemoteAddr().String(), client.LocalAddr().String(); got != want {
					t.Errorf("RemoteAddr() = %s, want the socket's %s", got, want)
				}
			})
		}
	}

	// A client that waits for the server to speak first is served once
	// Timeout has passed, and its later bytes arrive.
	t.Run("server speaks first", func(t *testing.T) {
		ln := listen(t, "tcp4", false, timeout)
		client, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer client.Close()
		c := accept(t, ln)
		if _, err := c.Write([]byte("220 ready\r\n")); err != nil {
			t.Fatalf("Write: %v", err)
		}
		greeting := make([]byte, 11)
		if _, err := io.ReadFull(client, greeting); err != nil {
			t.Fatal(err)
		}
		client.Write([]byte("HELO x\r\n"))
		client.(*net.TCPConn).CloseWrite()
		if got, err := io.ReadAll(c); string(got) != "HELO x\r\n" || err != nil {
			t.Errorf("read %q, %v", got, err)
		}
		if _, err := c.Header(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("Header() error %v, want deadline exceeded", err)
		}
	})
}

// TestConnDeadline checks that a read deadline set before the header is
// read still applies after it.
func TestConnDeadline(t *testing.T) {
	ln := listen(t, "tcp4", true, 5*time.Second)
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c := accept(t, ln)
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	client.Write(proxyproto.AppendV2(nil, ap("192.0.2.1:1"), ap("192.0.2.11:2")))
	if h, err := c.Header(); err != nil || h.Src != ap("192.0.2.1:1") {
		t.Fatalf("Header() = %+v, %v", h, err)
	}
	start := time.Now()
	if _, err := c.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Read error %v, want the caller's deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("caller's deadline fired after %v", d)
	}

	// A deadline set while the header is awaited cuts the wait short.
	client2, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client2.Close()
	c2 := accept(t, ln)
	go func() {
		time.Sleep(50 * time.Millisecond)
		c2.SetDeadline(time.Now())
	}()
	start = time.Now()
	if _, err := c2.Header(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Header() error %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("header wait ended after %v, not at the caller's deadline", d)
	}
}
