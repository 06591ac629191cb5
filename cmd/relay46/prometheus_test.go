package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relay46/relay46/internal/promtest"

	"github.com/relay46/relay46/proxy"
)

// Debian's prometheus package provides these; .ci/run installs it.
const (
	deployDir = "../../deploy/prometheus"
)

// TestPrometheusScrapesTheDaemon runs the real daemon with a passthrough,
// a terminated and an unreachable route, drives known traffic through its
// listeners, and reads the result from the admin listener's /metrics three
// ways: parsed here with exact values, linted by promtool, and scraped by a
// real Prometheus using deploy/prometheus/prometheus.yml and alerts.yml.
func TestPrometheusScrapesTheDaemon(t *testing.T) {
	dir := t.TempDir()
	passCert, passKey, passRoots := writeSelfSigned(t, mkdir(t, dir, "pass"), "pass.example")
	termCert, termKey, termRoots := writeSelfSigned(t, mkdir(t, dir, "term"), "term.example")
	notAfter := leafNotAfter(t, termCert)

	pass := serveOrigin(t, "pass origin", passCert, passKey)
	term := serveOrigin(t, "term origin", "", "")
	closed := serveOrigin(t, "", "", "") // closed at once: dials to it are refused

	_, addrs, _, stop := startDaemon(t, fmt.Sprintf(`listen: {https: "127.0.0.1:0", http: "127.0.0.1:0"}
admin: "127.0.0.1:0"
shutdown_grace: 1s
routes:
  - name: pass
    hosts: [pass.example]
    upstream: %q
  - name: term
    hosts: [term.example]
    mode: terminate
    upstream: "http://%s"
    cert_file: %q
    key_file: %q
  - name: down
    hosts: [down.example]
    upstream: %q
`, pass, term, termCert, termKey, closed))
	defer stop()
	httpsAddr, httpAddr, adminAddr := addrs[proxy.HTTPS].String(), addrs[proxy.HTTP].String(), addrs[adminListener].String()

	// 3 passthrough requests, each on its own connection, counting the
	// bytes the client's TCP socket sent and received.
	var passOut, passIn int64
	for range 3 {
		c := tlsDial(t, httpsAddr, &tls.Config{ServerName: "pass.example", RootCAs: passRoots})
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: pass.example\r\nConnection: close\r\n\r\n")
		b, err := io.ReadAll(c) // up to the origin's close_notify
		if err != nil || !strings.HasSuffix(string(b), "pass origin") {
			t.Fatalf("passthrough: %v %q", err, b)
		}
		c.NetConn().Close()
		cc := c.NetConn().(*countingConn)
		passOut, passIn = passOut+cc.written.Load(), passIn+cc.read.Load()
	}

	// 2 terminated requests on one keep-alive connection.
	var termConn atomic.Pointer[countingConn]
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: termRoots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp4", httpsAddr)
			if err != nil {
				return nil, err
			}
			cc := &countingConn{Conn: c}
			if termConn.Swap(cc) != nil {
				t.Error("the terminated requests did not share a connection")
			}
			return cc, nil
		},
	}}
	for range 2 {
		resp, err := client.Get("https://term.example/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "term origin" {
			t.Fatalf("terminated: %d %q", resp.StatusCode, b)
		}
	}
	client.CloseIdleConnections() // sends close_notify and closes: the relay counts the connection

	// An unknown SNI, a route whose upstream refuses, an unknown Host on :80.
	for _, sni := range []string{"nobody.example", "down.example"} {
		raw, err := net.Dial("tcp4", httpsAddr)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		if err := tls.Client(raw, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake(); err == nil {
			t.Errorf("SNI %s: handshake succeeded", sni)
		}
		raw.Close()
	}
	if resp := rawHTTP(t, httpAddr, "GET / HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n"); !strings.Contains(resp, "no route for this host") {
		t.Errorf("unknown Host on :80: %q", resp)
	}

	want := map[string]float64{
		`relay46_connections_accepted_total{listener="https"}`:                                                       6,
		`relay46_connections_accepted_total{listener="http"}`:                                                        1,
		`relay46_connections_in_flight{listener="https"}`:                                                            0,
		`relay46_connections_in_flight{listener="http"}`:                                                             0,
		`relay46_connections_finished_total{listener="https",mode="passthrough",outcome="ok",route="pass"}`:          3,
		`relay46_connections_finished_total{listener="https",mode="terminate",outcome="ok",route="term"}`:            1,
		`relay46_connections_finished_total{listener="https",mode="passthrough",outcome="dial_failed",route="down"}`: 1,
		`relay46_connections_finished_total{listener="https",mode="none",outcome="unknown_host",route="none"}`:       1,
		`relay46_connections_finished_total{listener="http",mode="none",outcome="unknown_host",route="none"}`:        1,
		`relay46_unknown_host_total{listener="https"}`:                                                               1,
		`relay46_unknown_host_total{listener="http"}`:                                                                1,
		`relay46_upstream_dial_failures_total{route="down"}`:                                                         1,
		`relay46_upstream_dial_duration_seconds_count{route="pass"}`:                                                 3,
		`relay46_upstream_dial_duration_seconds_count{route="down"}`:                                                 1,
		`relay46_http_requests_total{code="2xx",method="GET",route="term"}`:                                          2,
		`relay46_http_request_duration_seconds_count{route="term"}`:                                                  2,
		`relay46_relayed_bytes_total{direction="client_to_upstream",route="pass"}`:                                   float64(passOut),
		`relay46_relayed_bytes_total{direction="upstream_to_client",route="pass"}`:                                   float64(passIn),
		`relay46_relayed_bytes_total{direction="client_to_upstream",route="term"}`:                                   float64(termConn.Load().written.Load()),
		`relay46_upstream_dial_duration_seconds_count{route="term"}`:                                                 1,
		`relay46_upstream_up{addr="` + pass + `",route="pass"}`:                                                      1,
		`relay46_upstream_up{addr="` + term + `",route="term"}`:                                                      1,
		`relay46_certificate_expiry_timestamp_seconds{host="term.example"}`:                                          float64(notAfter.Unix()),
		`relay46_config_last_reload_successful`:                                                                      1,
	}
	// In these families, a series not in want is an error too.
	exact := []string{"relay46_connections_finished_total", "relay46_unknown_host_total", "relay46_upstream_dial_failures_total",
		"relay46_http_requests_total", "relay46_certificate_expiry_timestamp_seconds", "relay46_peek_failures_total"}
	body := waitForMetrics(t, "http://"+adminAddr+"/metrics", want, exact)
	// The relay's own close_notify (a 24-byte TLS 1.3 record), written as the
	// client hung up, may go unread; every other byte must have arrived.
	termIn := termConn.Load().read.Load()
	if v := parseMetrics(t, body)[`relay46_relayed_bytes_total{direction="upstream_to_client",route="term"}`]; v < float64(termIn) || v > float64(termIn+24) {
		t.Errorf("terminated route relayed %v bytes to the client, which read %d", v, termIn)
	}

	t.Run("promtool check metrics", func(t *testing.T) {
		promtest.RequireTool(t, promtest.PromtoolPath)
		cmd := exec.Command(promtest.PromtoolPath, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("prometheus", func(t *testing.T) {
		if testing.Short() {
			t.Skip("starts a Prometheus server")
		}
		prom := promtest.Start(t, deployDir, adminAddr)
		for _, q := range [][2]string{
			{`up{job="relay46"}`, "1"},
			{`relay46_connections_finished_total{route="pass",outcome="ok"}`, "3"},
			{`relay46_connections_finished_total{route="term",outcome="ok"}`, "1"},
			{`relay46_connections_finished_total{route="down",outcome="dial_failed"}`, "1"},
			{`sum(relay46_connections_finished_total{route="none",outcome="unknown_host"})`, "2"},
			{`relay46_unknown_host_total{listener="https"}`, "1"},
			{`relay46_upstream_dial_failures_total{route="down"}`, "1"},
			{`relay46_http_requests_total{route="term",code="2xx"}`, "2"},
			{`relay46_relayed_bytes_total{route="pass",direction="upstream_to_client"}`, strconv.FormatInt(passIn, 10)},
			{`relay46_certificate_expiry_timestamp_seconds{host="term.example"}`, strconv.FormatInt(notAfter.Unix(), 10)},
			// At least three scrapes, so rate() and increase() in the rules have data.
			{`count_over_time(up{job="relay46"}[1m]) >= bool 3`, "1"},
		} {
			prom.WaitFor(t, q[0], q[1])
		}
		checkAlerts(t, prom, notAfter)
	})
}

// checkAlerts waits for every rule of alerts.yml to be evaluated on the
// scraped data and checks that only the certificate alert is active.
func checkAlerts(t *testing.T, prom *promtest.Server, notAfter time.Time) {
	t.Helper()
	type rule struct {
		Name, Health, State string
		Duration            float64 // the rule's for:, in seconds
		LastEvaluation      time.Time
		Alerts              []struct {
			Labels map[string]string
			State  string
		}
	}
	var rules []rule
	since := time.Now()
	deadline := since.Add(30 * time.Second)
	for {
		var res struct{ Groups []struct{ Rules []rule } }
		prom.Get(t, "/api/v1/rules", &res)
		rules = rules[:0]
		for _, g := range res.Groups {
			rules = append(rules, g.Rules...)
		}
		if len(rules) > 0 && !slices.ContainsFunc(rules, func(r rule) bool { return r.LastEvaluation.Before(since) }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("rules not all evaluated within 30s: %+v", rules)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := strings.Count(promtest.ReadDeploy(t, deployDir, "alerts.yml"), "- alert: "); len(rules) != n {
		t.Errorf("Prometheus loaded %d rules, alerts.yml has %d", len(rules), n)
	}
	for _, r := range rules {
		if r.Health != "ok" {
			t.Errorf("rule %s: health %q", r.Name, r.Health)
		}
		// The terminated host's self-signed certificate expires within the
		// hour, well inside the rule's 14 days, so the alert is active; it
		// stays pending for its for: (1h), longer than this test runs (and
		// than the certificate lives), so it never fires here. Every other
		// rule must be quiet for a healthy relay.
		if r.Name != "Relay46CertificateExpiresSoon" {
			if r.State != "inactive" {
				t.Errorf("rule %s is %s for a healthy relay: %+v", r.Name, r.State, r.Alerts)
			}
			continue
		}
		if time.Until(notAfter) > time.Duration(r.Duration)*time.Second {
			t.Fatalf("the certificate outlives the rule's for: %vs; this test assumes the alert cannot fire", r.Duration)
		}
		if r.State != "pending" || len(r.Alerts) != 1 || r.Alerts[0].Labels["host"] != "term.example" {
			t.Errorf("rule %s: state %s, alerts %+v; want one pending alert for term.example", r.Name, r.State, r.Alerts)
		}
	}
}

// waitForMetrics fetches url until every series in want has its value and
// the families in exact have no other series, for at most 10 seconds (the
// relay counts a connection when it has closed both sides), and returns
// the last body.
func waitForMetrics(t *testing.T, url string, want map[string]float64, exact []string) string {
	t.Helper()
	var body string
	var problems []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var code int
		code, body = get(t, url)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", url, code, body)
		}
		got := parseMetrics(t, body)
		problems = problems[:0]
		for series, w := range want {
			if v, ok := got[series]; !ok || v != w {
				problems = append(problems, fmt.Sprintf("%s = %v (present %v), want %v", series, v, ok, w))
			}
		}
		for series, v := range got {
			if _, ok := want[series]; !ok && slices.Contains(exact, series[:strings.IndexAny(series+"{", "{")]) {
				problems = append(problems, fmt.Sprintf("unexpected %s = %v", series, v))
			}
		}
		if len(problems) == 0 {
			return body
		}
	}
	slices.Sort(problems)
	t.Fatalf("/metrics after the traffic:\n%s\n\n%s", strings.Join(problems, "\n"), body)
	return ""
}

// parseMetrics maps each series of a text exposition, as written there
// (labels sorted by name), to its value.
func parseMetrics(t *testing.T, body string) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("unparsable metrics line %q", line)
		}
		m[line[:i]] = v
	}
	return m
}

// serveOrigin serves reply over HTTP on [::1], over TLS when certFile is
// set, and returns its address. An empty reply closes the listener at once.
func serveOrigin(t *testing.T, reply, certFile, keyFile string) string {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	if reply == "" {
		ln.Close()
		return ln.Addr().String()
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, reply) })}
	if certFile != "" {
		go srv.ServeTLS(ln, certFile, keyFile)
	} else {
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// tlsDial completes a TLS handshake with the relay over a countingConn.
func tlsDial(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	raw, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	c := tls.Client(&countingConn{Conn: raw}, cfg)
	if err := c.Handshake(); err != nil {
		t.Fatal(err)
	}
	return c
}

func rawHTTP(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
	b, _ := io.ReadAll(c)
	return string(b)
}

// countingConn counts the bytes that cross the client's socket.
type countingConn struct {
	net.Conn
	read, written atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

func leafNotAfter(t *testing.T, certFile string) time.Time {
	t.Helper()
	b, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", certFile)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.NotAfter
}

func mkdir(t *testing.T, parent, name string) string {
	t.Helper()
	p := filepath.Join(parent, name)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}
