package metrics_test

import (
	"bufio"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay46/relay46/metrics"
)

// A passthrough connection as the relay records it, and the series it leaves
// on /metrics.
func Example() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "v0.1.0", Commit: "e4db183"})

	m.ConnStarted("https")
	m.DialDone("misskey", 3*time.Millisecond, nil)
	m.ConnFinished("https", "misskey", metrics.ModePassthrough, metrics.OutcomeOK, 90*time.Second, 1200, 48000)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "relay46_connections_") || strings.HasPrefix(line, "relay46_relayed_bytes_total") {
			fmt.Println(line)
		}
	}
	// Output:
	// relay46_connections_accepted_total{listener="https"} 1
	// relay46_connections_finished_total{listener="https",mode="passthrough",outcome="ok",route="misskey"} 1
	// relay46_connections_in_flight{listener="https"} 0
	// relay46_relayed_bytes_total{direction="client_to_upstream",route="misskey"} 1200
	// relay46_relayed_bytes_total{direction="upstream_to_client",route="misskey"} 48000
}

// Values outside a label's fixed set are recorded as "other", so client data
// passed by mistake cannot create new series.
func ExampleMetrics_HTTPRequest() {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{})

	m.HTTPRequest("blog", "GET", 200, 12*time.Millisecond)
	m.HTTPRequest("blog", "PROPFIND", 207, 30*time.Millisecond)
	m.HTTPRequest("blog", "GET", 999, time.Millisecond)

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	sc := bufio.NewScanner(rec.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "relay46_http_requests_total") {
			fmt.Println(line)
		}
	}
	// Output:
	// relay46_http_requests_total{code="2xx",method="GET",route="blog"} 1
	// relay46_http_requests_total{code="2xx",method="other",route="blog"} 1
	// relay46_http_requests_total{code="other",method="GET",route="blog"} 1
}
