package e2e

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The soak's hostile traffic, from its own source address. Each kind has
// a documented outcome (README, "What happens to each connection"):
// refused or cut, never relayed, and never in the way of the legitimate
// traffic running at the same time.

// Limits the outcomes are held to, with slack for a loaded 2-core machine.
const (
	helloCutBy     = 3*time.Second + 4*time.Second  // timeouts.hello is 2s or 3s
	termHeadCutBy  = 10*time.Second + 5*time.Second // proxy.TermHeaderTimeout
	quickAnswerBy  = 5 * time.Second
	slowWriteEvery = 500 * time.Millisecond
)

// hostile runs one round: the quick kinds in turn, and each slow kind in
// the background while fewer than cap(hostileSem) are running.
func (s *soak) hostile(wg *sync.WaitGroup) {
	s.garbageTLS()
	s.unknownSNI()
	s.garbageHTTP()
	s.halfHelloAbort()
	for _, fn := range []func(){s.halfHelloHold, s.slowloris80, s.slowlorisTLS} {
		select {
		case s.hostileSem <- struct{}{}:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-s.hostileSem }()
				fn()
			}()
		default:
		}
	}
	time.Sleep(20 * time.Millisecond)
}

func (s *soak) dialHostile(addr string) (net.Conn, error) {
	return dialFrom(srcHostile, addr)
}

func dialFrom(src, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return d.Dial("tcp4", addr)
}

// flood opens n connections at once from the flood source, far above the
// relay's per-source limits (100 new connections a second after a burst
// of 400, 256 open), waits a moment and drops them all: the relay refuses
// the excess before reading a byte (relay46_connections_refused_total),
// and no other source may notice.
func (s *soak) flood(n int) {
	const kind = "connection flood"
	// Samples of the relay's descriptors wait for a burst to end, so all
	// of them are taken under the same steady load.
	s.floodMu.Lock()
	defer s.floodMu.Unlock()
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := dialFrom(srcFlood, s.httpsAddr)
		if err != nil {
			// Refused so fast that the reset beat connect(2) home.
			s.stats.addHostile(kind, "refused", isCut(err))
			continue
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond)
	for _, c := range conns {
		_, cut, _ := readUntilCut(c, time.Millisecond)
		c.Close()
		if cut {
			s.stats.addHostile(kind, "refused", true)
		} else {
			s.stats.addHostile(kind, "accepted", true)
		}
	}
}

