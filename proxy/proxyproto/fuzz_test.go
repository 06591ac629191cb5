package proxyproto_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/relay46/relay46/proxy/proxyproto"
)

// FuzzRead checks that Read never panics, consumes nothing when it fails,
// and that whatever it accepts survives a round trip through the encoder of
// the same version. More seeds are in testdata/fuzz/FuzzRead.
func FuzzRead(f *testing.F) {
	f.Add([]byte("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"))
	f.Add([]byte("PROXY TCP6 2001:db8::1 ::ffff:192.0.2.11 1 2\r\n"))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add(proxyproto.AppendV2(nil, ap("172.19.0.1:42578"), ap("172.19.0.3:80")))
	f.Add(proxyproto.AppendV2(nil, ap("[2001:db8::1]:1"), ap("[2001:db8::11]:2")))
	f.Add(proxyproto.AppendV2(nil, ap("[2001:db8::1]:1"), ap("192.0.2.11:2")))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		h, err := proxyproto.Read(r)
		if err != nil {
			if !errors.Is(err, proxyproto.ErrNoHeader) && !errors.Is(err, proxyproto.ErrInvalid) && !(err == io.EOF && len(data) == 0) {
				t.Fatalf("Read(%q): unexpected kind of error %v", data, err)
			}
			if rest, _ := io.ReadAll(r); !bytes.Equal(rest, data) {
				t.Fatalf("Read(%q) failed with %v but consumed %d bytes", data, err, len(data)-len(rest))
			}
			return
		}
		if h.Local && (h.Src.IsValid() || h.Dst.IsValid()) {
			t.Fatalf("Read(%q) = %+v: Local with addresses", data, h)
		}
		if !h.Local && (h.Src.Addr().Is4() != h.Dst.Addr().Is4() || h.Src.Addr().Is4In6()) {
			t.Fatalf("Read(%q) = %+v: not canonical", data, h)
		}

		var enc []byte
		switch h.Version {
		case 1:
			enc = proxyproto.AppendV1(nil, h.Src, h.Dst)
			if len(enc) > 107 {
				t.Fatalf("AppendV1(%+v) = %q: longer than 107 bytes", h, enc)
			}
		case 2:
			enc = proxyproto.AppendV2(nil, h.Src, h.Dst)
		default:
			t.Fatalf("Read(%q) = %+v: version %d", data, h, h.Version)
		}
		r2 := bufio.NewReader(bytes.NewReader(enc))
		h2, err := proxyproto.Read(r2)
		if err != nil {
			t.Fatalf("Read(%q) = %+v, re-encoded as %q: %v", data, h, enc, err)
		}
		if h2 != h {
			t.Fatalf("Read(%q) = %+v, re-encoded as %q, read back as %+v", data, h, enc, h2)
		}
		if r2.Buffered() != 0 {
			t.Fatalf("Read(%q) left %d bytes of the header", enc, r2.Buffered())
		}
	})
}
