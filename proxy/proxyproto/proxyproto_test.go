package proxyproto_test

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/relay46/relay46/proxy/proxyproto"
)

var ap = netip.MustParseAddrPort

// sigV2 in hex, to write expected v2 headers.
const sigV2Hex = "0d0a0d0a000d0a515549540a"

func TestAppendV1(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     string
	}{
		// The example from section 2.1 of the spec.
		{"spec example", ap("192.168.0.1:56324"), ap("192.168.0.11:443"), "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"},
		{"TCP6", ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443"), "PROXY TCP6 2001:db8::1 2001:db8::11 56324 443\r\n"},
		{"mapped sent as TCP4", ap("[::ffff:192.0.2.1]:1"), ap("[::ffff:192.0.2.11]:2"), "PROXY TCP4 192.0.2.1 192.0.2.11 1 2\r\n"},
		{"mapped src, IPv4 dst", ap("[::ffff:192.0.2.1]:1"), ap("192.0.2.11:2"), "PROXY TCP4 192.0.2.1 192.0.2.11 1 2\r\n"},
		{"IPv6 src, IPv4 dst mapped", ap("[2001:db8::1]:1"), ap("192.0.2.11:2"), "PROXY TCP6 2001:db8::1 ::ffff:192.0.2.11 1 2\r\n"},
		{"IPv4 src, IPv6 dst", ap("192.0.2.1:1"), ap("[2001:db8::11]:2"), "PROXY UNKNOWN\r\n"},
		{"mapped src, IPv6 dst", ap("[::ffff:192.0.2.1]:1"), ap("[2001:db8::11]:2"), "PROXY UNKNOWN\r\n"},
		{"zero src", netip.AddrPort{}, ap("192.0.2.11:443"), "PROXY UNKNOWN\r\n"},
		{"zero dst", ap("192.0.2.1:1"), netip.AddrPort{}, "PROXY UNKNOWN\r\n"},
		{"zone dropped", ap("[fe80::1%eth0]:1"), ap("[fe80::2%eth0]:2"), "PROXY TCP6 fe80::1 fe80::2 1 2\r\n"},
		{"extremes", ap("255.255.255.255:65535"), ap("0.0.0.0:0"), "PROXY TCP4 255.255.255.255 0.0.0.0 65535 0\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proxyproto.AppendV1([]byte("x"), tt.src, tt.dst)
			if want := "x" + tt.want; string(got) != want {
				t.Errorf("AppendV1 = %q, want %q", got, want)
			}
		})
	}
}

func TestAppendV2(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     string // hex
	}{
		{
			// As HAProxy sends it (a capture of "send-proxy-v2").
			"TCP4", ap("172.19.0.1:42578"), ap("172.19.0.3:80"),
			sigV2Hex + "21" + "11" + "000c" + "ac130001" + "ac130003" + "a652" + "0050",
		},
		{
			"TCP6", ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443"),
			sigV2Hex + "21" + "21" + "0024" +
				"20010db8000000000000000000000001" + "20010db8000000000000000000000011" + "dc04" + "01bb",
		},
		{
			"mapped sent as AF_INET", ap("[::ffff:192.0.2.1]:1"), ap("[::ffff:192.0.2.11]:2"),
			sigV2Hex + "21" + "11" + "000c" + "c0000201" + "c000020b" + "0001" + "0002",
		},
		{
			"IPv6 src, IPv4 dst mapped", ap("[2001:db8::1]:1"), ap("192.0.2.11:2"),
			sigV2Hex + "21" + "21" + "0024" +
				"20010db8000000000000000000000001" + "00000000000000000000ffffc000020b" + "0001" + "0002",
		},
		{"IPv4 src, IPv6 dst", ap("192.0.2.1:1"), ap("[2001:db8::11]:2"), sigV2Hex + "20" + "00" + "0000"},
		{"zero src", netip.AddrPort{}, netip.AddrPort{}, sigV2Hex + "20" + "00" + "0000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proxyproto.AppendV2([]byte{0xff}, tt.src, tt.dst)
			if want := "ff" + tt.want; hex.EncodeToString(got) != want {
				t.Errorf("AppendV2 =\n%x\nwant\n%s", got, want)
			}
		})
	}
}

