package proxy

import (
	"io"
	"net"
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
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
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
			}()
		}
	}()
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

func BenchmarkLookup(b *testing.B) {
	r := startRelay(b, passthroughConfig("[::1]:443", ""))
	t := r.srv.table.Load()
	b.ReportAllocs()
	for b.Loop() {
		if t.lookup("A.misskey.example.com") == nil {
			b.Fatal("no route")
		}
	}
}
