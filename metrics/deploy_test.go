package metrics

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// deployDir holds the Prometheus config, alert rules and dashboard users copy.
const deployDir = "../deploy/prometheus"

func TestDeployPromtoolCheckConfig(t *testing.T) {
	// Also checks the rule files it names.
	if out, ok := runPromtool(t, deployDir, nil, "check", "config", "prometheus.yml"); !ok {
		t.Errorf("promtool check config failed:\n%s", out)
	}
}

func TestDeployPromtoolCheckRules(t *testing.T) {
	out, ok := runPromtool(t, deployDir, nil, "check", "rules", "alerts.yml")
	if !ok {
		t.Errorf("promtool check rules failed:\n%s", out)
	}
	if !strings.Contains(out, "7 rules found") {
		t.Errorf("expected 7 rules:\n%s", out)
	}
}

// TestDeployPromtoolTestRules runs alerts_test.yml, which shows each alert
// firing and not firing.
func TestDeployPromtoolTestRules(t *testing.T) {
	if out, ok := runPromtool(t, deployDir, nil, "test", "rules", "alerts_test.yml"); !ok {
		t.Errorf("promtool test rules failed:\n%s", out)
	}
}

// TestDeployAlertsAreAllTested checks every alert in alerts.yml appears in
// alerts_test.yml both firing (exp_alerts with labels) and not firing
// (exp_alerts: []).
func TestDeployAlertsAreAllTested(t *testing.T) {
	rules := readDeploy(t, "alerts.yml")
	tests := readDeploy(t, "alerts_test.yml")
	alerts := regexp.MustCompile(`(?m)^\s*- alert: (\S+)`).FindAllStringSubmatch(rules, -1)
	if len(alerts) != 7 {
		t.Fatalf("found %d alerts in alerts.yml, want 7", len(alerts))
	}
	for _, a := range alerts {
		name := a[1]
		fire := regexp.MustCompile(`alertname: ` + name + `\n\s*exp_alerts:\n\s*- exp_labels:`)
		quiet := regexp.MustCompile(`alertname: ` + name + `\n\s*exp_alerts: \[\]`)
		if !fire.MatchString(tests) {
			t.Errorf("%s: no test shows it firing", name)
		}
		if !quiet.MatchString(tests) {
			t.Errorf("%s: no test shows it not firing", name)
		}
		block := rules[strings.Index(rules, a[0]):]
		if next := strings.Index(block[len(a[0]):], "- alert:"); next >= 0 {
			block = block[:len(a[0])+next]
		}
		for _, want := range []string{"severity:", "summary:", "description:"} {
			if !strings.Contains(block, want) {
				t.Errorf("%s: missing %s", name, want)
			}
		}
	}
}

// TestDeployUsesExportedMetrics checks that every relay46_ series named in
// the alerts and the dashboard is one this package exports, so a rename here
// cannot silently break an alert.
func TestDeployUsesExportedMetrics(t *testing.T) {
	exported := exportedNames(t)
	re := regexp.MustCompile(`\brelay46_[a-z0-9_]+`)
	for _, file := range []string{"alerts.yml", "grafana-dashboard.json"} {
		used := re.FindAllString(readDeploy(t, file), -1)
		if len(used) == 0 {
			t.Errorf("%s names no relay46 series", file)
		}
		for _, name := range used {
			if !exported[name] {
				t.Errorf("%s uses %s, which relay46 does not export", file, name)
			}
		}
	}
}

// TestDeployDashboard checks the dashboard's shape: queries use the
// datasource variable and the job/instance filters, and panels cover the
// series the issue asks for.
func TestDeployDashboard(t *testing.T) {
	var dash struct {
		UID        string `json:"uid"`
		Templating struct {
			List []struct{ Name string } `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int    `json:"id"`
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			GridPos struct{ X, W int } `json:"gridPos"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(readDeploy(t, "grafana-dashboard.json")), &dash); err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, v := range dash.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "job", "instance"} {
		if !slices.Contains(vars, want) {
			t.Errorf("dashboard lacks variable $%s", want)
		}
	}
	ids := map[int]bool{}
	var exprs []string
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("duplicate panel id %d", p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q overflows the grid", p.Title)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use $datasource", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if !strings.Contains(tg.Expr, `job=~"$job", instance=~"$instance"`) {
				t.Errorf("panel %q query ignores $job/$instance: %s", p.Title, tg.Expr)
			}
			exprs = append(exprs, tg.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, want := range []string{
		"relay46_connections_accepted_total", "relay46_connections_in_flight", "relay46_relayed_bytes_total",
		"relay46_connection_duration_seconds_bucket", "relay46_upstream_dial_failures_total", "relay46_upstream_up",
		"relay46_http_requests_total", "relay46_certificate_expiry_timestamp_seconds", "relay46_acme_attempts_total",
		"relay46_config_reloads_total",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("dashboard shows no %s", want)
		}
	}
}

func readDeploy(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exportedNames returns every series name relay46 exports, histograms
// expanded to their _bucket, _sum and _count series.
func exportedNames(t *testing.T) map[string]bool {
	t.Helper()
	reg := prometheus.NewRegistry()
	exercise(New(reg, BuildInfo{}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
		if mf.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_sum", "_count"} {
				names[mf.GetName()+s] = true
			}
		}
	}
	return names
}
