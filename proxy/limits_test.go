package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relay46/relay46/config"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relay46/relay46/metrics"
)

func TestSourceKeyGroupsIPv6By64(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"},
		{"192.0.2.1", "::ffff:192.0.2.1"},
	} {
		if sourceKey(netip.MustParseAddr(tc.a)) != sourceKey(netip.MustParseAddr(tc.b)) {
			t.Errorf("%s and %s should be one source", tc.a, tc.b)
		}
	}
	if sourceKey(netip.MustParseAddr("2001:db8:1:2::1")) == sourceKey(netip.MustParseAddr("2001:db8:1:3::1")) {
		t.Error("different /64s must be different sources")
	}
}

func TestLimiterRules(t *testing.T) {
	now := time.Unix(1000, 0)
	l := &limiter{now: func() time.Time { return now }}
	l.limits.Store(&Limits{MaxConns: 5, MaxConnsPerSource: 2, SourceRate: 1, SourceBurst: 3})
	a := netip.MustParseAddr("2001:db8::1")
	b := netip.MustParseAddr("2001:db8::2") // same /64 as a
	c := netip.MustParseAddr("192.0.2.7")

	_, ra := l.admit(a)
	_, rb := l.admit(b)
	if reason, _ := l.admit(a); reason != metrics.RefusedPerSource {
		t.Fatalf("third from one /64: %q, want per_source", reason)
	}
	ra()
	_, ra = l.admit(a) // the third token of the burst
	ra()
	if reason, _ := l.admit(a); reason != metrics.RefusedAcceptRate {
		t.Fatalf("fourth within a second (burst 3): %q, want accept_rate", reason)
	}
	now = now.Add(2 * time.Second) // two tokens back
	_, ra = l.admit(a)
	if ra == nil {
		t.Fatal("refused after the bucket refilled")
	}
	var rel []func()
	for range 3 {
		reason, r := l.admit(c)
		if reason == "" {
			rel = append(rel, r)
		}
	}
	_, r3 := l.admit(netip.MustParseAddr("198.51.100.1"))
	if r3 == nil {
		t.Fatal("fifth connection overall refused")
	}
	if reason, _ := l.admit(netip.MustParseAddr("198.51.100.2")); reason != metrics.RefusedGlobalLimit {
		t.Fatalf("sixth overall: %q, want global_limit", reason)
	}
	ra()
	rb()
	r3()
	for _, r := range rel {
		r()
	}
	if n := l.conns.Load(); n != 0 {
		t.Errorf("%d connections still counted after release", n)
	}
	now = now.Add(time.Minute)
	l.admit(netip.MustParseAddr("203.0.113.1")) // triggers a sweep
	if n := l.trackedSources(); n != 1 {
		t.Errorf("limiter remembers %d sources after they went idle, want 1", n)
	}
}

func TestPerSourceLimitRefusesBeforeDialing(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelayWith(t, passthroughConfig(o.addr(), ""), func(s *Server) {
		s.SetLimits(Limits{MaxConnsPerSource: 2})
	})
	var held []*tls.Conn
	for range 2 {
		c, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	before := o.accepted.Load()
	if !refused(t, r.https) {
		t.Error("over-limit connection not closed")
	}
	if o.accepted.Load() != before {
		t.Error("a refused connection reached the origin")
	}
	// The two admitted connections still work; closing one admits a new one.
	held[0].Close()
	time.Sleep(100 * time.Millisecond)
	if _, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}, nil); err != nil {
		t.Errorf("not admitted after a slot freed: %v", err)
	}
}

func TestHandshakeLimitSheddsSlowLoris(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelayWith(t, passthroughConfig(o.addr(), ""), func(s *Server) {
		s.SetLimits(Limits{MaxHandshakes: 3})
	})
	healthy := openHealthy(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"})
	var silent []net.Conn
	for range 3 {
		c, _ := net.Dial("tcp4", r.https)
		silent = append(silent, c)
		defer c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	if !refused(t, r.https) {
		t.Error("a fourth connection in the hello stage was admitted")
	}
	healthy.check(t) // established connections are not in the hello stage
	for _, s := range silent {
		s.Close()
	}
}

// refused reports whether the relay closes a new connection at once. The
// reset may even arrive before the dial returns.
func refused(t *testing.T, addr string) bool {
	t.Helper()
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		return true
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, err := c.Read(make([]byte, 1))
	return n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

func TestRouteMaxConns(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), "    max_conns: 1\n"))
	if _, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}, nil); err != nil {
		t.Fatal(err)
	}
	before := o.accepted.Load()
	if _, err := dialTLS(t, r.https, &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}, nil); err == nil {
		t.Fatal("a second connection over max_conns: 1 was relayed")
	}
	r.waitOutcome(t, "route_limit")
	if o.accepted.Load() != before {
		t.Error("the origin was dialed over the route's limit")
	}
	got := rawHTTP(t, r.http, "GET / HTTP/1.1\r\nHost: misskey.example.com\r\n\r\n")
	if !strings.HasPrefix(got, "HTTP/1.1 503 ") {
		t.Errorf(":80 over the route limit: %q", firstLine(got))
	}
}

func TestAccessLogSwitch(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	r := startRelay(t, passthroughConfig(o.addr(), "    access_log: false\n"))
	if _, _, err := httpsGet(t, r.https, "misskey.example.com", "/", roots); err != nil {
		t.Fatal(err)
	}
	dialTLS(t, r.https, &tls.Config{InsecureSkipVerify: true, ServerName: "unknown.example"}, nil)
	r.waitOutcome(t, "unknown_sni") // failures are still logged
	time.Sleep(50 * time.Millisecond)
	for _, o := range r.outcomes() {
		if o == "ok" {
			t.Error("a connection was logged for a route with access_log: false")
		}
	}
}

// emfileListener fails Accept with EMFILE a few times before passing
// through, as a process out of descriptors would.
type emfileListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestAcceptSurvivesEMFILE(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	o := startOrigin(t, &cert, false, nil)
	cfg, err := config.Parse("t.yaml", []byte(passthroughConfig(o.addr(), "")))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	s := &Server{Logger: zap.New(core)}
	if err := s.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp4", "127.0.0.1:0")
	el := &emfileListener{Listener: ln}
	el.fails.Store(5)
	served := make(chan error, 1)
	go func() { served <- s.Serve(el, HTTPS) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()
	start := time.Now()
	c, err := dialTLS(t, ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "misskey.example.com"}, nil)
	if err != nil {
		t.Fatalf("not served after EMFILE: %v", err)
	}
	c.Close()
	if n := logs.FilterMessage("accept failed; retrying").Len(); n != 5 {
		t.Errorf("%d accept failures logged, want 5", n)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v", err)
	default:
	}
	t.Logf("served after 5 EMFILEs in %v (backoff 5ms doubling)", time.Since(start).Round(time.Millisecond))
}
