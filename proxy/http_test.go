package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawHTTP sends req on a new connection to addr and returns all the
// relay sends back until it closes.
func rawHTTP(t testing.TB, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(c)
	return string(b)
}

func httpConfig(tlsUp, httpUp string) string {
	return fmt.Sprintf(`routes:
  - name: home
    hosts: ["misskey.example.com", "*.misskey.example.com"]
    upstream: %q
    http_upstream: %q
  - name: blog
    hosts: ["blog.example.org"]
    upstream: %q
    http_upstream: %q
`, tlsUp, httpUp, tlsUp, httpUp)
}

func TestHTTPRelayByHost(t *testing.T) {
	challenge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/streaming" {
			upgradeEcho(w)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			fmt.Fprintf(w, "%s.key-authorization", strings.TrimPrefix(r.URL.Path, "/.well-known/acme-challenge/"))
			return
		}
		body, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "host=%s path=%s body=%q", r.Host, r.URL.Path, body)
	})
	o := startOrigin(t, nil, false, challenge)
	r := startRelay(t, httpConfig("[::1]:1", o.addr()))

	t.Run("HTTP-01 challenge", func(t *testing.T) {
		got := rawHTTP(t, r.http, "GET /.well-known/acme-challenge/tok123 HTTP/1.1\r\nHost: misskey.example.com\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.HasSuffix(got, "tok123.key-authorization") {
			t.Errorf("got %q", got)
		}
	})
	t.Run("host with port and odd case", func(t *testing.T) {
		got := rawHTTP(t, r.http, "GET /x HTTP/1.1\r\nHost: A.MISSKEY.example.com:80\r\nConnection: close\r\n\r\n")
		if !strings.Contains(got, "path=/x") {
			t.Errorf("got %q", got)
		}
	})
	t.Run("keep-alive and chunked bodies on one connection", func(t *testing.T) {
		req := "POST /a HTTP/1.1\r\nHost: misskey.example.com\r\nContent-Length: 5\r\n\r\nhello" +
			"POST /b HTTP/1.1\r\nHost: misskey.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n" +
			"GET /c HTTP/1.1\r\nHost: media.misskey.example.com\r\nConnection: close\r\n\r\n"
		got := rawHTTP(t, r.http, req)
		for _, want := range []string{`path=/a body="hello"`, `path=/b body="abcde"`, "path=/c"} {
			if !strings.Contains(got, want) {
				t.Errorf("missing %q in %q", want, got)
			}
		}
	})
	t.Run("a request for another route ends the connection", func(t *testing.T) {
		before := o.accepted.Load()
		req := "GET /first HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n" +
			"GET /second HTTP/1.1\r\nHost: blog.example.org\r\n\r\n"
		got := rawHTTP(t, r.http, req)
		if !strings.Contains(got, "path=/first") || strings.Contains(got, "/second") {
			t.Errorf("got %q", got)
		}
		if n := o.accepted.Load() - before; n != 1 {
			t.Errorf("origin accepted %d connections, want 1", n)
		}
	})
	t.Run("unknown host gets 421 and nothing is dialed", func(t *testing.T) {
		before := o.accepted.Load()
		got := rawHTTP(t, r.http, "GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
		if !strings.HasPrefix(got, "HTTP/1.1 421 Misdirected Request\r\n") {
			t.Errorf("got %q", got)
		}
		if o.accepted.Load() != before {
			t.Error("origin dialed for an unknown host")
		}
	})
	t.Run("websocket upgrade becomes an opaque stream", func(t *testing.T) {
		c, err := net.Dial("tcp4", r.http)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET /streaming HTTP/1.1\r\nHost: misskey.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != 101 {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		// Bytes that are not HTTP now pass both ways untouched.
		frame := "\x81\x05hello not HTTP\r\n\r\n"
		io.WriteString(c, frame)
		echo := make([]byte, len(frame))
		if _, err := io.ReadFull(br, echo); err != nil || string(echo) != frame {
			t.Errorf("echo = %q, %v", echo, err)
		}
	})
}

func TestHTTPBadRequests(t *testing.T) {
	o := startOrigin(t, nil, false, nil)
	r := startRelay(t, httpConfig("[::1]:1", o.addr()))
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"no host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: misskey.example.com\r\nHost: blog.example.org\r\n\r\n", 400},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: misskey.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"two CL", "POST / HTTP/1.1\r\nHost: misskey.example.com\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400},
		{"obfuscated TE", "POST / HTTP/1.1\r\nHost: misskey.example.com\r\nTransfer-Encoding: xchunked\r\n\r\n", 501},
		{"bare LF", "GET / HTTP/1.1\nHost: misskey.example.com\n\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: misskey.example.com\r\nX: a\r\n b\r\n\r\n", 400},
		{"absolute form", "GET http://misskey.example.com/ HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n", 400},
		{"CONNECT", "CONNECT misskey.example.com:443 HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n", 400},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505},
		{"long URL", "GET /" + strings.Repeat("a", MaxTargetBytes) + " HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n", 414},
		{"huge head", "GET / HTTP/1.1\r\nHost: misskey.example.com\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\r\n", 40) + "\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := o.accepted.Load()
			got := rawHTTP(t, r.http, tc.req)
			if want := fmt.Sprintf("HTTP/1.1 %d ", tc.status); !strings.HasPrefix(got, want) {
				t.Errorf("got %q, want %s", firstLine(got), want)
			}
			if o.accepted.Load() != before {
				t.Error("a refused request reached the origin")
			}
		})
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\r\n")
	return l
}

func TestReadHeadAcceptsWhatItForwards(t *testing.T) {
	req := "\r\nPOST /p?q=1 HTTP/1.1\r\nHost: h.example\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nhi"
	br := bufio.NewReader(strings.NewReader(req))
	h, err := readHead(br)
	if err != nil {
		t.Fatal(err)
	}
	if string(h.raw) != req[:len(req)-2] || h.method != "POST" || h.target != "/p?q=1" || h.host != "h.example" || h.contentLength != 2 || h.closeAfter {
		t.Errorf("parsed %+v", h)
	}
}

// upgradeEcho answers 101 Switching Protocols and echoes what follows.
func upgradeEcho(w http.ResponseWriter) {
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
	io.Copy(c, brw)
}
