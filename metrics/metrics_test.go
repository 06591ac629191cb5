package metrics

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestMetrics(t *testing.T, opts ...Option) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return New(reg, BuildInfo{Version: "v1.2.3", Commit: "abc123", GoVersion: "go1.26"}, opts...), reg
}

func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	return testutil.ToFloat64(c)
}

func TestNilReceiverIsSafe(t *testing.T) {
	var m *Metrics
	m.Listening("https")
	m.ConnStarted("https")
	m.ConnFinished("https", "r", ModePassthrough, OutcomeOK, time.Second, 1, 2)
	m.PeekFailed("https", PeekTimeout)
	m.UnknownHost("https")
	m.Refused("https", RefusedGlobalLimit)
	m.DialDone("r", time.Millisecond, errors.New("refused"))
	m.UpstreamHealth("r", "[2001:db8::1]:443", true)
	m.UpstreamRemoved("r", "[2001:db8::1]:443")
	m.UpstreamAddrChanged("r")
	m.HTTPRequest("r", "GET", 200, time.Millisecond)
	m.CertExpiry("h.example", time.Now())
	m.CertRemoved("h.example")
	m.ACMEAttempt(ACMEObtain, ResultOK)
	m.ConfigReload(true)
	m.ConfigLoaded()

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("nil Metrics handler: status %d, want 404", rec.Code)
	}
}