func TestAppendV2DoesNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 64)
	for _, addrs := range [][2]netip.AddrPort{
		{ap("192.0.2.1:1"), ap("192.0.2.11:2")},
		{ap("[2001:db8::1]:1"), ap("[::ffff:192.0.2.11]:2")},
		{{}, {}},
	} {
		if n := testing.AllocsPerRun(100, func() { buf = proxyproto.AppendV2(buf[:0], addrs[0], addrs[1]) }); n != 0 {
			t.Errorf("AppendV2(%v, %v): %v allocs, want 0", addrs[0], addrs[1], n)
		}
	}
}

// TestRoundTrip writes headers with AppendV1 and AppendV2 and reads them
// back, with data after them that Read must leave in place.
func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		src, dst netip.AddrPort
		want     Addrs // zero: Local
	}{
		{"IPv4", ap("192.0.2.1:56324"), ap("192.0.2.11:443"), Addrs{ap("192.0.2.1:56324"), ap("192.0.2.11:443")}},
		{"IPv6", ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443"), Addrs{ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443")}},
		{"mapped IPv4", ap("[::ffff:192.0.2.1]:1"), ap("[::ffff:192.0.2.11]:2"), Addrs{ap("192.0.2.1:1"), ap("192.0.2.11:2")}},
		{"IPv6 src, IPv4 dst", ap("[2001:db8::1]:1"), ap("192.0.2.11:2"), Addrs{ap("[2001:db8::1]:1"), ap("[::ffff:192.0.2.11]:2")}},
		{"unknown", netip.AddrPort{}, netip.AddrPort{}, Addrs{}},
		{"IPv4 src, IPv6 dst", ap("192.0.2.1:1"), ap("[2001:db8::11]:2"), Addrs{}},
	}
	encoders := []struct {
		version int
		append  func([]byte, netip.AddrPort, netip.AddrPort) []byte
	}{{1, proxyproto.AppendV1}, {2, proxyproto.AppendV2}}
	for _, enc := range encoders {
		for _, tt := range tests {
			t.Run(tt.name+"/v"+string(rune('0'+enc.version)), func(t *testing.T) {
				const data = "GET / HTTP/1.1\r\n"
				in := enc.append(nil, tt.src, tt.dst)
				// One byte at a time: a header may arrive in any number of segments.
				r := bufio.NewReader(iotest.OneByteReader(strings.NewReader(string(in) + data)))
				h, err := proxyproto.Read(r)
				if err != nil {
					t.Fatalf("Read(%q): %v", in, err)
				}
				want := proxyproto.Header{Version: enc.version, Local: tt.want == Addrs{}, Src: tt.want.Src, Dst: tt.want.Dst}
				if h != want {
					t.Errorf("Read(%q) = %+v, want %+v", in, h, want)
				}
				if h.Src.Addr().Is4In6() && h.Dst.Addr().Is4In6() {
					t.Errorf("Read(%q) = %+v: IPv4 client reported as IPv6", in, h)
				}
				if rest, _ := io.ReadAll(r); string(rest) != data {
					t.Errorf("after the header: %q, want %q", rest, data)
				}
			})
		}
	}
}

// Addrs is a header's source and destination.
type Addrs struct{ Src, Dst netip.AddrPort }

