// Package promtest runs a real Prometheus server (Debian's prometheus
// package) for tests, with the project's deploy/prometheus files, and
// queries its HTTP API. It is for _test.go files only.
//
//	prom := promtest.Start(t, "../deploy/prometheus", "127.0.0.1:9046")
//	prom.WaitFor(t, `up{job="relay46"}`, "1")
package promtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Paths of Debian's binaries.
const (
	PrometheusPath = "/usr/bin/prometheus"
	PromtoolPath   = "/usr/bin/promtool"
)

// RequireTool returns path if it is an executable. Otherwise the test
// fails when CI=true, so CI can never pass by skipping, and skips elsewhere.
func RequireTool(t testing.TB, path string) string {
	t.Helper()
	msg, fail := ToolMissing(path, os.Getenv)
	switch {
	case msg == "":
		return path
	case fail:
		t.Fatal(msg)
	default:
		t.Skip(msg)
	}
	return path
}

// ToolMissing says why path is unusable ("" if it is usable) and whether
// that must fail the test rather than skip it.
func ToolMissing(path string, getenv func(string) string) (msg string, fail bool) {
	if _, err := exec.LookPath(path); err != nil {
		return path + " not found (install Debian's prometheus package); with CI=true this is a failure: " + err.Error(),
			getenv("CI") == "true"
	}
	return "", false
}

// ReadDeploy returns a file of the deploy/prometheus directory dir.
func ReadDeploy(t testing.TB, dir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Server is a running Prometheus.
type Server struct {
	base   string
	client *http.Client
}

// Start runs Prometheus on a free loopback port with temp copies of
// deployDir's prometheus.yml, scraping target every second, and alerts.yml,
// and stops it with SIGINT at test end.
func Start(t testing.TB, deployDir, target string) *Server {
	t.Helper()
	RequireTool(t, PrometheusPath)
	dir := t.TempDir()
	cfg := ReadDeploy(t, deployDir, "prometheus.yml")
	for _, r := range [][2]string{
		{`"127.0.0.1:9046"`, strconv.Quote(target)},
		{"scrape_interval: 15s", "scrape_interval: 1s"},
		{"evaluation_interval: 15s", "evaluation_interval: 1s"},
		{"rule_files:\n  - alerts.yml\n", "rule_files:\n  - " + filepath.Join(dir, "alerts.yml") + "\n"},
	} {
		if !strings.Contains(cfg, r[0]) {
			t.Fatalf("deploy/prometheus/prometheus.yml no longer contains %q; update promtest", r[0])
		}
		cfg = strings.ReplaceAll(cfg, r[0], r[1])
	}
	for name, content := range map[string]string{"prometheus.yml": cfg, "alerts.yml": ReadDeploy(t, deployDir, "alerts.yml")} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Prometheus cannot report a port it chose: pick one, retry if taken.
	var err error
	for range 3 {
		var p *Server
		if p, err = run(t, dir, freeAddr(t)); err == nil {
			return p
		}
	}
	t.Fatal(err)
	return nil
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func run(t testing.TB, dir, addr string) (*Server, error) {
	cmd := exec.Command(PrometheusPath, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+addr, "--log.level=warn")
	var logs syncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-exited:
			return err
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			return errors.New("killed: still running 10s after SIGINT")
		}
	}
	p := &Server{base: "http://" + addr,
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if code, _, err := p.fetch("/-/ready"); err == nil && code == http.StatusOK {
			break
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
		} else if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	return p, nil
}

func (p *Server) fetch(path string) (int, []byte, error) {
	resp, err := p.client.Get(p.base + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Get decodes the data of a successful API response into v.
func (p *Server) Get(t testing.TB, path string, v any) {
	t.Helper()
	if err := p.API(path, v); err != nil {
		t.Fatal(err)
	}
}

// API GETs path and decodes the data of a successful response into v.
func (p *Server) API(path string, v any) error {
	code, b, err := p.fetch(path)
	if err != nil {
		return err
	}
	var env struct {
		Status, Error string
		Data          json.RawMessage
	}
	if err := json.Unmarshal(b, &env); err != nil || env.Status != "success" {
		return fmt.Errorf("GET %s: HTTP %d %s %v", path, code, b, err)
	}
	return json.Unmarshal(env.Data, v)
}

// Query runs the instant query q and reports an error for a query
// Prometheus cannot evaluate.
func (p *Server) Query(q string) error {
	var res json.RawMessage
	return p.API("/api/v1/query?"+url.Values{"query": {q}}.Encode(), &res)
}

// WaitFor runs the instant query q until it returns exactly one series
// with value want, for at most 30 seconds.
func (p *Server) WaitFor(t testing.TB, q, want string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		var res struct {
			Result []struct{ Value [2]any }
		}
		switch err := p.API("/api/v1/query?"+url.Values{"query": {q}}.Encode(), &res); {
		case err != nil:
			last = err.Error()
		case len(res.Result) != 1:
			last = fmt.Sprintf("%d series", len(res.Result))
		default:
			if last = fmt.Sprint(res.Result[0].Value[1]); last == want {
				return
			}
		}
	}
	t.Fatalf("query %s: want %s, last got %s", q, want, last)
}

// syncBuffer collects a child's output written from exec's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
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
