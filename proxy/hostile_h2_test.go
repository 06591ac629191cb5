package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Conn is a raw HTTP/2 client connection to a terminated route: frames
// written exactly as a test wants them, with no client-side safety.
type h2Conn struct {
	tc   *tls.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
}

func dialH2(t *testing.T, e *hostileEnv) *h2Conn {
	t.Helper()
	tc, err := dialTLS(t, e.relay.https, &tls.Config{RootCAs: e.relayRoots, ServerName: "blog.example.org", NextProtos: []string{"h2"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	c := &h2Conn{tc: tc, bw: bufio.NewWriterSize(tc, 64<<10)}
	c.fr = http2.NewFramer(c.bw, tc)
	c.enc = hpack.NewEncoder(&c.hbuf)
	io.WriteString(c.bw, http2.ClientPreface)
	c.fr.WriteSettings()
	c.bw.Flush()
	return c
}

// block hpack-encodes a GET request for path plus extra fields.
func (c *h2Conn) block(path string, extra ...hpack.HeaderField) []byte {
	c.hbuf.Reset()
	for _, f := range append([]hpack.HeaderField{
		{Name: ":method", Value: "GET"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: "blog.example.org"}, {Name: ":path", Value: path},
	}, extra...) {
		c.enc.WriteField(f)
	}
	return bytes.Clone(c.hbuf.Bytes())
}

// h2Result is what the server sent back on a connection until it ended.
type h2Result struct {
	mu      sync.Mutex
	frames  map[http2.FrameType]int
	status  map[uint32]string // :status of each stream's response
	goAway  *http2.GoAwayFrame
	debug   string
	err     error // how reading ended
	endedAt time.Time
	done    chan struct{}
}

func (r *h2Result) closed() bool {
	return r.err != nil && !errors.Is(r.err, os.ErrDeadlineExceeded)
}

func (r *h2Result) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	b.WriteString("frames:")
	for typ, n := range r.frames {
		b.WriteString(" " + typ.String() + "=" + strconv.Itoa(n))
	}
	if r.goAway != nil {
		b.WriteString("; GOAWAY " + r.goAway.ErrCode.String() + " " + strings.TrimSpace(r.debug))
	}
	if r.err != nil {
		b.WriteString("; ended: " + r.err.Error())
	}
	return b.String()
}

// statusOf waits up to d for the response status of stream id.
func (r *h2Result) statusOf(id uint32, d time.Duration) string {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		st := r.status[id]
		r.mu.Unlock()
		if st != "" {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
	return ""
}

// read reads frames in the background until the connection ends or the
// deadline passes; the result is complete once done is closed.
func (c *h2Conn) read(deadline time.Time) *h2Result {
	res := &h2Result{frames: map[http2.FrameType]int{}, status: map[uint32]string{}, done: make(chan struct{})}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.tc.SetReadDeadline(deadline)
	go func() {
		defer close(res.done)
		for {
			f, err := c.fr.ReadFrame()
			res.mu.Lock()
			if err != nil {
				var se http2.StreamError
				if !errors.As(err, &se) {
					res.err, res.endedAt = err, time.Now()
					res.mu.Unlock()
					return
				}
				res.mu.Unlock()
				continue
			}
			res.frames[f.Header().Type]++
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				res.goAway, res.debug = f, string(f.DebugData())
			case *http2.MetaHeadersFrame:
				res.status[f.StreamID] = f.PseudoValue("status")
			}
			res.mu.Unlock()
		}
	}()
	return res
}

// usage is the process's CPU time, heap and goroutines at one moment.
type usage struct {
	cpu        time.Duration
	heap       uint64
	goroutines int
}

func measure() usage {
	runtime.GC()
	runtime.GC() // and what sync.Pools kept from the first
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{
		cpu:        time.Duration(ru.Utime.Nano() + ru.Stime.Nano()),
		heap:       ms.HeapInuse,
		goroutines: runtime.NumGoroutine(),
	}
}

// heapPeak samples the heap in use every 10ms until stopped.
func heapPeak() (stop func() uint64) {
	var peak uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	})
	return func() uint64 { close(done); wg.Wait(); return peak }
}

// How a flood must end.
const (
	endGoAway = "goaway" // GOAWAY with the case's code, then close
	endClosed = "closed" // the connection is closed
	endServes = "serves" // still open, and a normal request on it gets 200
	// GOAWAY with the case's code and close, or serves
	endCalmOrServes = "calm-or-serves"
)