// TestKnownTraffic replays the calls the relay makes for one passthrough
// connection, one terminated connection with three requests, an unknown SNI,
// a dial failure, a peek failure and a refusal, and checks every count.
func TestKnownTraffic(t *testing.T) {
	m, reg := newTestMetrics(t)
	m.Listening("https")
	m.Listening("http")

	// Passthrough: dialed, relayed 1000 bytes up and 5000 down.
	m.ConnStarted("https")
	m.DialDone("misskey", 3*time.Millisecond, nil)
	m.ConnFinished("https", "misskey", ModePassthrough, OutcomeOK, 2*time.Second, 1000, 5000)

	// Terminated: three requests on one connection.
	m.ConnStarted("https")
	m.HTTPRequest("blog", "GET", 200, 10*time.Millisecond)
	m.HTTPRequest("blog", "GET", 304, 5*time.Millisecond)
	m.HTTPRequest("blog", "POST", 502, time.Second)
	m.ConnFinished("https", "blog", ModeTerminate, OutcomeOK, 3*time.Second, 700, 9000)

	// Unknown SNI.
	m.ConnStarted("https")
	m.UnknownHost("https")
	m.ConnFinished("https", None, ModeNone, OutcomeUnknownHost, time.Millisecond, 0, 0)

	// Dial failure.
	m.ConnStarted("https")
	m.DialDone("misskey", 5*time.Second, errors.New("i/o timeout"))
	m.ConnFinished("https", "misskey", ModePassthrough, OutcomeDialFailed, 5*time.Second, 0, 0)

	// Peek failure on :80 and a refusal.
	m.ConnStarted("http")
	m.PeekFailed("http", PeekTimeout)
	m.ConnFinished("http", None, ModeNone, OutcomePeekFailed, 5*time.Second, 0, 0)
	m.Refused("https", RefusedPerSource)

	// One connection still open.
	m.ConnStarted("https")

	checks := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"accepted https", m.connAccepted.WithLabelValues("https"), 5},
		{"accepted http", m.connAccepted.WithLabelValues("http"), 1},
		{"in flight https", m.connInFlight.WithLabelValues("https"), 1},
		{"in flight http", m.connInFlight.WithLabelValues("http"), 0},
		{"finished passthrough ok", m.connFinished.WithLabelValues("https", "misskey", "passthrough", "ok"), 1},
		{"finished terminate ok", m.connFinished.WithLabelValues("https", "blog", "terminate", "ok"), 1},
		{"finished unknown host", m.connFinished.WithLabelValues("https", "none", "none", "unknown_host"), 1},
		{"finished dial failed", m.connFinished.WithLabelValues("https", "misskey", "passthrough", "dial_failed"), 1},
		{"finished peek failed", m.connFinished.WithLabelValues("http", "none", "none", "peek_failed"), 1},
		{"bytes misskey up", m.relayedBytes.WithLabelValues("misskey", "client_to_upstream"), 1000},
		{"bytes misskey down", m.relayedBytes.WithLabelValues("misskey", "upstream_to_client"), 5000},
		{"bytes blog up", m.relayedBytes.WithLabelValues("blog", "client_to_upstream"), 700},
		{"bytes blog down", m.relayedBytes.WithLabelValues("blog", "upstream_to_client"), 9000},
		{"unknown host", m.unknownHost.WithLabelValues("https"), 1},
		{"peek timeout", m.peekFailures.WithLabelValues("http", "timeout"), 1},
		{"refused per source", m.refused.WithLabelValues("https", "per_source"), 1},
		{"dial failures", m.dialFailures.WithLabelValues("misskey"), 1},
		{"http GET 2xx", m.httpRequests.WithLabelValues("blog", "GET", "2xx"), 1},
		{"http GET 3xx", m.httpRequests.WithLabelValues("blog", "GET", "3xx"), 1},
		{"http POST 5xx", m.httpRequests.WithLabelValues("blog", "POST", "5xx"), 1},
	}
	for _, c := range checks {
		if got := value(t, c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}

	// No byte series for the unrouted connections.
	if n := testutil.CollectAndCount(m.relayedBytes); n != 4 {
		t.Errorf("relayed_bytes series = %d, want 4", n)
	}

	// Histograms: counts and sums per label set.
	want := `
# HELP relay46_upstream_dial_duration_seconds Time to dial an upstream, successful or not.
# TYPE relay46_upstream_dial_duration_seconds histogram
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.0005"} 0
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.001"} 0
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.0025"} 0
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.005"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.01"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.025"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.05"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.1"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.25"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="0.5"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="1"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="2.5"} 1
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="5"} 2
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="10"} 2
relay46_upstream_dial_duration_seconds_bucket{route="misskey",le="+Inf"} 2
relay46_upstream_dial_duration_seconds_sum{route="misskey"} 5.003
relay46_upstream_dial_duration_seconds_count{route="misskey"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "relay46_upstream_dial_duration_seconds"); err != nil {
		t.Error(err)
	}
	if n := histCount(t, reg, "relay46_connection_duration_seconds", map[string]string{"listener": "https", "mode": "none"}); n != 1 {
		t.Errorf("connection_duration count{https,none} = %d, want 1", n)
	}
	if n := histCount(t, reg, "relay46_connection_duration_seconds", map[string]string{"listener": "https", "mode": "passthrough"}); n != 2 {
		t.Errorf("connection_duration count{https,passthrough} = %d, want 2", n)
	}
	if n := histCount(t, reg, "relay46_http_request_duration_seconds", map[string]string{"route": "blog"}); n != 3 {
		t.Errorf("http_request_duration count{blog} = %d, want 3", n)
	}
}

// histCount returns the sample count of the histogram series with exactly labels.
func histCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, mt := range mf.GetMetric() {
			if len(mt.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range mt.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue metric
				}
			}
			return mt.GetHistogram().GetSampleCount()
		}
	}
	return 0
}

func TestFixedSetsFoldToOther(t *testing.T) {
	m, _ := newTestMetrics(t)
	m.HTTPRequest("blog", "get", 200, 0)    // methods are case-sensitive
	m.HTTPRequest("blog", "TRACE", 204, 0)  // not in the set
	m.HTTPRequest("blog", "GET", 0, 0)      // no status
	m.HTTPRequest("blog", "GET", 600, 0)    // out of range
	m.HTTPRequest("blog", "DELETE", 199, 0) // 1xx
	m.PeekFailed("https", "gremlins")
	m.Refused("https", "because")
	m.ACMEAttempt("revoke", "maybe")
	m.ConnStarted("https")
	m.ConnFinished("https", "", "tunnel", "exploded", time.Second, 0, 0)

	checks := []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"method other 2xx", m.httpRequests.WithLabelValues("blog", "other", "2xx"), 2},
		{"GET other code", m.httpRequests.WithLabelValues("blog", "GET", "other"), 2},
		{"DELETE 1xx", m.httpRequests.WithLabelValues("blog", "DELETE", "1xx"), 1},
		{"peek other", m.peekFailures.WithLabelValues("https", "other"), 1},
		{"refused other", m.refused.WithLabelValues("https", "other"), 1},
		{"acme other", m.acmeAttempts.WithLabelValues("other", "other"), 1},
		{"finished other", m.connFinished.WithLabelValues("https", "none", "other", "other"), 1},
	}
	for _, c := range checks {
		if got := value(t, c.c); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestBadInputsDoNotPanic(t *testing.T) {
	m, _ := newTestMetrics(t)
	m.ConnStarted("https")
	// Negative counts (a caller subtracting wrongly) would make Counter.Add panic.
	m.ConnFinished("https", "r", ModePassthrough, OutcomeOK, -time.Second, -1, -2)
	m.DialDone("r", -time.Second, nil)
	m.HTTPRequest("r", "GET", 200, -time.Second)
	if n := testutil.CollectAndCount(m.relayedBytes); n != 0 {
		t.Errorf("relayed_bytes series = %d, want 0", n)
	}
}

func TestUpstreamSeries(t *testing.T) {
	m, _ := newTestMetrics(t)
	oldAddr, newAddr := "[2001:db8:1::2:64]:443", "[2001:db8:2::2:64]:443"
	m.UpstreamHealth("misskey", oldAddr, true)
	m.UpstreamHealth("misskey", oldAddr, false)
	if got := value(t, m.upstreamUp.WithLabelValues("misskey", oldAddr)); got != 0 {
		t.Errorf("upstream_up old = %v, want 0", got)
	}
	// The home's prefix changes: new address up, old one forgotten.
	m.UpstreamAddrChanged("misskey")
	m.UpstreamHealth("misskey", newAddr, true)
	m.UpstreamRemoved("misskey", oldAddr)
	if n := testutil.CollectAndCount(m.upstreamUp); n != 1 {
		t.Errorf("upstream_up series = %d, want 1 after removing the old address", n)
	}
	if got := value(t, m.upstreamUp.WithLabelValues("misskey", newAddr)); got != 1 {
		t.Errorf("upstream_up new = %v, want 1", got)
	}
	if got := value(t, m.addrChanges.WithLabelValues("misskey")); got != 1 {
		t.Errorf("address changes = %v, want 1", got)
	}
}

func TestCertExpiry(t *testing.T) {
	m, _ := newTestMetrics(t)
	notAfter := time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	m.CertExpiry("blog.example.org", notAfter)
	m.CertExpiry("old.example.org", notAfter)
	if got := value(t, m.certExpiry.WithLabelValues("blog.example.org")); got != float64(notAfter.Unix()) {
		t.Errorf("expiry = %v, want %v", got, notAfter.Unix())
	}
	m.CertRemoved("old.example.org")
	m.CertExpiry("blog.example.org", time.Time{})
	if n := testutil.CollectAndCount(m.certExpiry); n != 0 {
		t.Errorf("expiry series = %d, want 0 after removal", n)
	}
}

func TestACMEAndReloadSeriesStartAtZero(t *testing.T) {
	m, reg := newTestMetrics(t)
	want := `
# HELP relay46_acme_attempts_total ACME certificate obtain and renew attempts, by result.
# TYPE relay46_acme_attempts_total counter
relay46_acme_attempts_total{kind="obtain",result="error"} 0
relay46_acme_attempts_total{kind="obtain",result="ok"} 1
relay46_acme_attempts_total{kind="renew",result="error"} 2
relay46_acme_attempts_total{kind="renew",result="ok"} 0
# HELP relay46_config_reloads_total Config reloads, by result.
# TYPE relay46_config_reloads_total counter
relay46_config_reloads_total{result="error"} 0
relay46_config_reloads_total{result="ok"} 0
`
	m.ACMEAttempt(ACMEObtain, ResultOK)
	m.ACMEAttempt(ACMERenew, ResultErr)
	m.ACMEAttempt(ACMERenew, ResultErr)
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"relay46_acme_attempts_total", "relay46_config_reloads_total"); err != nil {
		t.Error(err)
	}
}

func TestConfigReload(t *testing.T) {
	now := time.Unix(1_700_000_000, 500_000_000)
	m, _ := newTestMetrics(t, WithClock(func() time.Time { return now }))

	m.ConfigLoaded()
	if got := value(t, m.reloadSuccess); got != 1_700_000_000.5 {
		t.Errorf("last success after startup = %v, want 1700000000.5", got)
	}
	if got := value(t, m.reloadOK); got != 1 {
		t.Errorf("last reload successful = %v, want 1", got)
	}

	now = now.Add(time.Hour)
	m.ConfigReload(false)
	if got := value(t, m.reloadOK); got != 0 {
		t.Errorf("last reload successful after failure = %v, want 0", got)
	}
	if got := value(t, m.reloadSuccess); got != 1_700_000_000.5 {
		t.Errorf("last success moved on failure: %v", got)
	}

	now = now.Add(time.Hour)
	m.ConfigReload(true)
	if got := value(t, m.reloadSuccess); got != 1_700_007_200.5 {
		t.Errorf("last success after reload = %v, want 1700007200.5", got)
	}
	if got := value(t, m.reloadOK); got != 1 {
		t.Errorf("last reload successful = %v, want 1", got)
	}
	if got := value(t, m.reloads.WithLabelValues("ok")); got != 1 {
		t.Errorf("reloads ok = %v, want 1 (startup is not a reload)", got)
	}
	if got := value(t, m.reloads.WithLabelValues("error")); got != 1 {
		t.Errorf("reloads error = %v, want 1", got)
	}
}

func TestBuildInfo(t *testing.T) {
	_, reg := newTestMetrics(t)
	want := `
# HELP relay46_build_info Always 1; labels describe the running relay46 build.
# TYPE relay46_build_info gauge
relay46_build_info{goversion="go1.26",revision="abc123",version="v1.2.3"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "relay46_build_info"); err != nil {
		t.Error(err)
	}

	reg = prometheus.NewRegistry()
	New(reg, BuildInfo{})
	if n, err := testutil.GatherAndCount(reg, "relay46_build_info"); err != nil || n != 1 {
		t.Fatalf("build_info series = %d, %v", n, err)
	}
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "relay46_build_info" {
			continue
		}
		for _, lp := range mf.GetMetric()[0].GetLabel() {
			if lp.GetValue() == "" {
				t.Errorf("build_info label %s is empty", lp.GetName())
			}
		}
	}
}

