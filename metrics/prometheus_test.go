package metrics

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/internal/promtest"
)

// TestPrometheusScrapesRelay46 starts Debian's Prometheus with
// deploy/prometheus/prometheus.yml (target and intervals rewritten), lets it
// scrape relay46's handler on loopback, and queries its HTTP API until the
// counters show the traffic recorded here. It then checks that every
// dashboard query is valid PromQL on that server.
func TestPrometheusScrapesRelay46(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Prometheus server")
	}

	m, _ := newTestMetrics(t)
	m.Listening("https")
	for range 3 {
		m.ConnStarted("https")
		m.DialDone("misskey", 2*time.Millisecond, nil)
		m.ConnFinished("https", "misskey", ModePassthrough, OutcomeOK, time.Second, 100, 1000)
	}
	m.ConnStarted("https")
	m.UnknownHost("https")
	m.ConnFinished("https", None, ModeNone, OutcomeUnknownHost, time.Millisecond, 0, 0)
	m.UpstreamHealth("misskey", "[2001:db8::2:64]:443", true)

	relay := httptest.NewServer(m.Handler())
	defer relay.Close()

	prom := promtest.Start(t, deployDir, strings.TrimPrefix(relay.URL, "http://"))
	prom.WaitFor(t, `relay46_connections_accepted_total{job="relay46",listener="https"}`, "4")
	prom.WaitFor(t, `relay46_connections_finished_total{route="misskey",outcome="ok"}`, "3")
	prom.WaitFor(t, `relay46_relayed_bytes_total{route="misskey",direction="upstream_to_client"}`, "3000")
	prom.WaitFor(t, `relay46_unknown_host_total`, "1")
	prom.WaitFor(t, `relay46_upstream_up{route="misskey"}`, "1")
	prom.WaitFor(t, `up{job="relay46"}`, "1")

	// Live: later traffic shows up in later scrapes.
	m.ConnStarted("https")
	prom.WaitFor(t, `relay46_connections_accepted_total{listener="https"}`, "5")
	prom.WaitFor(t, `relay46_connections_in_flight{listener="https"}`, "1")

	// The alert rules were loaded from the rule_files of the config.
	var rules struct {
		Groups []struct {
			Rules []struct{ Name, Health string }
		}
	}
	prom.Get(t, "/api/v1/rules", &rules)
	n := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s is unhealthy", r.Name)
			}
		}
	}
	if n != 7 {
		t.Errorf("Prometheus loaded %d rules, want 7", n)
	}

	t.Run("dashboard queries parse", func(t *testing.T) {
		var dash struct {
			Panels []struct {
				Title   string
				Targets []struct{ Expr string }
			}
		}
		if err := json.Unmarshal([]byte(readDeploy(t, "grafana-dashboard.json")), &dash); err != nil {
			t.Fatal(err)
		}
		grafana := strings.NewReplacer("$__rate_interval", "1m", "$job", ".*", "$instance", ".*")
		for _, p := range dash.Panels {
			for _, tg := range p.Targets {
				if err := prom.Query(grafana.Replace(tg.Expr)); err != nil {
					t.Errorf("panel %q: %v", p.Title, err)
				}
			}
		}
	})
}
