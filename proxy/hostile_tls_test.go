package proxy

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay46/relay46/metrics"
)

// The hostile-input suite: every file hostile_*_test.go sends one kind of
// abuse at a running relay and checks the exact outcome, that nothing is
// dialed for what is refused, and that an unrelated healthy connection
// on the same relay does not notice.

// withMetrics gives the relay under test a fresh registry to read counts from.
func withMetrics(reg *prometheus.Registry) func(*Server) {
	return func(s *Server) { s.Metrics = metrics.New(reg, metrics.BuildInfo{Version: "test"}) }
}

// counter reads a counter series as a delta from a starting point.
type counter struct {
	t      *testing.T
	reg    *prometheus.Registry
	name   string
	labels map[string]string
	start  float64
}

func newCounter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) *counter {
	c := &counter{t: t, reg: reg, name: name, labels: labels}
	c.start = max(metricValue(t, reg, name, labels), 0)
	return c
}

func (c *counter) delta() float64 {
	return max(metricValue(c.t, c.reg, c.name, c.labels), 0) - c.start
}

// ---- crafting ClientHellos ----

// tlsExt is one raw ClientHello extension.
type tlsExt struct {
	typ  uint16
	data []byte
}

const extServerName = 0

// splitHello takes a ClientHello record as a client sends it and returns
// the handshake body up to its extensions (version, random, session id,
// cipher suites, compression methods) and the extensions in order.
func splitHello(t testing.TB, record []byte) (head []byte, exts []tlsExt) {
	t.Helper()
	msg := handshakeMessage(t, record)
	body := msg[4:]
	p := 2 + 32
	p += 1 + int(body[p])                                 // session id
	p += 2 + int(binary.BigEndian.Uint16(body[p:]))       // cipher suites
	p += 1 + int(body[p])                                 // compression methods
	end := p + 2 + int(binary.BigEndian.Uint16(body[p:])) // extensions
	if end != len(body) {
		t.Fatalf("unexpected ClientHello layout: extensions end at %d of %d", end, len(body))
	}
	head = body[:p]
	for q := p + 2; q < end; {
		typ := binary.BigEndian.Uint16(body[q:])
		n := int(binary.BigEndian.Uint16(body[q+2:]))
		exts = append(exts, tlsExt{typ, body[q+4 : q+4+n]})
		q += 4 + n
	}
	return head, exts
}

// handshakeMessage returns the handshake message carried by a single
// handshake record.
func handshakeMessage(t testing.TB, record []byte) []byte {
	t.Helper()
	if len(record) < 9 || record[0] != 0x16 || int(binary.BigEndian.Uint16(record[3:])) != len(record)-5 {
		t.Fatalf("not a single handshake record: % x", record[:min(len(record), 9)])
	}
	return record[5:]
}

// helloMessage builds a ClientHello handshake message from head and exts.
func helloMessage(head []byte, exts []tlsExt) []byte {
	var extBlock []byte
	for _, e := range exts {
		extBlock = binary.BigEndian.AppendUint16(extBlock, e.typ)
		extBlock = binary.BigEndian.AppendUint16(extBlock, uint16(len(e.data)))
		extBlock = append(extBlock, e.data...)
	}
	body := append(append([]byte(nil), head...), byte(len(extBlock)>>8), byte(len(extBlock)))
	body = append(body, extBlock...)
	return append([]byte{0x01, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
}

// records frames a handshake message into TLS handshake records whose
// payloads have the given sizes; the last record takes what is left.
func records(msg []byte, sizes ...int) []byte {
	var out []byte
	for i := 0; len(msg) > 0; i++ {
		n := len(msg)
		if i < len(sizes) {
			n = min(sizes[i], len(msg))
		}
		out = append(out, 0x16, 0x03, 0x01, byte(n>>8), byte(n))
		out = append(out, msg[:n]...)
		msg = msg[n:]
	}
	return out
}

// sniData is the body of a server_name extension naming names (type 0).
func sniData(names ...string) []byte {
	var list []byte
	for _, n := range names {
		list = append(list, 0)
		list = binary.BigEndian.AppendUint16(list, uint16(len(n)))
		list = append(list, n...)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(list))), list...)
}

