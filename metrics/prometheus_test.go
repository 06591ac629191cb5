package metrics

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
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
	requireTool(t, prometheusPath)

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

	prom := startPrometheus(t, strings.TrimPrefix(relay.URL, "http://"))
	prom.waitFor(t, `relay46_connections_accepted_total{job="relay46",listener="https"}`, "4")
	prom.waitFor(t, `relay46_connections_finished_total{route="misskey",outcome="ok"}`, "3")
	prom.waitFor(t, `relay46_relayed_bytes_total{route="misskey",direction="upstream_to_client"}`, "3000")
	prom.waitFor(t, `relay46_unknown_host_total`, "1")
	prom.waitFor(t, `relay46_upstream_up{route="misskey"}`, "1")
	prom.waitFor(t, `up{job="relay46"}`, "1")

	// Live: later traffic shows up in later scrapes.
	m.ConnStarted("https")
	prom.waitFor(t, `relay46_connections_accepted_total{listener="https"}`, "5")
	prom.waitFor(t, `relay46_connections_in_flight{listener="https"}`, "1")

	// The alert rules were loaded from the rule_files of the config.
	var rules struct {
		Groups []struct {
			Rules []struct{ Name, Health string }
		}
	}
	prom.get(t, "/api/v1/rules", nil, &rules)
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
				var res queryResult
				if err := prom.query(grafana.Replace(tg.Expr), &res); err != nil {
					t.Errorf("panel %q: %v", p.Title, err)
				}
			}
		}
	})
}

type prometheusServer struct {
	base   string
	client *http.Client
}

// startPrometheus runs Prometheus on a free loopback port with a temp copy of
// the deploy config scraping target every second, and stops it at test end.
func startPrometheus(t *testing.T, target string) *prometheusServer {
	t.Helper()
	dir := t.TempDir()
	cfg := readDeploy(t, "prometheus.yml")
	for old, repl := range map[string]string{
		`"127.0.0.1:9046"`:         `"` + target + `"`,
		"scrape_interval: 15s":     "scrape_interval: 1s",
		"evaluation_interval: 15s": "evaluation_interval: 1s",
	} {
		if !strings.Contains(cfg, old) {
			t.Fatalf("deploy prometheus.yml no longer contains %q; update this test", old)
		}
		cfg = strings.ReplaceAll(cfg, old, repl)
	}
	write(t, filepath.Join(dir, "prometheus.yml"), cfg)
	write(t, filepath.Join(dir, "alerts.yml"), readDeploy(t, "alerts.yml"))

	// Prometheus cannot report a port it chose, so pick one and retry if
	// another process takes it first.
	var lastErr error
	for range 3 {
		addr := freePort(t)
		p, err := runPrometheus(t, dir, addr)
		if err == nil {
			return p
		}
		lastErr = err
	}
	t.Fatal(lastErr)
	return nil
}

func runPrometheus(t *testing.T, dir, addr string) (*prometheusServer, error) {
	cmd := exec.Command(prometheusPath,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--log.level=warn",
	)
	cmd.Dir = dir
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// Stop it gracefully; kill it if it takes more than 10s.
	stop := func() error {
		if err := cmd.Process.Signal(os.Interrupt); err != nil {
			return err
		}
		select {
		case err := <-exited:
			return err
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("killed: no exit 10s after SIGINT")
		}
	}

	p := &prometheusServer{
		base:   "http://" + addr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := p.client.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("prometheus exited before ready: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("prometheus not ready after 30s\n%s", logs.String())
		}
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("stopping prometheus: %v\n%s", err, logs.String())
		}
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	return p, nil
}

type queryResult struct {
	Status    string `json:"status"`
	Error     string `json:"error"`
	ErrorType string `json:"errorType"`
	Data      struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	} `json:"data"`
}

// query runs an instant query and fails on an API or PromQL error.
func (p *prometheusServer) query(q string, res *queryResult) error {
	resp, err := p.client.Get(p.base + "/api/v1/query?" + url.Values{"query": {q}}.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(res); err != nil {
		return fmt.Errorf("query %s: HTTP %d: %w", q, resp.StatusCode, err)
	}
	if res.Status != "success" {
		return fmt.Errorf("query %s: %s: %s", q, res.ErrorType, res.Error)
	}
	return nil
}

// waitFor queries q until it returns exactly one series with value want, for
// at most 30 seconds.
func (p *prometheusServer) waitFor(t *testing.T, q, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		var res queryResult
		err := p.query(q, &res)
		switch {
		case err != nil:
			last = err.Error()
		case len(res.Data.Result) != 1:
			last = fmt.Sprintf("%d series", len(res.Data.Result))
		default:
			last = fmt.Sprint(res.Data.Result[0].Value[1])
			if last == want {
				return
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("query %s: want %s, last got %s", q, want, last)
}

func (p *prometheusServer) get(t *testing.T, path string, params url.Values, v any) {
	t.Helper()
	resp, err := p.client.Get(p.base + path + "?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var env struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil || env.Status != "success" {
		t.Fatalf("GET %s: %s %v", path, env.Status, err)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		t.Fatal(err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// syncBuffer collects a child's output written from exec's copying goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
