package admin

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relay46/relay46/metrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs s on a loopback listener for the duration of the test.
func serve(t *testing.T, s *Server) (base string, client *http.Client) {
	t.Helper()
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		srv.Client().CloseIdleConnections()
		srv.Close()
	})
	return srv.URL, srv.Client()
}

func do(t *testing.T, c *http.Client, method, url string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}

func TestRoutes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "v9.9.9"})
	m.ConnStarted("https")

	tests := []struct {
		name       string
		server     Server
		method     string
		path       string
		wantCode   int
		wantBody   string // substring
		wantHeader map[string]string
	}{
		{name: "healthz", method: "GET", path: "/healthz", wantCode: 200, wantBody: "ok\n",
			wantHeader: map[string]string{"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-store"}},
		{name: "healthz HEAD", method: "HEAD", path: "/healthz", wantCode: 200},
		{name: "healthz POST", method: "POST", path: "/healthz", wantCode: 405},
		{name: "readyz without Ready", method: "GET", path: "/readyz", wantCode: 200, wantBody: "ready"},
		{name: "readyz ready", server: Server{Ready: func() error { return nil }},
			method: "GET", path: "/readyz", wantCode: 200, wantBody: "ready"},
		{name: "readyz not ready", server: Server{Ready: func() error { return errors.New("route misskey: no usable upstream") }},
			method: "GET", path: "/readyz", wantCode: 503, wantBody: "route misskey: no usable upstream\n"},
		{name: "metrics", server: Server{Metrics: m}, method: "GET", path: "/metrics", wantCode: 200,
			wantBody: `relay46_connections_accepted_total{listener="https"} 1`},
		{name: "metrics build info", server: Server{Metrics: m}, method: "GET", path: "/metrics", wantCode: 200,
			wantBody: `version="v9.9.9"`},
		{name: "metrics nil", method: "GET", path: "/metrics", wantCode: 404},
		{name: "reload unset", method: "POST", path: "/reload", wantCode: 404},
		{name: "reload ok", server: Server{Reload: func() error { return nil }},
			method: "POST", path: "/reload", wantCode: 200, wantBody: "reloaded\n"},
		{name: "reload error", server: Server{Reload: func() error { return errors.New("config: route blog: bad upstream") }},
			method: "POST", path: "/reload", wantCode: 500, wantBody: "config: route blog: bad upstream\n"},
		{name: "reload GET", server: Server{Reload: func() error { return nil }},
			method: "GET", path: "/reload", wantCode: 405, wantHeader: map[string]string{"Allow": "POST"}},
		{name: "reload PUT", server: Server{Reload: func() error { return nil }},
			method: "PUT", path: "/reload", wantCode: 405},
		{name: "pprof off", method: "GET", path: "/debug/pprof/", wantCode: 404},
		{name: "pprof off goroutine", method: "GET", path: "/debug/pprof/goroutine?debug=1", wantCode: 404},
		{name: "pprof index", server: Server{Pprof: true}, method: "GET", path: "/debug/pprof/", wantCode: 200, wantBody: "goroutine"},
		{name: "pprof goroutine", server: Server{Pprof: true}, method: "GET", path: "/debug/pprof/goroutine?debug=1", wantCode: 200, wantBody: "goroutine profile"},
		{name: "pprof cmdline", server: Server{Pprof: true}, method: "GET", path: "/debug/pprof/cmdline", wantCode: 200},
		{name: "unknown path", method: "GET", path: "/", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, c := serve(t, &tt.server)
			code, h, body := do(t, c, tt.method, base+tt.path)
			if code != tt.wantCode {
				t.Errorf("%s %s: status %d, want %d; body %q", tt.method, tt.path, code, tt.wantCode, body)
			}
			if !strings.Contains(body, tt.wantBody) {
				t.Errorf("%s %s: body %q lacks %q", tt.method, tt.path, body, tt.wantBody)
			}
			for k, v := range tt.wantHeader {
				if got := h.Get(k); got != v {
					t.Errorf("%s %s: header %s = %q, want %q", tt.method, tt.path, k, got, v)
				}
			}
		})
	}
}

// TestReadyzFollowsState checks readiness is evaluated per request.
func TestReadyzFollowsState(t *testing.T) {
	var notReady atomic.Pointer[error]
	errNotBound := errors.New("listener https not bound")
	notReady.Store(&errNotBound)
	base, c := serve(t, &Server{Ready: func() error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	}})

	if code, _, body := do(t, c, "GET", base+"/readyz"); code != 503 || body != "listener https not bound\n" {
		t.Errorf("before bind: %d %q", code, body)
	}
	notReady.Store(nil)
	if code, _, body := do(t, c, "GET", base+"/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("after bind: %d %q", code, body)
	}
}

func TestReloadCallsOnceAndLogs(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	var calls atomic.Int32
	fail := atomic.Bool{}
	base, c := serve(t, &Server{
		Logger: zap.New(core),
		Reload: func() error {
			calls.Add(1)
			if fail.Load() {
				return errors.New("config: parse error at line 3")
			}
			return nil
		},
	})

	if code, _, _ := do(t, c, "POST", base+"/reload"); code != 200 {
		t.Fatalf("reload: %d", code)
	}
	fail.Store(true)
	if code, _, _ := do(t, c, "POST", base+"/reload"); code != 500 {
		t.Fatalf("failing reload: %d", code)
	}
	do(t, c, "GET", base+"/reload") // 405: must not reload
	if n := calls.Load(); n != 2 {
		t.Errorf("Reload called %d times, want 2", n)
	}

	if n := logs.FilterMessage("config reloaded via admin").Len(); n != 1 {
		t.Errorf("%d success logs, want 1", n)
	}
	failed := logs.FilterMessage("config reload via admin failed").All()
	if len(failed) != 1 {
		t.Fatalf("%d failure logs, want 1", len(failed))
	}
	if got := failed[0].ContextMap()["error"]; got != "config: parse error at line 3" {
		t.Errorf("logged error %v", got)
	}
	if failed[0].Level != zap.ErrorLevel {
		t.Errorf("failure logged at %v", failed[0].Level)
	}
}

// TestReloadSerialized sends concurrent reloads and checks Reload never runs
// twice at once.
func TestReloadSerialized(t *testing.T) {
	var running, overlaps atomic.Int32
	base, c := serve(t, &Server{Reload: func() error {
		if running.Add(1) > 1 {
			overlaps.Add(1)
		}
		time.Sleep(5 * time.Millisecond)
		running.Add(-1)
		return nil
	}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", base+"/reload", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		})
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		t.Errorf("%d overlapping Reload calls", n)
	}
}

// TestIPv6Loopback serves the admin handler on [::1], as an admin address of
// "[::1]:9046" would.
func TestIPv6Loopback(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	srv := &http.Server{Handler: (&Server{}).Handler(), ReadHeaderTimeout: time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	code, _, body := do(t, c, "GET", "http://"+ln.Addr().String()+"/healthz")
	if code != 200 || body != "ok\n" {
		t.Errorf("healthz over [::1]: %d %q", code, body)
	}
	srv.Close()
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
