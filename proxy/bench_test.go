package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
)

// Benchmarks of the passthrough relay against a direct connection to the
// same origin, on loopback. Compare the pairs in one run:
//
//	go test -run '^$' -bench 'Passthrough|Direct' -count 6 ./proxy | benchstat -
//
// The origin here is a raw TCP sink/echo, so the numbers measure the
// relay, not TLS.

func startSink(b *testing.B) string {
	ln := serveLoopback6(b, func(c net.Conn) {
		defer c.Close()
		// Echo the first 4 KiB (the hello and a ping), then sink.
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 && n < 4096 {
				c.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	})
	return ln.Addr().String()
}

func benchTargets(b *testing.B) (direct, relayed string, hello []byte) {
	sink := startSink(b)
	r := startRelay(b, passthroughConfig(sink, ""))
	return sink, r.https, clientHello(b, "misskey.example.com")
}

// benchConnect opens a connection, sends the hello, reads its echo, closes.
func benchConnect(b *testing.B, addr string, hello []byte) {
	buf := make([]byte, len(hello))
	b.ReportAllocs()
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(hello)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

func BenchmarkConnectDirect(b *testing.B) {
	direct, _, hello := benchTargets(b)
	benchConnect(b, direct, hello)
}

func BenchmarkConnectPassthrough(b *testing.B) {
	_, relayed, hello := benchTargets(b)
	benchConnect(b, relayed, hello)
}

// benchThroughput streams 64 MiB per op one way through addr.
func benchThroughput(b *testing.B, addr string, hello []byte) {
	const total = 64 << 20
	chunk := make([]byte, 256<<10)
	b.SetBytes(total)
	for b.Loop() {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Write(hello)
		io.ReadFull(c, make([]byte, len(hello)))
		for sent := 0; sent < total; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
		c.Close()
	}
}

func BenchmarkThroughputDirect(b *testing.B) {
	direct, _, hello := benchTargets(b)
	benchThroughput(b, direct, hello)
}

func BenchmarkThroughputPassthrough(b *testing.B) {
	_, relayed, hello := benchTargets(b)
	benchThroughput(b, relayed, hello)
}

func BenchmarkPeekHello(b *testing.B) {
	hello := clientHello(b, "misskey.example.com")
	b.ReportAllocs()
	b.SetBytes(int64(len(hello)))
	for b.Loop() {
		if _, _, err := PeekHello(&pieceReader{data: hello, n: len(hello)}); err != nil {
			b.Fatal(err)
		}
	}
}

// lookupCases are the route lookups the benchmark and the allocation
// test share: the hit kinds a busy relay sees and a miss.
var lookupCases = []struct {
	name, host string
	hit        bool
}{
	{"exact", "misskey.example.com", true},
	{"exact_upper", "MissKey.Example.COM.", true},
	{"wildcard", "a.misskey.example.com", true},
	{"wildcard_upper", "A.misskey.example.com", true},
	{"miss", "a.b.misskey.example.com", false},
}

// BenchmarkPeekHelloPooled peeks as the relay does: with a peeker from
// the Server's pool, returned after each connection's hello is sent.
func BenchmarkPeekHelloPooled(b *testing.B) {
	var s Server
	hello := clientHello(b, "misskey.example.com")
	r := &pieceReader{}
	b.ReportAllocs()
	b.SetBytes(int64(len(hello)))
	for b.Loop() {
		*r = pieceReader{data: hello, n: len(hello)}
		p := s.getPeeker()
		if _, _, err := p.peek(r); err != nil {
			b.Fatal(err)
		}
		s.putPeeker(p)
	}
}

func BenchmarkLookup(b *testing.B) {
	r := startRelay(b, passthroughConfig("[::1]:443", ""))
	t := r.srv.table.Load()
	for _, tc := range lookupCases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if (t.lookup(tc.host) != nil) != tc.hit {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}

// proxyHeaderConns returns both ends of a loopback TCP connection over
// network ("tcp4" or "tcp6"): the relay's side (accepted) first.
func proxyHeaderConns(tb testing.TB, network string) (server, client net.Conn) {
	tb.Helper()
	addr := map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network]
	ln, err := net.Listen(network, addr)
	if err != nil {
		tb.Skip(err)
	}
	defer ln.Close()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { server.Close() })
	return server, client
}

func BenchmarkAppendProxyHeader(b *testing.B) {
	for _, network := range []string{"tcp4", "tcp6"} {
		c, _ := proxyHeaderConns(b, network)
		for _, v := range []int{1, 2} {
			b.Run(fmt.Sprintf("v%d/%s", v, network), func(b *testing.B) {
				buf := make([]byte, 0, 128)
				b.ReportAllocs()
				for b.Loop() {
					buf = appendProxyHeader(buf[:0], v, c)
				}
			})
		}
	}
}

// Terminated routes: keep-alive requests and new TLS connections through
// the relay's own TLS and reverse proxy, against the same requests made
// directly to a TLS origin.
//
//	go test -run '^$' -bench 'Terminated|DirectTLS' -count 6 ./proxy | benchstat -

func benchTermSetup(b *testing.B) (relay *relayUnderTest, roots *x509.CertPool, direct string, directRoots *x509.CertPool) {
	relayCert, relayRoots := testCert(b, "blog.example.org")
	app := startOrigin(b, nil, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	relay = startRelayWith(b, fmt.Sprintf("routes:\n  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://%s\"\n    access_log: false\n", app.addr()),
		func(s *Server) { s.Certs = &staticCerts{cert: relayCert} })
	tlsOrigin := startOrigin(b, &relayCert, false, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	return relay, relayRoots, tlsOrigin.addr(), relayRoots
}

func benchClient(addr string, roots *x509.CertPool, keepAlive bool) *http.Client {
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: "blog.example.org", ClientSessionCache: nil},
		DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		},
	}}
}

func benchGet(b *testing.B, c *http.Client) {
	b.ReportAllocs()
	for b.Loop() {
		resp, err := c.Get("https://blog.example.org/")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

func BenchmarkTerminatedKeepAlive(b *testing.B) {
	r, roots, _, _ := benchTermSetup(b)
	benchGet(b, benchClient(r.https, roots, true))
}

func BenchmarkDirectTLSKeepAlive(b *testing.B) {
	_, _, direct, roots := benchTermSetup(b)
	benchGet(b, benchClient(direct, roots, true))
}

func BenchmarkTerminatedNewConn(b *testing.B) {
	r, roots, _, _ := benchTermSetup(b)
	benchGet(b, benchClient(r.https, roots, false))
}

func BenchmarkDirectTLSNewConn(b *testing.B) {
	_, _, direct, roots := benchTermSetup(b)
	benchGet(b, benchClient(direct, roots, false))
}
