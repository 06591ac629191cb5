package proxy

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestUpstreamFailoverAndBack runs a route with two origins in priority
// order: when the first stops, new connections go to the second without
// a single client error (failover happens while dialing); when it comes
// back, active health checks see it and traffic returns.
func TestUpstreamFailoverAndBack(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	primary := startHome(t, "primary", "tcp6", "[::1]:0", &cert)
	standby := startHome(t, "standby", "tcp6", "[::1]:0", &cert)
	r := startRelay(t, fmt.Sprintf(`
routes:
  - name: misskey
    hosts: [misskey.example.com]
    upstreams: [{address: %q}, {address: %q}]
    health_check: {interval: 100ms, timeout: 100ms, fall: 1, rise: 2}
    ejection: {failures: 1, duration: 1m}
`, primary.addr, standby.addr))
	steadyServes(t, r, "misskey.example.com", roots, "primary", 300*time.Millisecond)

	primary.stop()
	// The very first connection after the stop is served, by the standby.
	steadyServes(t, r, "misskey.example.com", roots, "standby", time.Second)
	if n := r.countOutcome(outcomeDialFailed); n != 0 {
		t.Errorf("%d client connections failed", n)
	}
	if r.logCount("upstream address down") == 0 {
		t.Error("the health check did not mark the primary down")
	}

	if err := primary.start(); err != nil {
		t.Fatal(err)
	}
	took := waitServes(t, r, "misskey.example.com", roots, "primary", 2*time.Second)
	t.Logf("back on the primary %s after it returned", took)
	if r.logCount("upstream address up again") == 0 {
		t.Error("the return was not logged")
	}
	steadyServes(t, r, "misskey.example.com", roots, "primary", 300*time.Millisecond)
}

// TestUpstreamFlappingOrigin takes the primary away and brings it back
// over and over while a client keeps connecting. No client connection
// fails, and each outage costs at most one failed dial: after it, passive
// ejection and the health checks keep new connections off the primary
// until it has answered the checks again.
//
// The origin goes away between two client connections, as a home does
// when its line drops: an origin that closes its listener while the
// relay's connection waits in its accept queue resets a connection that
// has already carried the ClientHello, which no relay can hide.
func TestUpstreamFlappingOrigin(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	primary := startHome(t, "primary", "tcp6", "[::1]:0", &cert)
	standby := startHome(t, "standby", "tcp6", "[::1]:0", &cert)
	r := startRelay(t, fmt.Sprintf(`
routes:
  - name: misskey
    hosts: [misskey.example.com]
    upstreams: [{address: %q}, {address: %q}]
    health_check: {interval: 50ms, timeout: 50ms, fall: 1, rise: 2}
    ejection: {failures: 1, duration: 1m}
`, primary.addr, standby.addr))

	served := map[string]int{}
	var errs []error
	outages, up := 0, true
	toggle := time.Now()
	for start := time.Now(); time.Since(start) < 4*time.Second; {
		if time.Since(toggle) > 300*time.Millisecond {
			if up {
				primary.pause()
				outages++
			} else if err := primary.start(); err != nil {
				t.Fatal(err)
			}
			up, toggle = !up, time.Now()
		}
		got, err := whoServes(t, r, "misskey.example.com", roots)
		if err != nil {
			errs = append(errs, err)
		}
		served[got]++
	}
	if len(errs) > 0 {
		t.Errorf("%d client requests failed, first: %v", len(errs), errs[0])
	}
	if n := r.countOutcome(outcomeDialFailed); n != 0 {
		t.Errorf("%d client connections failed to dial", n)
	}
	failedDials := r.logCount("upstream dial failed")
	t.Logf("%d outages, %d failed dials, served %v", outages, failedDials, served)
	if served["primary"] == 0 || served["standby"] == 0 {
		t.Errorf("served %v: both origins should have taken turns", served)
	}
	if failedDials > outages {
		t.Errorf("%d failed dials in %d outages: after the first, the primary should be set aside", failedDials, outages)
		for _, e := range r.logs.All() {
			if e.Message != "connection" {
				t.Logf("%s %s %v", e.Time.Format("15:04:05.000"), e.Message, e.ContextMap())
			}
		}
	}
}

// TestUpstreamTerminatedHealthPath checks a terminated route's origins
// with HTTP GET of a path: an origin answering 503 there takes no
// requests until it answers 200 again.
func TestUpstreamTerminatedHealthPath(t *testing.T) {
	a := startHome(t, "a", "tcp6", "[::1]:0", nil)
	b := startHome(t, "b", "tcp6", "[::1]:0", nil)
	relayCert, relayRoots := testCert(t, "blog.example.org")
	r := startRelayWith(t, fmt.Sprintf(`
routes:
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstreams: [{address: "http://%s"}, {address: "http://%s"}]
    health_check: {path: /healthz, interval: 100ms, timeout: 100ms, fall: 1, rise: 1}
`, a.addr, b.addr), func(s *Server) { s.Certs = &staticCerts{cert: relayCert} })
	get := func() string {
		body, _, err := httpsGet(t, r.https, "blog.example.org", "/", relayRoots)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	if got := get(); got != "a" {
		t.Fatalf("first request served by %q", got)
	}
	a.status.Store(http.StatusServiceUnavailable)
	deadline := time.Now().Add(2 * time.Second)
	for get() != "b" {
		if time.Now().After(deadline) {
			t.Fatal("requests still reach the origin whose health check fails")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for range 5 {
		if got := get(); got != "b" {
			t.Fatalf("a request reached %q while a is down", got)
		}
	}
	a.status.Store(0)
	deadline = time.Now().Add(2 * time.Second)
	for get() != "a" {
		if time.Now().After(deadline) {
			t.Fatal("requests did not return to the first origin")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