// TestReadValid covers headers that AppendV1 and AppendV2 do not produce.
func TestReadValid(t *testing.T) {
	v1 := func(src, dst string) proxyproto.Header {
		return proxyproto.Header{Version: 1, Src: ap(src), Dst: ap(dst)}
	}
	v2 := func(src, dst string) proxyproto.Header {
		return proxyproto.Header{Version: 2, Src: ap(src), Dst: ap(dst)}
	}
	tcp4 := sigV2Hex + "2111" + "000c" + "c0000201" + "c000020b" + "0001" + "0002"
	tests := []struct {
		name string
		in   string // v1 text, or hex for v2
		want proxyproto.Header
	}{
		{"v1 long IPv6 form", "PROXY TCP6 2001:0DB8:0:0:0:0:0:1 2001:db8::11 1 2\r\n", v1("[2001:db8::1]:1", "[2001:db8::11]:2")},
		{"v1 mapped TCP6 is TCP4", "PROXY TCP6 ::ffff:192.0.2.1 ::ffff:c000:20b 1 2\r\n", v1("192.0.2.1:1", "192.0.2.11:2")},
		{"v1 UNKNOWN with addresses", "PROXY UNKNOWN 2001:db8::1 2001:db8::11 1 2\r\n", proxyproto.Header{Version: 1, Local: true}},
		{"v1 UNKNOWN with junk", "PROXY UNKNOWN \x00junk\r\n", proxyproto.Header{Version: 1, Local: true}},
		{"v1 longest line", "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n", proxyproto.Header{Version: 1, Local: true}},
		{"v1 port 0", "PROXY TCP4 192.0.2.1 192.0.2.11 0 65535\r\n", v1("192.0.2.1:0", "192.0.2.11:65535")},
		{"v2 TLVs skipped", sigV2Hex + "2111" + "0016" + "c0000201" + "c000020b" + "0001" + "0002" + "0400" + "00" + "0200" + "0461" + "2e62" + "63", v2("192.0.2.1:1", "192.0.2.11:2")},
		{"v2 LOCAL with addresses", sigV2Hex + "2011" + "000c" + "c0000201" + "c000020b" + "0001" + "0002", proxyproto.Header{Version: 2, Local: true}},
		{"v2 PROXY UNSPEC", sigV2Hex + "2100" + "0000", proxyproto.Header{Version: 2, Local: true}},
		{"v2 UDP4 falls back", sigV2Hex + "2112" + "000c" + "c0000201" + "c000020b" + "0001" + "0002", proxyproto.Header{Version: 2, Local: true}},
		{"v2 UNIX stream falls back", sigV2Hex + "2131" + "00d8" + strings.Repeat("00", 216), proxyproto.Header{Version: 2, Local: true}},
		{"v2 mapped TCP6 is TCP4", sigV2Hex + "2121" + "0024" + "00000000000000000000ffffc0000201" + "00000000000000000000ffffc000020b" + "0001" + "0002", v2("192.0.2.1:1", "192.0.2.11:2")},
		{"v2 largest", sigV2Hex + "2111" + "0ff0" + tcp4[32:] + "e0" + "0fe1" + strings.Repeat("00", 0x0fe1), v2("192.0.2.1:1", "192.0.2.11:2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := decode(t, tt.in)
			r := bufio.NewReader(bytes.NewReader(append(in, "data"...)))
			h, err := proxyproto.Read(r)
			if err != nil {
				t.Fatalf("Read(%q): %v", in, err)
			}
			if h != tt.want {
				t.Errorf("Read(%q) = %+v, want %+v", in, h, tt.want)
			}
			if rest, _ := io.ReadAll(r); string(rest) != "data" {
				t.Errorf("after the header: %q, want %q", rest, "data")
			}
		})
	}
}