// helloWithSNI rewrites a real ClientHello's server_name extension: data
// nil drops it, extra extensions are appended after it.
func helloWithSNI(t testing.TB, data []byte, extra ...tlsExt) []byte {
	t.Helper()
	head, exts := splitHello(t, clientHello(t, "misskey.example.com"))
	var out []tlsExt
	for _, e := range exts {
		if e.typ == extServerName {
			if data != nil {
				out = append(out, tlsExt{extServerName, data})
			}
			out = append(out, extra...)
			continue
		}
		out = append(out, e)
	}
	return records(helloMessage(head, out))
}

// reframeConn re-frames the first record written to it (a ClientHello)
// into several records with payloads of the given sizes, each written
// separately after a pause. Later writes pass unchanged.
type reframeConn struct {
	net.Conn
	sizes []int
	pause time.Duration
	done  bool
	sent  int // records the hello was sent in
}

func (c *reframeConn) Write(p []byte) (int, error) {
	if c.done {
		return c.Conn.Write(p)
	}
	c.done = true
	n := 5 + int(binary.BigEndian.Uint16(p[3:]))
	msg := p[5:n]
	framed := records(msg, c.sizes...)
	for len(framed) > 0 {
		k := 5 + int(binary.BigEndian.Uint16(framed[3:]))
		if _, err := c.Conn.Write(framed[:k]); err != nil {
			return 0, err
		}
		c.sent++
		framed = framed[k:]
		if len(framed) > 0 {
			time.Sleep(c.pause)
		}
	}
	if _, err := c.Conn.Write(p[n:]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// TestClientHelloAcrossRecords sends real ClientHellos re-framed into
// several TLS records (not just TCP segments): RFC 8446 §5.1 lets a
// handshake message span records, and crypto/tls reassembles them. The
// relay must route them and replay the records unchanged, so the origin's
// handshake (whose transcript covers the message, not its framing) completes.
func TestClientHelloAcrossRecords(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), ""))
	healthy := openHealthy(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"})
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
		sizes  []int
		pause  time.Duration
	}{
		{"two records in one segment", []tls.CurveID{tls.X25519}, []int{100}, 0},
		{"three records, one segment each", []tls.CurveID{tls.X25519}, []int{60, 60}, 30 * time.Millisecond},
		{"record boundary inside the handshake header", []tls.CurveID{tls.X25519}, []int{2}, 10 * time.Millisecond},
		{"post-quantum hello in three records", []tls.CurveID{tls.X25519MLKEM768}, []int{700, 700}, 10 * time.Millisecond},
		{"one-byte records", []tls.CurveID{tls.X25519}, oneBytes(400), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.logs.TakeAll()
			before := o.accepted.Load()
			var rc *reframeConn
			c, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com", CurvePreferences: tc.curves},
				func(c net.Conn) net.Conn {
					rc = &reframeConn{Conn: c, sizes: tc.sizes, pause: tc.pause}
					return rc
				})
			if err != nil {
				t.Fatalf("handshake through the relay: %v", err)
			}
			if rc.sent < 2 {
				t.Fatalf("hello went out in %d record(s)", rc.sent)
			}
			io.WriteString(c, "GET /framed HTTP/1.1\r\nHost: misskey.example.com\r\nConnection: close\r\n\r\n")
			c.SetDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(c)
			if !strings.Contains(string(b), "path=/framed") {
				t.Errorf("response = %q", b)
			}
			c.Close()
			r.waitOutcome(t, "ok")
			if n := o.accepted.Load() - before; n != 1 {
				t.Errorf("origin accepted %d connections, want 1", n)
			}
			healthy.check(t)
		})
	}
}

