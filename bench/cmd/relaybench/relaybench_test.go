package main

import (
	"bufio"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		n       int64
		wantErr error // nil, errClosed, or any error (errAny)
	}{
		{"content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 5, nil},
		{"header case", "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nCONNECTION: keep-alive\r\n\r\nabc", 3, nil},
		{"close", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", 2, errClosed},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nTrailer: 1\r\n\r\n", 5, nil},
		{"until EOF", "HTTP/1.0 200 OK\r\n\r\nabcdef", 6, errClosed},
		{"not 200", "HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\n\r\n", 0, errAny},
		{"garbage", "\x15\x03\x03\x00\x02\x02\x70\n", 0, errAny},
		{"short body", "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", 3, errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := readResponse(bufio.NewReader(strings.NewReader(tt.in)))
			switch {
			case tt.wantErr == errAny && err == nil:
				t.Fatalf("got no error, want one")
			case tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if n != tt.n {
				t.Errorf("body = %d bytes, want %d", n, tt.n)
			}
		})
	}
}

var errAny = errors.New("any error")

func TestMedianQuantile(t *testing.T) {
	if got := median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("median odd = %v", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median even = %v", got)
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
	s := make([]float64, 100)
	for i := range s {
		s[i] = float64(i + 1)
	}
	if q := quantile(s, 0.5); q != 50 {
		t.Errorf("p50 = %v", q)
	}
	if q := quantile(s, 0.99); q != 99 {
		t.Errorf("p99 = %v", q)
	}
}

func TestFormatting(t *testing.T) {
	for in, want := range map[string]string{"1": "1", "1234": "1,234", "-1234567": "-1,234,567", "999": "999"} {
		if got := groupThousands(in); got != want {
			t.Errorf("groupThousands(%q) = %q, want %q", in, got, want)
		}
	}
	if got := fmtRatio(1, 2, true); got != "0.50×" {
		t.Errorf("fmtRatio = %q", got)
	}
	if got := fmtRatio(-1, 2, true); got != "—" {
		t.Errorf("fmtRatio of a negative figure = %q", got)
	}
}

// The table puts each relay46 figure beside each peer's with the ratio,
// and checks the targets.
func TestRenderMarkdown(t *testing.T) {
	r := &Results{
		Options: map[string]string{"reps": "2"},
		Machine: map[string]string{"nproc": "2"},
		Peers: []PeerSpec{
			{Name: "relay46-pt", Label: "relay46", Group: "passthrough"},
			{Name: "haproxy", Label: "HAProxy", Group: "passthrough"},
			{Name: "nginx-term", Label: "nginx", Group: "terminate"},
		},
		Notes: []string{"relay46 (terminate): not available in this build."},
		Medians: map[string]map[string]float64{
			"relay46-pt": {mKARate: 900, mIdleKiB: 6},
			"haproxy":    {mKARate: 1000, mIdleKiB: 3.4},
			"nginx-term": {mKARate: 2000},
			direct:       {mKARate: 3000, mLatP50: 20},
		},
	}
	md := renderMarkdown(r)
	for _, want := range []string{
		"| keep-alive HTTPS requests/s ↑ | 900 | 1,000 | 0.90× | 3,000 |",
		"keep-alive HTTPS requests/s ≥ 1.0× HAProxy: 0.90× — not met, 10% short",
		"RSS per idle connection, KiB ≤ 8: 6.0 — met",
		"| added latency p50, µs ↓ | — | — | — | 20.0 |",
		"relay46 is missing from this table",
		"- relay46 (terminate): not available in this build.",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
}

func TestReadStat(t *testing.T) {
	st, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.ppid != os.Getppid() {
		t.Errorf("ppid = %d, want %d", st.ppid, os.Getppid())
	}
	if vmRSS(os.Getpid()) <= 0 {
		t.Error("no VmRSS for this process")
	}
}
