package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// ctl runs one relay46 command in-process and returns its exit code and output.
func ctl(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := realMainCtx(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestHealthAndReloadAgainstDaemon drives a real daemon's admin listener
// the way Docker's HEALTHCHECK and an operator do.
func TestHealthAndReloadAgainstDaemon(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	cfg := `listen: {https: "127.0.0.1:0", http: "127.0.0.1:0"}
admin: "127.0.0.1:0"
shutdown_grace: 1s
routes:
  - name: a
    hosts: [a.example]
    upstream: "[::1]:1"
`
	_, addrs, path, stop := startDaemon(t, cfg)
	admin := addrs[adminListener].String()

	if code, out, errOut := ctl("health", "-admin", admin); code != 0 || out != "ok\n" {
		t.Errorf("health: exit %d, %q %q", code, out, errOut)
	}
	if code, out, errOut := ctl("health", "-ready", "-admin", admin); code != 0 || out != "ready\n" {
		t.Errorf("health -ready: exit %d, %q %q", code, out, errOut)
	}

	if err := os.WriteFile(path, []byte(cfg+"  - name: b\n    hosts: [b.example]\n    upstream: \"[::1]:2\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := ctl("reload", "-admin", admin); code != 0 || out != "reloaded\n" {
		t.Errorf("good reload: exit %d, %q %q", code, out, errOut)
	}

	// A bad config: exit 1 with the config's own error, and the relay
	// still healthy on the old config.
	if err := os.WriteFile(path, []byte(cfg+"    colour: blue\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := ctl("reload", "-admin", admin)
	want := filepath.Base(path) + `:8: routes[0].colour: unknown key "colour"`
	if code != 1 || out != "" || !strings.Contains(errOut, "relay46 reload: POST http://"+admin+"/reload: admin listener answered 500 Internal Server Error") || !strings.Contains(errOut, want) {
		t.Errorf("bad reload: exit %d, stdout %q, stderr %q; want exit 1 and %q", code, out, errOut, want)
	}
	if code, _, errOut := ctl("health", "-ready", "-admin", admin); code != 0 {
		t.Errorf("health after a bad reload: exit %d %s", code, errOut)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := ctl("health", "-admin", admin); code != 1 || !strings.Contains(errOut, "connection refused") {
		t.Errorf("health of a stopped relay: exit %d, %q", code, errOut)
	}
}

func TestHealthFailures(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			http.Error(w, "listener https (:443) is not bound", http.StatusServiceUnavailable)
		case "/healthz":
			<-r.Context().Done() // never answers
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"health", "-ready", "-admin", srv.URL}, 1, "503 Service Unavailable: listener https (:443) is not bound"},
		{[]string{"health", "-timeout", "100ms", "-admin", srv.Listener.Addr().String()}, 1, "context deadline exceeded"},
		{[]string{"reload", "-admin", srv.Listener.Addr().String()}, 1, "404 Not Found"},
		{[]string{"health", "-admin", ""}, 1, "admin listener is disabled"},
		{[]string{"health", "-admin", "localhost"}, 1, `admin address "localhost"`},
		{[]string{"health", "extra"}, 2, "unexpected arguments"},
		{[]string{"reload", "-bogus"}, 2, "flag provided but not defined"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, errOut := ctl(tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, errOut, tc.code, tc.want)
			}
		})
	}
}

func TestAdminBaseURL(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:9046":         "http://127.0.0.1:9046",
		":9046":                  "http://127.0.0.1:9046",
		"0.0.0.0:9046":           "http://127.0.0.1:9046",
		"[::]:9046":              "http://[::1]:9046",
		"[2001:db8::46]:9046":    "http://[2001:db8::46]:9046",
		"admin.internal:9046":    "http://admin.internal:9046",
		"http://127.0.0.1:9046/": "http://127.0.0.1:9046",
	} {
		if got, err := adminBaseURL(addr); err != nil || got != want {
			t.Errorf("adminBaseURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
}

// The HEALTHCHECK has no shell and no curl: the command alone must work
// against the default admin address. This checks the default is the
// config's, so the image needs no flag.
func TestHealthDefaultAdmin(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:9046")
	if err != nil {
		t.Skipf("127.0.0.1:9046 is taken here: %v", err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })}
	go srv.Serve(ln)
	defer srv.Close()
	if code, out, errOut := ctl("health"); code != 0 || out != "ok\n" {
		t.Errorf("health with no flags: exit %d, %q %q", code, out, errOut)
	}
}
