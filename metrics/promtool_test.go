package metrics

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"github.com/relay46/relay46/internal/promtest"
)

// Debian's prometheus package provides these; .ci/run installs it.
const ()

func TestToolMissingFailsOnlyInCI(t *testing.T) {
	env := func(v string) func(string) string {
		return func(k string) string {
			if k == "CI" {
				return v
			}
			return ""
		}
	}
	if msg, fail := promtest.ToolMissing("/nonexistent/promtool", env("true")); msg == "" || !fail {
		t.Errorf("missing tool with CI=true: msg %q, fail %v; want a failure", msg, fail)
	}
	if msg, fail := promtest.ToolMissing("/nonexistent/promtool", env("")); msg == "" || fail {
		t.Errorf("missing tool without CI: msg %q, fail %v; want a skip", msg, fail)
	}
	if msg, _ := promtest.ToolMissing("/bin/sh", env("true")); msg != "" {
		t.Errorf("present tool reported missing: %s", msg)
	}
}

// runPromtool runs promtool with args in dir, feeding stdin, and returns its
// combined output and whether it exited 0.
func runPromtool(t *testing.T, dir string, stdin []byte, args ...string) (string, bool) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), promtest.RequireTool(t, promtest.PromtoolPath), args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatalf("running promtool %v: %v", args, err)
		}
	}
	return string(out), err == nil
}

// TestPromtoolCheckMetrics lints relay46's real /metrics output, served over
// HTTP on loopback, with every relay46 series present.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtest.RequireTool(t, promtest.PromtoolPath)
	m, _ := newTestMetrics(t)
	exercise(m)

	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d, %v", resp.StatusCode, err)
	}
	srv.Client().CloseIdleConnections()
	for _, name := range []string{"relay46_connections_finished_total", "relay46_upstream_dial_duration_seconds_bucket", "relay46_build_info", "go_goroutines"} {
		if !bytes.Contains(body, []byte(name)) {
			t.Fatalf("/metrics lacks %s; the lint would prove nothing", name)
		}
	}

	if out, ok := runPromtool(t, ".", body, "check", "metrics"); !ok {
		t.Errorf("promtool check metrics failed:\n%s", out)
	}

	// The check has teeth: a counter without _total fails it.
	bad := "# TYPE relay46_things counter\nrelay46_things 1\n"
	if out, ok := runPromtool(t, ".", []byte(bad), "check", "metrics"); ok || !strings.Contains(out, "_total") {
		t.Errorf("promtool check metrics accepted a counter without _total:\n%s", out)
	}
}