func oneBytes(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

// TestHostileClientHellos sends crafted ClientHellos and other first
// bytes to :443. Each is refused exactly as documented (outcome, alert or
// silence, metric), nothing is dialed, and a healthy relayed connection
// is untouched.
func TestHostileClientHellos(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	reg := prometheus.NewRegistry()
	r := startRelayWith(t, passthroughConfig(o.addr(), "timeouts: {hello: 1s}\n"), withMetrics(reg))
	healthy := openHealthy(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"})

	real := clientHello(t, "misskey.example.com")
	msg := handshakeMessage(t, real)
	head, exts := splitHello(t, real)
	withExts := func(mod func([]tlsExt) []tlsExt) []byte {
		return records(helloMessage(head, mod(append([]tlsExt(nil), exts...))))
	}
	// The crafting itself yields hellos crypto/tls accepts: the cases
	// below fail for the one thing each changes.
	for _, ok := range [][]byte{withExts(func(e []tlsExt) []tlsExt { return e }), helloWithSNI(t, sniData("MiSSkey.example.com"))} {
		if h, _, err := PeekHello(bytes.NewReader(ok)); err != nil || h.ServerName != "misskey.example.com" {
			t.Fatalf("crafted control hello: %q, %v", h.ServerName, err)
		}
	}
	// The declared handshake length says more than the record carries.
	shortRecord := append([]byte{0x16, 0x03, 0x01, 0, 0}, msg[:len(msg)-40]...)
	binary.BigEndian.PutUint16(shortRecord[3:], uint16(len(msg)-40))
	// The handshake length says less than the ClientHello's own fields.
	shrunk := append([]byte(nil), msg[:len(msg)-10]...)
	n := len(shrunk) - 4
	shrunk[1], shrunk[2], shrunk[3] = byte(n>>16), byte(n>>8), byte(n)
	shrunkRec := records(shrunk)
	// A 60,000-byte handshake message in legal-size records.
	big := append([]byte{0x01, 0x00, 0xea, 0x60}, make([]byte, 60000)...)
	sslv2 := []byte{0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10}
	sslv2 = append(sslv2, make([]byte, 0x2e-9)...)
	ppV2 := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02")

	for _, tc := range []struct {
		name    string
		send    []byte
		outcome string
		reason  string // peek_failures_total reason; "" for unknown_sni
		alert   bool   // the relay answers unrecognized_name
		quick   bool   // refused at once, not at the hello deadline
	}{
		// Framing.
		{"record length over the TLS maximum", append([]byte{0x16, 0x03, 0x01, 0x50, 0x00}, msg[:100]...), "hello_invalid", "malformed", false, true},
		{"handshake message over 64 KiB declared", []byte{0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0, 0, 0, 0}, "hello_invalid", "malformed", false, true},
		{"60,000-byte handshake message in legal records", records(big, 16000, 16000, 16000), "hello_too_large", "too_large", false, true},
		{"empty handshake record", []byte{0x16, 0x03, 0x01, 0x00, 0x00}, "hello_invalid", "malformed", false, true},
		{"record shorter than the handshake length, then silence", shortRecord, "hello_timeout", "timeout", false, false},
		{"handshake length shorter than the hello's fields", shrunkRec, "hello_invalid", "malformed", false, true},
		{"fatal alert between fragments", append(append(records(msg[:50]), 0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28), records(msg[50:])...), "hello_invalid", "malformed", false, true},
		{"record version 0x1603", append([]byte{0x16, 0x16, 0x03}, real[3:]...), "hello_invalid", "malformed", false, true},
		// SNI.
		{"duplicate server_name extension", withExts(func(e []tlsExt) []tlsExt {
			return append(e, tlsExt{extServerName, sniData("misskey.example.com")})
		}), "hello_invalid", "malformed", false, true},
		{"server_name extension naming a second host", helloWithSNI(t, sniData("misskey.example.com", "evil.example")), "hello_invalid", "malformed", false, true},
		{"empty host_name", helloWithSNI(t, sniData("")), "hello_invalid", "malformed", false, true},
		{"empty server_name list", helloWithSNI(t, []byte{0, 0}), "hello_invalid", "malformed", false, true},
		{"empty server_name extension", helloWithSNI(t, []byte{}), "hello_invalid", "malformed", false, true},
		{"trailing dot (crypto/tls rejects it as malformed)", helloWithSNI(t, sniData("misskey.example.com.")), "hello_invalid", "malformed", false, true},
		{"IPv4 literal", helloWithSNI(t, sniData("127.0.0.1")), "unknown_sni", "", true, true},
		{"IPv6 literal", helloWithSNI(t, sniData("::1")), "unknown_sni", "", true, true},
		{"bracketed IPv6 literal", helloWithSNI(t, sniData("[::1]")), "unknown_sni", "", true, true},
		{"configured name with a NUL suffix", helloWithSNI(t, sniData("misskey.example.com\x00.evil")), "unknown_sni", "", true, true},
		{"configured name plus a port", helloWithSNI(t, sniData("misskey.example.com:443")), "unknown_sni", "", true, true},
		// Not TLS at all.
		{"SSLv2-style hello", sslv2, "not_tls", "not_tls", false, true},
		{"handshake type byte, then noise", []byte{0x16, 0x03, 0x01, 0x00, 0x06, 0x02, 0x00, 0x00, 0x02, 0xde, 0xad}, "hello_invalid", "malformed", false, true},
		{"PROXY v2 header from the client", ppV2, "not_tls", "not_tls", false, true},
		{"PROXY v1 header, then a real hello", append([]byte("PROXY TCP4 6.6.6.6 127.0.0.1 1 443\r\n"), real...), "not_tls", "not_tls", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r.logs.TakeAll()
			before := o.accepted.Load()
			peek := newCounter(t, reg, "relay46_peek_failures_total", map[string]string{"listener": "https", "reason": tc.reason})
			unknown := newCounter(t, reg, "relay46_unknown_host_total", map[string]string{"listener": "https"})
			c, err := net.Dial("tcp4", r.https)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			c.Write(tc.send)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, _ := io.ReadAll(c)
			took := time.Since(start)
			if tc.alert && !bytes.Equal(got, alertUnrecognizedName) || !tc.alert && len(got) != 0 {
				t.Errorf("relay answered % x", got)
			}
			// The hello deadline is 1s: "at once" is well before it.
			if tc.quick && took > 700*time.Millisecond {
				t.Errorf("closed after %v; want at once", took)
			}
			if !tc.quick && took < time.Second {
				t.Errorf("closed after %v, before the hello deadline", took)
			}
			r.waitOutcome(t, tc.outcome)
			if tc.reason != "" {
				if d := peek.delta(); d != 1 {
					t.Errorf("peek_failures_total{reason=%q} rose by %v, want 1", tc.reason, d)
				}
			} else if d := unknown.delta(); d != 1 {
				t.Errorf("unknown_host_total rose by %v, want 1", d)
			}
			if o.accepted.Load() != before {
				t.Error("the origin was dialed")
			}
			healthy.check(t)
		})
	}
}

// TestClientHelloWithTrailingHandshakeBytes sends a valid ClientHello
// followed, in the same record, by bytes that are not a handshake
// message. The hello itself parses, so the relay routes it and replays
// every byte; the origin's TLS stack is what refuses the rest (Go's
// answers its ServerHello, then fails with "handshake buffer not empty
// before setting read traffic secret" and closes). Routing never depends
// on anything after the ClientHello.
func TestClientHelloWithTrailingHandshakeBytes(t *testing.T) {
	cert, _ := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), ""))
	msg := handshakeMessage(t, clientHello(t, "misskey.example.com"))
	rec := records(append(append([]byte(nil), msg...), 0xfe, 0x00, 0x00, 0x00))
	c, err := net.Dial("tcp4", r.https)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(rec)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || !bytes.HasPrefix(got, []byte{0x16, 0x03, 0x03}) {
		t.Errorf("client read % x, %v; want the origin's ServerHello, then the end", got[:min(len(got), 16)], err)
	}
	if o.accepted.Load() != 1 {
		t.Errorf("origin accepted %d connections, want 1", o.accepted.Load())
	}
	c.Close()
	r.waitOutcome(t, "ok")
}
