// Package metrics holds relay46's Prometheus collectors: layer-4 connections,
// ClientHello peeking, upstream dials and health, terminated HTTP requests,
// certificates, ACME and config reloads.
//
// Every label value is either a name from the config (route, listener,
// terminated host, upstream address) or a member of a small fixed set; values
// outside a fixed set are recorded as "other". Client addresses, SNI strings
// sent by clients and request paths never become labels, so the number of
// series is bounded by the config, whatever the traffic.
//
// Typical use:
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg, metrics.BuildInfo{Version: version, Commit: commit},
//		metrics.WithLogger(logger))
//	m.ConfigLoaded()
//	m.Listening("https") // when the listener is bound
//	// in the accept loop:
//	m.ConnStarted("https")
//	defer func() { m.ConnFinished("https", route, metrics.ModePassthrough, outcome, time.Since(start), in, out) }()
//	// on the admin listener:
//	mux.Handle("/metrics", m.Handler())
//
// All methods are safe for concurrent use and on a nil *Metrics, which
// records nothing; tests of other packages pass nil.
package metrics

import (
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

const namespace = "relay46"

// BuildInfo labels relay46_build_info. Empty fields are exported as
// "unknown", except GoVersion, which defaults to the running toolchain.
type BuildInfo struct{ Version, Commit, GoVersion string }

// Metrics is relay46's set of collectors. The zero value is not usable; a nil
// *Metrics is, and records nothing.
type Metrics struct {
	now     func() time.Time
	handler http.Handler

	connAccepted  *prometheus.CounterVec
	connInFlight  *prometheus.GaugeVec
	connFinished  *prometheus.CounterVec
	connDuration  *prometheus.HistogramVec
	relayedBytes  *prometheus.CounterVec
	peekFailures  *prometheus.CounterVec
	unknownHost   *prometheus.CounterVec
	refused       *prometheus.CounterVec
	dialDuration  *prometheus.HistogramVec
	dialFailures  *prometheus.CounterVec
	upstreamUp    *prometheus.GaugeVec
	addrChanges   *prometheus.CounterVec
	identityFails *prometheus.CounterVec
	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec
	certExpiry    *prometheus.GaugeVec
	acmeAttempts  *prometheus.CounterVec
	reloads       *prometheus.CounterVec
	reloadOK      prometheus.Gauge
	reloadSuccess prometheus.Gauge
}

// Option configures New.
type Option func(*options)

type options struct {
	logger *zap.Logger
	now    func() time.Time
}

// WithLogger sets where errors serving /metrics are logged. Without it they
// are only counted in promhttp_metric_handler_errors_total.
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithClock sets the clock used for relay46_config_last_reload_success_timestamp_seconds.
// Without it, time.Now is used.
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// Histogram buckets, in seconds.
var (
	// A relayed connection lasts from a refused handshake (~1ms) to a
	// WebSocket stream held open for hours.
	connDurationBuckets = []float64{0.001, 0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 3 * 3600, 12 * 3600}
	// A dial to a home server over IPv6: sub-millisecond on a LAN, seconds
	// when the home is unreachable and the dial times out.
	dialDurationBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// Terminated HTTP requests, up to slow uploads of large media.
	httpDurationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
)

// New creates relay46's collectors and registers them on reg, together with
// the Go runtime and process collectors and relay46_build_info. It panics if
// any of them is already registered on reg, as prometheus.MustRegister does.
func New(reg *prometheus.Registry, build BuildInfo, opts ...Option) *Metrics {
	o := options{logger: zap.NewNop(), now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = zap.NewNop()
	}
	if o.now == nil {
		o.now = time.Now
	}

	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: name, Help: help, Buckets: buckets}, labels)
	}

	m := &Metrics{
		now: o.now,

		connAccepted: counter("connections_accepted_total",
			"TCP connections accepted, by listener.", "listener"),
		connInFlight: gauge("connections_in_flight",
			"TCP connections currently open, by listener.", "listener"),
		connFinished: counter("connections_finished_total",
			"TCP connections closed, by listener, route, mode and outcome.", "listener", "route", "mode", "outcome"),
		connDuration: histogram("connection_duration_seconds",
			"Lifetime of TCP connections from accept to close.", connDurationBuckets, "listener", "mode"),
		relayedBytes: counter("relayed_bytes_total",
			"Bytes relayed between clients and upstreams, by route and direction.", "route", "direction"),
		peekFailures: counter("peek_failures_total",
			"Connections whose ClientHello or HTTP request head could not be read, by reason.", "listener", "reason"),
		unknownHost: counter("unknown_host_total",
			"Connections with an unknown or missing SNI (TLS) or Host (HTTP).", "listener"),
		refused: counter("connections_refused_total",
			"Connections refused by a connection limit, by reason.", "listener", "reason"),
		dialDuration: histogram("upstream_dial_duration_seconds",
			"Time to dial an upstream, successful or not.", dialDurationBuckets, "route"),
		dialFailures: counter("upstream_dial_failures_total",
			"Failed upstream dials, by route.", "route"),
		upstreamUp: gauge("upstream_up",
			"Whether an upstream address of a route is reachable (1) or not (0).", "route", "addr"),
		addrChanges: counter("upstream_address_changes_total",
			"Times the resolved or pushed upstream address of a route changed.", "route"),
		identityFails: counter("upstream_identity_failures_total",
			"New upstream addresses refused because they could not prove to be the origin (certificate name or pinned key), by route.", "route"),
		httpRequests: counter("http_requests_total",
			"HTTP requests proxied on terminated routes, by route, method and status class.", "route", "method", "code"),
		httpDuration: histogram("http_request_duration_seconds",
			"Time to serve HTTP requests on terminated routes.", httpDurationBuckets, "route"),
		certExpiry: gauge("certificate_expiry_timestamp_seconds",
			"NotAfter of the certificate served for a terminated host, as a Unix timestamp.", "host"),
		acmeAttempts: counter("acme_attempts_total",
			"ACME certificate obtain and renew attempts, by result.", "kind", "result"),
		reloads: counter("config_reloads_total",
			"Config reloads, by result.", "result"),
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "config_last_reload_successful",
			Help: "Whether the last config load or reload succeeded (1) or not (0)."}),
		reloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace, Name: "config_last_reload_success_timestamp_seconds",
			Help: "Unix time of the last successful config load or reload."}),
	}

	buildInfo := gauge("build_info", "Always 1; labels describe the running relay46 build.", "version", "revision", "goversion")
	buildInfo.WithLabelValues(orUnknown(build.Version), orUnknown(build.Commit), goVersion(build.GoVersion)).Set(1)

	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		m.connAccepted, m.connInFlight, m.connFinished, m.connDuration, m.relayedBytes,
		m.peekFailures, m.unknownHost, m.refused,
		m.dialDuration, m.dialFailures, m.upstreamUp, m.addrChanges, m.identityFails,
		m.httpRequests, m.httpDuration,
		m.certExpiry, m.acmeAttempts,
		m.reloads, m.reloadOK, m.reloadSuccess,
	)

	// Series that alerts compute increase() over exist from the start, so the
	// first failure is an increase from 0 rather than a new series.
	for kind := range acmeKinds {
		for result := range results {
			m.acmeAttempts.WithLabelValues(kind, result)
		}
	}
	for result := range results {
		m.reloads.WithLabelValues(result)
	}

	m.handler = promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      zapErrorLog{o.logger},
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      reg,
		// A scrape never needs more than a few seconds; don't let a stuck
		// collector or a scrape storm pile up goroutines.
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	}))
	return m
}

// Handler serves this registry's metrics in the Prometheus text format. Errors
// gathering metrics are logged (see WithLogger), counted in
// promhttp_metric_handler_errors_total, and the metrics that could be
// gathered are still served. On a nil *Metrics it serves 404.
func (m *Metrics) Handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return m.handler
}

// zapErrorLog adapts a zap logger to promhttp.Logger.
type zapErrorLog struct{ l *zap.Logger }

var _ promhttp.Logger = zapErrorLog{}

// Println receives promhttp's ("what failed:", err) pairs and logs each call
// as one structured entry.
func (z zapErrorLog) Println(v ...any) {
	fields := make([]zap.Field, 0, len(v))
	for _, e := range v {
		switch e := e.(type) {
		case error:
			fields = append(fields, zap.Error(e))
		case string:
			fields = append(fields, zap.String("stage", strings.TrimSuffix(e, ":")))
		default:
			fields = append(fields, zap.Any("detail", e))
		}
	}
	z.l.Error("serving metrics failed", fields...)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func goVersion(s string) string {
	if s == "" {
		return runtime.Version()
	}
	return s
}