func TestRegistersRuntimeCollectors(t *testing.T) {
	_, reg := newTestMetrics(t)
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if n, err := testutil.GatherAndCount(reg, name); err != nil || n != 1 {
			t.Errorf("%s: %d series, %v", name, n, err)
		}
	}
}

func TestNewTwiceOnOneRegistryPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	New(reg, BuildInfo{})
	defer func() {
		if recover() == nil {
			t.Error("second New on the same registry did not panic")
		}
	}()
	New(reg, BuildInfo{})
}

// TestLint runs client_golang's promlint over every series relay46 exports.
func TestLint(t *testing.T) {
	m, reg := newTestMetrics(t)
	exercise(m)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "relay46_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	m, _ := newTestMetrics(t)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 500 {
				m.ConnStarted("https")
				m.HTTPRequest("blog", "GET", 200, time.Millisecond)
				m.ConnFinished("https", "blog", ModeTerminate, OutcomeOK, time.Millisecond, 10, 20)
			}
		})
	}
	wg.Wait()
	if got := value(t, m.connAccepted.WithLabelValues("https")); got != 8000 {
		t.Errorf("accepted = %v, want 8000", got)
	}
	if got := value(t, m.connInFlight.WithLabelValues("https")); got != 0 {
		t.Errorf("in flight = %v, want 0", got)
	}
	if got := value(t, m.relayedBytes.WithLabelValues("blog", "upstream_to_client")); got != 160000 {
		t.Errorf("bytes = %v, want 160000", got)
	}
}

