package metrics

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// relay46Series counts the relay46_ series (a histogram counts once per label set).
func relay46Series(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "relay46_") {
			n += len(mf.GetMetric())
		}
	}
	return n
}

// TestCardinalityBoundedByConfig sends 1,000 connections with random SNI
// values, and 1,000 calls whose fixed-set labels carry client-controlled junk
// (as a caller bug would pass them), and checks the number of series does not
// grow: only config names and fixed sets, plus one "other", ever become labels.
func TestCardinalityBoundedByConfig(t *testing.T) {
	m, reg := newTestMetrics(t)
	exercise(m)
	// Out-of-set values for each fixed-set label, so the "other" series exist.
	for _, status := range []int{150, 250, 350, 450, 550, 999} {
		junk(m, "out-of-set", status)
	}
	unknownSNI(m)
	before := relay46Series(t, reg)

	rng := rand.New(rand.NewPCG(46, 46))
	for i := range 1000 {
		sni := fmt.Sprintf("%x.attacker%d.example", rng.Uint64(), i)
		unknownSNI(m)
		// What a buggy caller might do: pass client data where a fixed set is expected.
		junk(m, sni, 100+rng.IntN(1000))
	}

	if after := relay46Series(t, reg); after != before {
		t.Errorf("relay46 series grew from %d to %d after 1,000 random SNI values", before, after)
	}
	// exercise counted 1 unknown host, the warm-up 1 more.
	if got := value(t, m.unknownHost.WithLabelValues("https")); got != 1002 {
		t.Errorf("unknown_host{https} = %v, want 1002", got)
	}
	// 6 warm-up calls and 1,000 random ones, all folded into one series.
	if got := value(t, m.connFinished.WithLabelValues("https", "none", "other", "other")); got != 1006 {
		t.Errorf("finished{mode=other,outcome=other} = %v, want 1006", got)
	}
}

// unknownSNI is what the relay records for a ClientHello naming no route: the
// name itself is never passed.
func unknownSNI(m *Metrics) {
	m.ConnStarted("https")
	m.UnknownHost("https")
	m.ConnFinished("https", None, ModeNone, OutcomeUnknownHost, time.Millisecond, 0, 0)
}

// junk passes v wherever a fixed-set value is expected.
func junk(m *Metrics, v string, status int) {
	m.ConnStarted("https")
	m.ConnFinished("https", None, v, v, time.Millisecond, 0, 0)
	m.PeekFailed("https", v)
	m.Refused("https", v)
	m.HTTPRequest("blog", v, status, time.Millisecond)
	m.HTTPRequest("blog", strings.ToLower(v), -status, time.Millisecond)
	m.ACMEAttempt(v, v)
	m.DialDone("misskey", time.Millisecond, errors.New(v))
}
