package proxy

import (
	"crypto/tls"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/relay46/relay46/metrics"
)

// metricValue returns the value of the series name{labels}, or -1.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			return value(m)
		}
	}
	return -1
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

func seriesCount(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		n += len(mf.GetMetric())
	}
	return n
}

// TestMetricsAfterKnownTraffic drives known traffic through a relay and
// reads exact counts back from its registry.
func TestMetricsAfterKnownTraffic(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "test"})
	passCert, passRoots := testCert(t, "misskey.example.com")
	relayCert, relayRoots := testCert(t, "blog.example.org")
	o := startOrigin(t, &passCert, false, nil)
	app := startOrigin(t, nil, false, headerEcho())
	ln, _ := net.Listen("tcp6", "[::1]:0")
	dead := ln.Addr().String()
	ln.Close()
	r := startRelayWith(t, fmt.Sprintf(`routes:
  - name: home
    hosts: [misskey.example.com]
    upstream: %q
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstream: "http://%s"
  - name: down
    hosts: [down.example.com]
    upstream: %q
`, o.addr(), app.addr(), dead), func(s *Server) {
		s.Metrics = m
		s.Certs = &staticCerts{cert: relayCert}
	})

	for range 3 {
		if _, _, err := httpsGet(t, r.https, "misskey.example.com", "/", passRoots); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, _, err := httpsGet(t, r.https, "blog.example.org", "/", relayRoots); err != nil {
			t.Fatal(err)
		}
	}
	dialTLS(t, r.https, &tls.Config{InsecureSkipVerify: true, ServerName: "nobody.example"}, nil)
	dialTLS(t, r.https, &tls.Config{InsecureSkipVerify: true, ServerName: "down.example.com"}, nil)
	rawHTTP(t, r.http, "GET / HTTP/1.1\r\nHost: nobody.example\r\n\r\n")

	// Every connection has been logged once it is finished and counted.
	deadline := time.Now().Add(5 * time.Second)
	for len(r.outcomes()) < 8 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"relay46_connections_accepted_total", map[string]string{"listener": "https"}, 7},
		{"relay46_connections_accepted_total", map[string]string{"listener": "http"}, 1},
		{"relay46_connections_finished_total", map[string]string{"route": "home", "outcome": "ok", "mode": "passthrough"}, 3},
		{"relay46_connections_finished_total", map[string]string{"route": "blog", "outcome": "ok", "mode": "terminate"}, 2},
		{"relay46_connections_finished_total", map[string]string{"route": "none", "outcome": "unknown_host", "listener": "https"}, 1},
		{"relay46_connections_finished_total", map[string]string{"route": "none", "outcome": "unknown_host", "listener": "http"}, 1},
		{"relay46_connections_finished_total", map[string]string{"route": "down", "outcome": "dial_failed"}, 1},
		{"relay46_unknown_host_total", map[string]string{"listener": "https"}, 1},
		{"relay46_unknown_host_total", map[string]string{"listener": "http"}, 1},
		{"relay46_upstream_dial_failures_total", map[string]string{"route": "down"}, 1},
		{"relay46_upstream_dial_duration_seconds", map[string]string{"route": "home"}, 3},
		{"relay46_http_requests_total", map[string]string{"route": "blog", "method": "GET", "code": "2xx"}, 2},
		{"relay46_connections_in_flight", map[string]string{"listener": "https"}, 0},
	} {
		if got := metricValue(t, reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	for _, route := range []string{"none", "down"} {
		if got := metricValue(t, reg, "relay46_relayed_bytes_total", map[string]string{"route": route}); got != -1 {
			t.Errorf("route %s relayed nothing but has a byte series (%v)", route, got)
		}
	}
	if got := metricValue(t, reg, "relay46_relayed_bytes_total", map[string]string{"route": "home", "direction": "upstream_to_client"}); got < 1000 {
		t.Errorf("bytes relayed to clients on route home: %v", got)
	}
}

// TestMetricsCardinalityBounded opens 1,000 connections with random SNI
// values and Host headers; the number of series must not change.
func TestMetricsCardinalityBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, metrics.BuildInfo{Version: "test"})
	cert, _ := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelayWith(t, passthroughConfig(o.addr(), ""), func(s *Server) { s.Metrics = m })
	// One of each kind first, so every series that can exist does.
	dialTLS(t, r.https, &tls.Config{InsecureSkipVerify: true, ServerName: "warmup.example"}, nil)
	rawHTTP(t, r.http, "GET / HTTP/1.1\r\nHost: warmup.example\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	before := seriesCount(t, reg)
	for i := range 1000 {
		name := fmt.Sprintf("r%x.example", rand.Uint64())
		if i%2 == 0 {
			dialTLS(t, r.https, &tls.Config{InsecureSkipVerify: true, ServerName: name}, nil)
		} else {
			c := &http.Client{Timeout: 2 * time.Second}
			req, _ := http.NewRequest("GET", "http://"+r.http+"/"+name, nil)
			req.Host = name
			if resp, err := c.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}
	time.Sleep(100 * time.Millisecond)
	if after := seriesCount(t, reg); after != before {
		t.Errorf("series went from %d to %d after 1,000 random names", before, after)
	}
	if got := metricValue(t, reg, "relay46_unknown_host_total", map[string]string{"listener": "https"}); got != 501 {
		t.Errorf("unknown SNI counted %v times, want 501", got)
	}
}