func TestHandlerServesTextFormat(t *testing.T) {
	m, _ := newTestMetrics(t)
	m.ConnStarted("https")
	body, ctype := scrape(t, m.Handler())
	if !strings.HasPrefix(ctype, "text/plain") {
		t.Errorf("Content-Type = %q, want text/plain", ctype)
	}
	if !strings.Contains(body, `relay46_connections_accepted_total{listener="https"} 1`) {
		t.Errorf("accepted counter missing from /metrics:\n%s", body)
	}
}

// failingCollector always fails, as a broken collector in a future change might.
type failingCollector struct{ desc *prometheus.Desc }

func (f failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(f.desc, errors.New("collector broke"))
}

func TestHandlerLogsErrorsAndServesTheRest(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	m, reg := newTestMetrics(t, WithLogger(zap.New(core)))
	reg.MustRegister(failingCollector{prometheus.NewDesc("relay46_broken", "Broken.", nil, nil)})
	m.ConnStarted("https")

	body, _ := scrape(t, m.Handler())
	if !strings.Contains(body, `relay46_connections_accepted_total{listener="https"} 1`) {
		t.Errorf("healthy metrics not served alongside the failing collector:\n%s", body)
	}
	entries := logs.FilterMessage("serving metrics failed").All()
	if len(entries) != 1 {
		t.Fatalf("logged %d errors, want 1: %v", len(entries), logs.All())
	}
	fields := entries[0].ContextMap()
	if !strings.Contains(fields["error"].(string), "collector broke") || fields["stage"] != "error gathering metrics" {
		t.Errorf("log fields = %v", fields)
	}
	if got := value(t, mustErrCounter(t, reg)); got != 1 {
		t.Errorf("promhttp_metric_handler_errors_total{cause=gathering} = %v, want 1", got)
	}
}