// garbageTLS: random non-TLS bytes on :443 are closed without an answer.
func (s *soak) garbageTLS() {
	const kind = "garbage on :443"
	c, err := s.dialHostile(s.httpsAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	b := randomBytes(600)
	b[0] = 0x47 // not a TLS handshake record
	c.Write(b)
	got, cut, _ := readUntilCut(c, quickAnswerBy)
	switch {
	case cut && len(got) == 0:
		s.stats.addHostile(kind, "closed", true)
	case cut && got[0] == 0x15:
		s.stats.addHostile(kind, "alert+closed", true)
	case cut:
		s.stats.addHostile(kind, fmt.Sprintf("answered %q", got[:min(len(got), 20)]), false)
	default:
		s.stats.addHostile(kind, "still open", false)
	}
}

// unknownSNI: a ClientHello for a name no route has gets the alert
// unrecognized_name.
func (s *soak) unknownSNI() {
	const kind = "unknown SNI"
	c, err := s.dialHostile(s.httpsAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(quickAnswerBy))
	tc := tls.Client(c, &tls.Config{ServerName: "nope.soak.test", RootCAs: s.ca.pool()})
	err = tc.Handshake()
	switch {
	case err == nil:
		s.stats.addHostile(kind, "handshake succeeded", false)
	case strings.Contains(err.Error(), "unrecognized name"):
		s.stats.addHostile(kind, "alert unrecognized_name", true)
	case isCut(err):
		s.stats.addHostile(kind, "closed", true) // refused by a limit before reading
	default:
		s.stats.addHostile(kind, errKind(err), false)
	}
}

// garbageHTTP: a request head no HTTP parser accepts gets 400 or a close.
func (s *soak) garbageHTTP() {
	const kind = "garbage on :80"
	c, err := s.dialHostile(s.httpAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	c.Write([]byte("\x00\x01\x02 \xff garbage\r\nHost pass.soak.test\r\n\r\n"))
	got, cut, _ := readUntilCut(c, quickAnswerBy)
	switch {
	case bytes.HasPrefix(got, []byte("HTTP/1.1 400")):
		s.stats.addHostile(kind, "400", true)
	case cut && len(got) == 0:
		s.stats.addHostile(kind, "closed", true)
	case len(got) > 0:
		s.stats.addHostile(kind, fmt.Sprintf("answered %q", firstLine(got)), false)
	default:
		s.stats.addHostile(kind, "still open", false)
	}
}

// halfHelloAbort: half a ClientHello, then the client leaves.
func (s *soak) halfHelloAbort() {
	const kind = "half ClientHello, then gone"
	c, err := s.dialHostile(s.httpsAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	c.Write([]byte(s.hello[:len(s.hello)/2]))
	c.Close()
	s.stats.addHostile(kind, "sent", true)
}

// halfHelloHold: half a ClientHello, then silence: cut at timeouts.hello.
func (s *soak) halfHelloHold() {
	const kind = "half ClientHello, held open"
	c, err := s.dialHostile(s.httpsAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	start := time.Now()
	c.Write([]byte(s.hello[:len(s.hello)/2]))
	_, cut, _ := readUntilCut(c, 20*time.Second)
	s.slowOutcome(kind, cut, time.Since(start), helloCutBy)
}

// slowloris80: a request head on :80 that never ends, one header line
// every 500ms: cut at timeouts.hello.
func (s *soak) slowloris80() {
	const kind = "slowloris on :80"
	c, err := s.dialHostile(s.httpAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	start := time.Now()
	cut := dribble(c, "GET /echo HTTP/1.1\r\nHost: pass.soak.test\r\n", 40)
	s.slowOutcome(kind, cut, time.Since(start), helloCutBy)
}

// slowlorisTLS: the same on the terminated host, after a complete TLS
// handshake: cut by the terminating server's request-head timeout.
func (s *soak) slowlorisTLS() {
	const kind = "slowloris, terminated TLS"
	c, err := s.dialHostile(s.httpsAddr)
	if err != nil {
		s.dialFailed(kind, err)
		return
	}
	defer c.Close()
	start := time.Now()
	tc := tls.Client(c, &tls.Config{ServerName: "term.soak.test", RootCAs: s.ca.pool(), NextProtos: []string{"http/1.1"}})
	tc.SetDeadline(time.Now().Add(quickAnswerBy))
	if err := tc.Handshake(); err != nil {
		s.stats.addHostile(kind, "handshake: "+errKind(err), isCut(err))
		return
	}
	tc.SetDeadline(time.Time{})
	cut := dribble(tc, "GET /echo HTTP/1.1\r\nHost: term.soak.test\r\n", 60)
	s.slowOutcome(kind, cut, time.Since(start), termHeadCutBy)
}

func (s *soak) slowOutcome(kind string, cut bool, took, limit time.Duration) {
	switch {
	case !cut:
		s.stats.addHostile(kind, "never cut", false)
	case took > limit:
		s.stats.addHostile(kind, fmt.Sprintf("cut late (%s)", took.Round(time.Second)), false)
	default:
		s.stats.addHostile(kind, fmt.Sprintf("cut ≤%ds", int(took.Seconds())+1), true)
	}
}

// dribble writes head, then one header line every slowWriteEvery, up to
// lines lines, and reports whether the peer cut the connection first.
func dribble(c net.Conn, head string, lines int) bool {
	if _, err := c.Write([]byte(head)); err != nil {
		return true
	}
	for i := range lines {
		_, cut, _ := readUntilCut(c, slowWriteEvery)
		if cut {
			return true
		}
		if _, err := fmt.Fprintf(c, "X-Slow-%d: y\r\n", i); err != nil {
			return true
		}
	}
	_, cut, _ := readUntilCut(c, 2*time.Second)
	return cut
}

// readUntilCut reads until the peer closes or resets (cut) or wait
// passes, and returns what it read.
func readUntilCut(c net.Conn, wait time.Duration) (got []byte, cut bool, err error) {
	c.SetReadDeadline(time.Now().Add(wait))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return got, isCut(err), err
		}
	}
}

// isCut says whether err means the peer closed or reset the connection
// (rather than a timeout of our own).
func isCut(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		strings.Contains(err.Error(), "reset by peer") || strings.Contains(err.Error(), "broken pipe")
}

func errKind(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return "timeout"
	}
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 {
		msg = msg[i+2:]
	}
	return msg
}

func firstLine(b []byte) string {
	l, _, _ := bytes.Cut(b, []byte("\r\n"))
	return string(l)
}

// clientHello returns a complete, real ClientHello record for name, as
// crypto/tls sends it.
func clientHello(t *testing.T, name string) string {
	c1, c2 := net.Pipe()
	defer c2.Close()
	go func() {
		tls.Client(c1, &tls.Config{ServerName: name}).Handshake()
		c1.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(c2, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(hdr[3])<<8|int(hdr[4]))
	if _, err := io.ReadFull(c2, body); err != nil {
		t.Fatal(err)
	}
	return string(hdr) + string(body)
}

// dialFailed records a hostile connection that did not get through the
// dial. A reset there is the relay's flood limits turning the source away
// (closed with SO_LINGER 0 right after accept): documented, expected. Any
// other dial failure is not.
func (s *soak) dialFailed(kind string, err error) {
	if errors.Is(err, syscall.ECONNRESET) {
		s.stats.addHostile(kind, "refused by a limit at accept", true)
		return
	}
	s.stats.addHostile(kind, "dial failed: "+errKind(err), false)
}