// decode returns s as bytes: hex if it starts with the v2 signature's hex.
func decode(t *testing.T, s string) []byte {
	t.Helper()
	if !strings.HasPrefix(s, sigV2Hex) {
		return []byte(s)
	}
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestReadMalformed(t *testing.T) {
	tcp4 := "2111" + "000c" + "c0000201" + "c000020b" + "0001" + "0002"
	tests := []struct {
		name    string
		in      string // v1 text, or hex for v2
		wantErr error
		wantMsg string
	}{
		{"empty", "", io.EOF, ""},
		{"HTTP", "GET / HTTP/1.1\r\n\r\n", proxyproto.ErrNoHeader, ""},
		{"TLS", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", proxyproto.ErrNoHeader, ""},
		{"lower case", "proxy TCP4 192.0.2.1 192.0.2.11 1 2\r\n", proxyproto.ErrNoHeader, ""},
		{"CRLF then not v2", "\r\n\r\nGET", proxyproto.ErrNoHeader, ""},
		{"partial v1 signature", "PROX", io.ErrUnexpectedEOF, "truncated"},
		{"partial v2 signature", "\r\n\r\n\x00\r\nQU", io.ErrUnexpectedEOF, "truncated"},

		{"v1 truncated", "PROXY TCP4 192.0.2.1 192.0.2.11 1 2\r", io.ErrUnexpectedEOF, "truncated"},
		{"v1 no space", "PROXYTCP4 192.0.2.1 192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, "no space after PROXY"},
		{"v1 bare LF", "PROXY TCP4 192.0.2.1 192.0.2.11 1 2\n", proxyproto.ErrInvalid, "CRLF"},
		{"v1 CR inside", "PROXY TCP4 192.0.2.1\r192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, "CRLF"},
		{"v1 too long", "PROXY UNKNOWN " + strings.Repeat("a", 100) + "\r\n", proxyproto.ErrInvalid, "no CRLF in the first 107 bytes"},
		{"v1 protocol", "PROXY UDP4 192.0.2.1 192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, `unknown protocol "UDP4"`},
		{"v1 UNKNOWN suffix", "PROXY UNKNOWNX\r\n", proxyproto.ErrInvalid, `unknown protocol "UNKNOWNX"`},
		{"v1 PROXY only", "PROXY\r\n", proxyproto.ErrInvalid, "no space after PROXY"},
		{"v1 double space", "PROXY TCP4 192.0.2.1  192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, "5 fields after TCP4"},
		{"v1 trailing space", "PROXY TCP4 192.0.2.1 192.0.2.11 1 2 \r\n", proxyproto.ErrInvalid, "5 fields after TCP4"},
		{"v1 missing port", "PROXY TCP4 192.0.2.1 192.0.2.11 1\r\n", proxyproto.ErrInvalid, "3 fields after TCP4"},
		{"v1 bad address", "PROXY TCP4 192.0.2 192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, `bad address "192.0.2"`},
		{"v1 octal-looking octet", "PROXY TCP4 192.0.2.01 192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, `bad address "192.0.2.01"`},
		{"v1 IPv6 in TCP4", "PROXY TCP4 2001:db8::1 192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, `"2001:db8::1" is not TCP4`},
		{"v1 mapped in TCP4", "PROXY TCP4 192.0.2.1 ::ffff:192.0.2.11 1 2\r\n", proxyproto.ErrInvalid, `"::ffff:192.0.2.11" is not TCP4`},
		{"v1 IPv4 in TCP6", "PROXY TCP6 192.0.2.1 2001:db8::11 1 2\r\n", proxyproto.ErrInvalid, `"192.0.2.1" is not TCP6`},
		{"v1 zone", "PROXY TCP6 fe80::1%eth0 fe80::2 1 2\r\n", proxyproto.ErrInvalid, "has a zone"},
		{"v1 mapped src, IPv6 dst", "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::11 1 2\r\n", proxyproto.ErrInvalid, "IPv4-mapped source"},
		{"v1 port leading zero", "PROXY TCP4 192.0.2.1 192.0.2.11 01 2\r\n", proxyproto.ErrInvalid, `bad port "01"`},
		{"v1 port sign", "PROXY TCP4 192.0.2.1 192.0.2.11 +1 2\r\n", proxyproto.ErrInvalid, `bad port "+1"`},
		{"v1 port hex", "PROXY TCP4 192.0.2.1 192.0.2.11 1 0x1\r\n", proxyproto.ErrInvalid, `bad port "0x1"`},
		{"v1 port range", "PROXY TCP4 192.0.2.1 192.0.2.11 65536 2\r\n", proxyproto.ErrInvalid, `port "65536" out of range`},
		{"v1 port too long", "PROXY TCP4 192.0.2.1 192.0.2.11 100000 2\r\n", proxyproto.ErrInvalid, `bad port "100000"`},

		{"v2 truncated fixed part", sigV2Hex + "2111", io.ErrUnexpectedEOF, "truncated"},
		{"v2 truncated addresses", sigV2Hex + tcp4[:20], io.ErrUnexpectedEOF, "truncated"},
		{"v2 version 1", sigV2Hex + "1111" + tcp4[4:], proxyproto.ErrInvalid, "v2: version 1"},
		{"v2 version 3", sigV2Hex + "3111" + tcp4[4:], proxyproto.ErrInvalid, "v2: version 3"},
		{"v2 command", sigV2Hex + "2211" + tcp4[4:], proxyproto.ErrInvalid, "unknown command 0x2"},
		{"v2 family", sigV2Hex + "2141" + tcp4[4:], proxyproto.ErrInvalid, "unknown address family 0x4"},
		{"v2 transport", sigV2Hex + "2113" + tcp4[4:], proxyproto.ErrInvalid, "unknown transport protocol 0x3"},
		{"v2 too long", sigV2Hex + "2111" + "0ff1" + tcp4[8:], proxyproto.ErrInvalid, "header of 4097 bytes exceeds the 4096-byte limit"},
		{"v2 longest length", sigV2Hex + "2111" + "ffff" + tcp4[8:], proxyproto.ErrInvalid, "header of 65551 bytes"},
		{"v2 TCP4 short", sigV2Hex + "2111" + "000b" + tcp4[8:30], proxyproto.ErrInvalid, "11 address bytes, TCP4 needs 12"},
		{"v2 TCP6 short", sigV2Hex + "2121" + "000c" + tcp4[8:], proxyproto.ErrInvalid, "12 address bytes, TCP6 needs 36"},
		{"v2 TLV short", sigV2Hex + "2111" + "000e" + tcp4[8:] + "0400", proxyproto.ErrInvalid, "2 trailing bytes are not a TLV"},
		{"v2 TLV overrun", sigV2Hex + "2111" + "0010" + tcp4[8:] + "02000261", proxyproto.ErrInvalid, "TLV of type 0x2 overruns the header by 1 bytes"},
		{"v2 mapped src, IPv6 dst", sigV2Hex + "2121" + "0024" + "00000000000000000000ffffc0000201" + "20010db8000000000000000000000011" + "00010002", proxyproto.ErrInvalid, "IPv4-mapped source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := decode(t, tt.in)
			r := bufio.NewReader(bytes.NewReader(in))
			h, err := proxyproto.Read(r)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(errString(err), tt.wantMsg) {
				t.Fatalf("Read(%q) = %+v, %v; want error %q containing %q", in, h, err, tt.wantErr, tt.wantMsg)
			}
			if errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, proxyproto.ErrInvalid) {
				t.Errorf("Read(%q): truncation %v does not wrap ErrInvalid", in, err)
			}
			if rest, _ := io.ReadAll(r); !bytes.Equal(rest, in) {
				t.Errorf("Read(%q) consumed input on error: %q left", in, rest)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// TestReadSmallBuffer checks that a header larger than the reader's buffer
// is rejected rather than half consumed.
func TestReadSmallBuffer(t *testing.T) {
	for _, in := range []string{
		"PROXY TCP4 192.0.2.1 192.0.2.11 1 2\r\n",
		string(proxyproto.AppendV2(nil, ap("[2001:db8::1]:1"), ap("[2001:db8::11]:2"))),
	} {
		r := bufio.NewReaderSize(strings.NewReader(in), 16)
		_, err := proxyproto.Read(r)
		if !errors.Is(err, proxyproto.ErrInvalid) || !strings.Contains(err.Error(), "exceeds the reader's buffer") {
			t.Errorf("Read(%q) with a 16-byte buffer: %v, want buffer error", in, err)
		}
	}
}

// TestReadDecidesEarly checks that a peer that is not speaking the protocol
// is recognized from the bytes it sent, without waiting for more.
func TestReadDecidesEarly(t *testing.T) {
	for _, in := range []string{"PROXZ", "\r\n\r\n\x01", "SSH-"} {
		// A reader that returns in and then blocks forever, like a quiet peer.
		pr, pw := io.Pipe()
		go func() { pw.Write([]byte(in)) }()
		_, err := proxyproto.Read(bufio.NewReader(pr))
		pw.Close()
		if !errors.Is(err, proxyproto.ErrNoHeader) {
			t.Errorf("Read(%q): %v, want ErrNoHeader", in, err)
		}
	}
}

func TestHeaderString(t *testing.T) {
	tests := []struct {
		h    proxyproto.Header
		want string
	}{
		{proxyproto.Header{}, "none"},
		{proxyproto.Header{Version: 1, Local: true}, "v1 UNKNOWN"},
		{proxyproto.Header{Version: 2, Local: true}, "v2 LOCAL"},
		{proxyproto.Header{Version: 1, Src: ap("192.0.2.1:56324"), Dst: ap("192.0.2.11:443")}, "v1 TCP4 192.0.2.1:56324 -> 192.0.2.11:443"},
		{proxyproto.Header{Version: 2, Src: ap("[2001:db8::1]:1"), Dst: ap("[2001:db8::11]:2")}, "v2 TCP6 [2001:db8::1]:1 -> [2001:db8::11]:2"},
	}
	for _, tt := range tests {
		if got := tt.h.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.h, got, tt.want)
		}
	}
}

func BenchmarkAppendV2(b *testing.B) {
	for _, bb := range []struct {
		name     string
		src, dst netip.AddrPort
	}{
		{"TCP4", ap("192.0.2.1:56324"), ap("192.0.2.11:443")},
		{"TCP6", ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443")},
		{"mapped", ap("[::ffff:192.0.2.1]:56324"), ap("[::ffff:192.0.2.11]:443")},
	} {
		b.Run(bb.name, func(b *testing.B) {
			buf := make([]byte, 0, 64)
			b.ReportAllocs()
			for b.Loop() {
				buf = proxyproto.AppendV2(buf[:0], bb.src, bb.dst)
			}
		})
	}
}

func BenchmarkAppendV1(b *testing.B) {
	src, dst := ap("[2001:db8::1]:56324"), ap("[2001:db8::11]:443")
	buf := make([]byte, 0, 128)
	b.ReportAllocs()
	for b.Loop() {
		buf = proxyproto.AppendV1(buf[:0], src, dst)
	}
}