func mustErrCounter(t *testing.T, reg *prometheus.Registry) prometheus.Collector {
	t.Helper()
	// Registering an identical counter returns the one promhttp registered.
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "promhttp_metric_handler_errors_total",
		Help: "Total number of internal errors encountered by the promhttp metric handler.",
	}, []string{"cause"})
	var are prometheus.AlreadyRegisteredError
	if err := reg.Register(c); !errors.As(err, &are) {
		t.Fatalf("promhttp error counter not registered: %v", err)
	}
	return are.ExistingCollector.(*prometheus.CounterVec).WithLabelValues("gathering")
}

// scrape GETs h as Prometheus would and returns the body and Content-Type.
func scrape(t *testing.T, h http.Handler) (body, contentType string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	b, err := io.ReadAll(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), rec.Header().Get("Content-Type")
}

// exercise makes every relay46 series exist, with every fixed-set value.
func exercise(m *Metrics) {
	m.Listening("https")
	m.Listening("http")
	for mode := range modes {
		for outcome := range outcomes {
			m.ConnStarted("https")
			m.ConnFinished("https", "misskey", mode, outcome, time.Second, 100, 200)
		}
	}
	for reason := range peekReasons {
		m.PeekFailed("https", reason)
	}
	for reason := range refusedReasons {
		m.Refused("https", reason)
	}
	for method := range httpMethods {
		for _, code := range []int{101, 200, 301, 404, 503} {
			m.HTTPRequest("blog", method, code, 20*time.Millisecond)
		}
	}
	m.UnknownHost("https")
	m.UnknownHost("http")
	m.DialDone("misskey", 2*time.Millisecond, nil)
	m.DialDone("misskey", 2*time.Second, errors.New("no route to host"))
	m.UpstreamHealth("misskey", "[2001:db8::2:64]:443", true)
	m.UpstreamHealth("blog", "[2001:db8::2:64]:8080", false)
	m.UpstreamAddrChanged("misskey")
	m.CertExpiry("blog.example.org", time.Now().Add(60*24*time.Hour))
	m.ACMEAttempt(ACMEObtain, ResultOK)
	m.ACMEAttempt(ACMERenew, ResultErr)
	m.ConfigLoaded()
	m.ConfigReload(false)
	m.ConfigReload(true)
}

func TestUpstreamIdentityFailed(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg, BuildInfo{})
	m.UpstreamIdentityFailed("misskey")
	m.UpstreamIdentityFailed("misskey")
	var nilM *Metrics
	nilM.UpstreamIdentityFailed("misskey")
	if got := testutil.ToFloat64(m.identityFails.WithLabelValues("misskey")); got != 2 {
		t.Errorf("identity failures = %v, want 2", got)
	}
}
