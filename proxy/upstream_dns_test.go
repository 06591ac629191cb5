package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/upstream/dnstest"
)

// TestUpstreamDNSChangeFollowsTTL runs a real DNS server whose answer for
// the home's name changes while the relay runs, as a dynamic DNS record
// does when the ISP hands out a new prefix. The two loopback addresses
// stand for the old and new address of the home, on the same port.
func TestUpstreamDNSChangeFollowsTTL(t *testing.T) {
	port := loopbackPair(t)
	cert, roots := testCert(t, "misskey.example.com")
	oldHome := startHome(t, "old", "tcp6", fmt.Sprintf("[::1]:%d", port), &cert)
	newHome := startHome(t, "new", "tcp4", fmt.Sprintf("127.0.0.1:%d", port), &cert)
	dns := dnstest.Start(t)
	dns.Set("home.example.net", time.Second, netip.MustParseAddr("::1"))

	reg := prometheus.NewRegistry()
	r := startRelayWith(t, fmt.Sprintf(`
resolvers: [%q]
dns_ttl: {floor: 100ms}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    upstream: "home.example.net:%d"
    allow_ipv4: true
    allowed_prefixes: ["::1/128", "127.0.0.1/32"]
`, dns.Addr(), port), func(s *Server) { s.Metrics = metrics.New(reg, metrics.BuildInfo{}) })

	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "old" {
		t.Fatalf("first connection reached %q, %v", got, err)
	}
	kept := keepConn(t, r, "misskey.example.com", roots)
	if got := kept.ask(t, "misskey.example.com"); got != "old" {
		t.Fatalf("kept connection reached %q", got)
	}

	// The prefix changes: the record now gives the new address (here the
	// IPv4 loopback; the route allows IPv4 so that the test can show a
	// change of address with loopback only). TTL 1s.
	dns.Set("home.example.net", time.Second, netip.MustParseAddr("127.0.0.1"))
	took := waitServes(t, r, "misskey.example.com", roots, "new", 3*time.Second)
	if took > 1500*time.Millisecond {
		t.Errorf("new connections followed after %s; the TTL was 1s", took)
	}
	t.Logf("new connections followed the new answer after %s", took)
	// The connection opened before the change is where it was.
	if got := kept.ask(t, "misskey.example.com"); got != "old" {
		t.Errorf("the kept connection now reaches %q; it must stay on the old address", got)
	}

	// The resolver goes down. New connections keep going to the last good
	// answer for several TTLs, and the log says why.
	// (A dropped question takes the 2s query timeout to fail.)
	dns.Fail(dnstest.Drop)
	for start := time.Now(); r.logCount("resolving upstream failed; keeping the last good answer") < 2; {
		if time.Since(start) > 10*time.Second {
			t.Fatal("the resolver outage was not logged")
		}
		steadyServes(t, r, "misskey.example.com", roots, "new", 200*time.Millisecond)
	}
	steadyServes(t, r, "misskey.example.com", roots, "new", time.Second)
	if got := kept.ask(t, "misskey.example.com"); got != "old" {
		t.Errorf("the kept connection now reaches %q", got)
	}
	if n := oldHome.served.Load() + newHome.served.Load(); n < 5 {
		t.Errorf("origins served %d requests", n)
	}

	// Metrics: one address change, and the old address's health series
	// was removed with it.
	if n := counterValue(t, reg, "relay46_upstream_address_changes_total", "misskey"); n != 1 {
		t.Errorf("relay46_upstream_address_changes_total = %v, want 1", n)
	}
	if out := gather(t, reg); strings.Contains(out, `addr="[::1]:`) {
		t.Errorf("the old address still has series:\n%s", out)
	}
}

// counterValue reads the counter name{route=route} from reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name, route string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == "route" && l.GetValue() == route {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// gather returns the relay46_upstream_up series as text.
func gather(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if mf.GetName() != "relay46_upstream_up" {
			continue
		}
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				fmt.Fprintf(&b, "%s=%q ", l.GetName(), l.GetValue())
			}
			fmt.Fprintf(&b, "%v\n", m.GetGauge().GetValue())
		}
	}
	return b.String()
}