// TestHTTP2Floods runs the HTTP/2 floods known to exhaust servers against
// a terminated route: rapid reset (CVE-2023-44487), CONTINUATION floods
// (CVE-2023-45288), and PING and SETTINGS floods whose answers the client
// never reads (CVE-2019-9512, -9515). Each ends as Go's HTTP/2 server
// ends it (see the cases), within bounds: the process's CPU time and heap
// stay flat, what the flood started ends (goroutines settle), the origin
// never has more than MaxConcurrentStreams requests from it at once, and
// a healthy WebSocket and passthrough connection on the same relay do
// not notice. The figures are logged: go test -v -run TestHTTP2Floods.
func TestHTTP2Floods(t *testing.T) {
	e := startHostileEnv(t, "", nil, nil)
	healthy := e.healthy(t)
	ws := e.openWS(t)
	for _, tc := range []struct {
		name string
		// flood writes to c and returns how many frames it sent and the
		// next free stream id.
		flood func(c *h2Conn) (sent int, next uint32)
		end   string
		code  http2.ErrCode
		cpu   time.Duration // bound on the process's CPU time, client included
	}{
		{
			// Go's server runs at most MaxConcurrentStreams handlers and
			// queues 4x that; past it, GOAWAY ENHANCE_YOUR_CALM. A reset
			// stream's handler ends at once (its context is canceled, and
			// so is its origin request), so whether the queue overflows
			// depends on scheduling: either the client is told to calm
			// down, or every reset is absorbed and the connection stays
			// usable. The concurrency is what is bounded, either way.
			name: "rapid reset: 10,000 HEADERS+RST_STREAM pairs",
			flood: func(c *h2Conn) (int, uint32) {
				blk := c.block("/rapid-reset")
				id := uint32(1)
				n := 0
				for ; n < 10000; n++ {
					c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: blk, EndStream: true, EndHeaders: true})
					c.fr.WriteRSTStream(id, http2.ErrCodeCancel)
					id += 2
					if n%100 == 99 && c.bw.Flush() != nil {
						break
					}
				}
				c.bw.Flush()
				return 2 * n, id
			},
			end:  endCalmOrServes,
			code: http2.ErrCodeEnhanceYourCalm,
			cpu:  20 * time.Second,
		},
		{
			// 64 KiB of header fields are allowed; a CONTINUATION beyond
			// them ends the connection.
			name: "CONTINUATION flood: 8 KiB header fields, never END_HEADERS",
			flood: func(c *h2Conn) (int, uint32) {
				c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/cont"), EndStream: true})
				field := hpack.HeaderField{Name: "x-flood", Value: strings.Repeat("a", 8<<10), Sensitive: true}
				n := 1
				for ; n < 10000; n++ {
					c.hbuf.Reset()
					c.enc.WriteField(field)
					c.fr.WriteContinuation(1, false, c.hbuf.Bytes())
					if c.bw.Flush() != nil {
						break
					}
				}
				return n, 3
			},
			end:  endGoAway,
			code: http2.ErrCodeProtocol,
			cpu:  10 * time.Second,
		},
		{
			// Empty fragments add nothing to the header list, so they never
			// reach its limit: Go's server reads them at line rate for as
			// long as they come (9 bytes each), holding nothing.
			name: "CONTINUATION flood: 1,000,000 empty fragments",
			flood: func(c *h2Conn) (int, uint32) {
				c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block("/cont-empty"), EndStream: true})
				n := 1
				for ; n < 1_000_000; n++ {
					c.fr.WriteContinuation(1, false, nil)
					if n%1024 == 0 && c.bw.Flush() != nil {
						break
					}
				}
				c.fr.WriteContinuation(1, true, nil)
				c.bw.Flush()
				return n + 1, 3
			},
			end: endServes,
			cpu: 20 * time.Second,
		},
		{
			// More than 10,000 unsent control frames end the connection.
			name: "PING flood, answers never read",
			flood: func(c *h2Conn) (int, uint32) {
				return floodUnread(c, 3_000_000, func(i int) { c.fr.WritePing(false, [8]byte{byte(i), byte(i >> 8)}) }), 1
			},
			end: endClosed,
			cpu: 30 * time.Second,
		},
		{
			// Go's server owes one SETTINGS ACK however many SETTINGS
			// arrive before it can send it: nothing queues, so it keeps
			// reading at line rate and the connection stays usable.
			name: "SETTINGS flood, ACKs never read",
			flood: func(c *h2Conn) (int, uint32) {
				return floodUnread(c, 300_000, func(i int) {
					c.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(65535 + i%2)})
				}), 1
			},
			end: endServes,
			cpu: 30 * time.Second,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			originBefore := e.term.n.Load()
			e.term.peak.Store(0)
			c := dialH2(t, e)
			e.relay.logs.TakeAll()
			closeIdleOrigins(e.relay.srv)
			before := measure()
			stopPeak := heapPeak()
			start := time.Now()
			readAsWell := tc.end != endClosed // the PING flood must not read
			var res *h2Result
			if readAsWell {
				res = c.read(time.Now().Add(30 * time.Second))
			}
			c.tc.SetWriteDeadline(time.Now().Add(20 * time.Second))
			sent, next := tc.flood(c)
			floodTook := time.Since(start)
			if !readAsWell {
				res = c.read(time.Now().Add(10 * time.Second))
			}
			probe := ""
			if tc.end == endServes || tc.end == endCalmOrServes {
				c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: next, BlockFragment: c.block("/probe"), EndStream: true, EndHeaders: true})
				c.bw.Flush()
				probe = res.statusOf(next, 10*time.Second)
				c.tc.Close()
			}
			<-res.done
			c.tc.Close()
			peak := stopPeak()
			e.relay.logs.TakeAll()
			e.term.forget()
			closeIdleOrigins(e.relay.srv)
			settled := waitSettled(before.goroutines, 5*time.Second)
			after := measure()
			t.Logf("sent %d frames in %v; then %v after %v; CPU %v; heap in use %d KiB before, peak %+d KiB, after GC %+d KiB; goroutines %d -> %d; origin requests %d (at most %d at once)",
				sent, floodTook.Round(time.Millisecond), res, res.endedAt.Sub(start).Round(time.Millisecond),
				(after.cpu - before.cpu).Round(time.Millisecond), before.heap>>10,
				(int64(peak)-int64(before.heap))>>10, (int64(after.heap)-int64(before.heap))>>10,
				before.goroutines, after.goroutines, e.term.n.Load()-originBefore, e.term.peak.Load())
			switch tc.end {
			case endGoAway:
				if res.goAway == nil || res.goAway.ErrCode != tc.code || !res.closed() {
					t.Errorf("want GOAWAY %v and close; got %v", tc.code, res)
				}
			case endClosed:
				if !res.closed() {
					t.Errorf("want the connection closed; got %v", res)
				}
			case endCalmOrServes:
				if res.goAway != nil && (res.goAway.ErrCode != tc.code || !res.closed()) || res.goAway == nil && probe != "200" {
					t.Errorf("want GOAWAY %v and close, or the probe served; got %q, %v", tc.code, probe, res)
				}
			case endServes:
				if probe != "200" || res.goAway != nil {
					t.Errorf("a request after the flood got status %q; %v", probe, res)
				}
			}
			if d := after.cpu - before.cpu; d > tc.cpu {
				t.Errorf("flood cost %v of CPU, bound %v", d, tc.cpu)
			}
			if g := int64(peak) - int64(before.heap); g > 128<<20 {
				t.Errorf("heap in use rose by %d MiB during the flood", g>>20)
			}
			if g := int64(after.heap) - int64(before.heap); g > 16<<20 {
				t.Errorf("heap in use stayed %d MiB higher after the flood", g>>20)
			}
			if p := e.term.peak.Load(); p > TermMaxConcurrentStreams {
				t.Errorf("origin served %d requests at once, over MaxConcurrentStreams", p)
			}
			if !settled {
				t.Errorf("goroutines did not settle: %d before, %d after", before.goroutines, after.goroutines)
			}
			healthy.check(t)
			ws.check(t)
		})
	}
}

// floodUnread writes up to n frames without reading anything, until the
// server closes the connection or stops reading (the write deadline).
func floodUnread(c *h2Conn, n int, write func(i int)) int {
	for i := range n {
		write(i)
		if i%512 == 511 && c.bw.Flush() != nil {
			return i + 1
		}
	}
	c.bw.Flush()
	return n
}

// waitSettled waits until no more goroutines run than n (plus a few the
// runtime and the test's own connections account for).
func waitSettled(n int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if runtime.NumGoroutine() <= n+2 {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// closeIdleOrigins lets go of pooled origin connections, whose goroutines
// would otherwise count as left behind.
func closeIdleOrigins(s *Server) {
	for _, r := range s.table.Load().routes() {
		if r.term != nil {
			r.term.transport.CloseIdleConnections()
		}
	}
}
