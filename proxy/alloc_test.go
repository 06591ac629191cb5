package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// TestLookupHosts covers each way lookup folds a host name: as is, ASCII
// capitals through its stack buffer, and the strings.ToLower fallback for
// non-ASCII and over-long names.
func TestLookupHosts(t *testing.T) {
	r := startRelay(t, passthroughConfig("[::1]:443", ""))
	tbl := r.srv.table.Load()
	long := strings.Repeat("a", 250) + ".misskey.example.com"
	for _, tc := range []struct {
		host string
		hit  bool
	}{
		{"misskey.example.com", true},
		{"misskey.example.com.", true},
		{"MISSKEY.EXAMPLE.COM.", true},
		{"a.misskey.example.com", true},
		{"A.MissKey.Example.Com", true},
		{"xn--r8jz45g.jp", true},
		{"XN--R8JZ45G.JP", true},
		{"例え.jp", false}, // config stores the A-label; SNI carries A-labels
		{"É.misskey.example.com", true},
		{"É.Misskey.example.com", true}, // non-ASCII with capitals: ToLower path
		{long, true},                    // longer than a DNS name: still one label deep
		{strings.ToUpper(long), true},   // ToLower path for length
		{"a.b.misskey.example.com", false},
		{"A.B.misskey.example.com", false},
		{"misskey.example.com..", false},
		{"misskey", false},
		{"MISSKEY.", false},
		{".", false},
		{"", false},
		{"example.com", false},
	} {
		if got := tbl.lookup(tc.host) != nil; got != tc.hit {
			t.Errorf("lookup(%q) found a route: %v, want %v", tc.host, got, tc.hit)
		}
	}
}

// TestNoAllocs holds the passthrough path's per-connection work after the
// peek to zero allocations, so a change that brings one back fails here
// rather than going unnoticed in a benchmark.
func TestNoAllocs(t *testing.T) {
	r := startRelay(t, passthroughConfig("[::1]:443", ""))
	tbl := r.srv.table.Load()
	for _, tc := range lookupCases {
		t.Run("lookup/"+tc.name, func(t *testing.T) {
			if n := testing.AllocsPerRun(100, func() { tbl.lookup(tc.host) }); n != 0 {
				t.Errorf("lookup(%q): %v allocations, want 0", tc.host, n)
			}
		})
	}
	for _, network := range []string{"tcp4", "tcp6"} {
		c, _ := proxyHeaderConns(t, network)
		for _, v := range []int{1, 2} {
			t.Run(fmt.Sprintf("appendProxyHeader/v%d/%s", v, network), func(t *testing.T) {
				buf := make([]byte, 0, 128)
				if n := testing.AllocsPerRun(100, func() { buf = appendProxyHeader(buf[:0], v, c) }); n != 0 {
					t.Errorf("%v allocations, want 0", n)
				}
				if len(buf) == 0 {
					t.Errorf("no header")
				}
			})
			t.Run(fmt.Sprintf("withHeader/v%d/%s", v, network), func(t *testing.T) {
				hello := clientHello(t, "misskey.example.com")
				p := newPeeker()
				if _, _, err := p.peek(bytes.NewReader(hello)); err != nil {
					t.Fatal(err)
				}
				var first []byte
				// What passthrough does between the peek and the first write.
				if n := testing.AllocsPerRun(100, func() {
					var hdr [headerRoom]byte
					first = p.rec.withHeader(appendProxyHeader(hdr[:0], v, c))
				}); n != 0 {
					t.Errorf("%v allocations, want 0", n)
				}
				want := append(appendProxyHeader(nil, v, c), hello...)
				if !bytes.Equal(first, want) {
					t.Errorf("first write = %q, want header and hello %q", first, want)
				}
			})
		}
	}
}
