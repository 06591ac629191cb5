package acme

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/relay46/relay46/acme/pebbletest"
)

// ACME fault tests: the CA, the network to it and the storage fail in the
// ways they do in production. In each, the certificate being served keeps
// being served, a failed attempt is not retried before certmagic's
// backoff allows (1 minute after a first failure), and the log says what
// went wrong in a few lines instead of a line per retry.

// caFront is an HTTPS reverse proxy in front of Pebble's directory that
// can play a CA that is down or rate-limits new orders, and counts what
// reaches it. It passes the Host header through, so Pebble builds its URLs
// (and checks the URLs signed into requests) with the front's address.
type caFront struct {
	url   string // directory URL through the front
	roots *x509.CertPool

	down      atomic.Bool  // close every connection without an answer
	limit     atomic.Int32 // new orders still to answer 429
	requests  atomic.Int32 // every request that reached the front
	orders    atomic.Int32 // new-order requests among them
	badNonces atomic.Int32 // badNonce problems Pebble answered
}

func newCAFront(t *testing.T, p *pebbletest.Pebble) *caFront {
	t.Helper()
	f := &caFront{}
	target, _ := url.Parse(p.DirectoryURL)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.DirectoryRoots}}
	t.Cleanup(tr.CloseIdleConnections)
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", target.Host
			pr.Out.Host = pr.In.Host
		},
		Transport: tr,
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode != http.StatusBadRequest {
				return nil
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(b))
			if bytes.Contains(b, []byte("urn:ietf:params:acme:error:badNonce")) {
				f.badNonces.Add(1)
			}
			return err
		},
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.requests.Add(1)
		if f.down.Load() {
			if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		if r.URL.Path == "/order-plz" {
			f.orders.Add(1)
			if f.limit.Add(-1) >= 0 {
				w.Header().Set("Content-Type", "application/problem+json")
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently (relay46 test)","status":429}`)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	srv.StartTLS()
	t.Cleanup(func() { srv.CloseClientConnections(); srv.Close() })
	f.url = srv.URL + "/dir"
	f.roots = x509.NewCertPool()
	f.roots.AddCert(srv.Certificate())
	return f
}

// managerVia is env.newManager with the CA reached through f.
func (e *env) managerVia(f *caFront, opts Options) *Manager {
	e.t.Helper()
	opts.CA, opts.CARoots = f.url, f.roots
	if opts.Storage == "" {
		opts.Storage = e.t.TempDir()
	}
	m, err := New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = m.Close() })
	e.mu.Lock()
	e.managers = append(e.managers, m)
	e.mu.Unlock()
	return m
}

// faultSetup is a Manager through a CA front that has obtained and is
// serving a certificate for host, due for renewal at once.
type faultSetup struct {
	e       *env
	front   *caFront
	m       *Manager
	rec     *recorder
	logs    *observer.ObservedLogs
	host    string
	storage string
	addr    string // where m's certificates are served
	first   *x509.Certificate
}

func startFaultSetup(t *testing.T, label string, opts envOpts) *faultSetup {
	t.Helper()
	fx := &faultSetup{e: newEnv(t, opts), rec: &recorder{}, host: uniqueHost(label), storage: t.TempDir()}
	fx.front = newCAFront(t, fx.e.pebble)
	logger, logs := testLogger(t)
	fx.logs = logs
	fx.m = fx.e.managerVia(fx.front, Options{Storage: fx.storage, RenewalWindowRatio: 1, OnEvent: fx.rec.record, Logger: logger})
	if err := fx.m.Manage(t.Context(), []string{fx.host}); err != nil {
		t.Fatal(err)
	}
	fx.rec.wait(t, "obtain", fx.host, "ok")
	fx.addr = serveManager(t, fx.m)
	fx.first = waitLeaf(t, fx.addr, fx.host, fx.e.pebble.IssuerRoots, nil)
	return fx
}

// renewFails runs certmagic's maintenance pass (the certificate is due)
// and waits for the renewal to fail, then checks what every fault must
// leave: the first certificate still served, no retry from further
// maintenance passes (backoff: one info line each, nothing sent to the
// CA), and a short log of the failed attempt. It returns the failure as
// logged, and the OnEvent report of it if there was one.
func (fx *faultSetup) renewFails(t *testing.T) (string, *Event) {
	t.Helper()
	logsBefore := fx.logs.Len()
	if err := fx.m.cache.RenewManagedCertificates(t.Context()); err != nil {
		t.Fatal(err)
	}
	failure := waitLog(t, fx.logs, logsBefore, "job failed", fx.host)
	attempt := fx.logs.All()[logsBefore:]
	var ev *Event
	time.Sleep(100 * time.Millisecond) // OnEvent runs just before the job ends
	for _, e := range fx.rec.all() {
		if e.Kind == "renew" && e.Host == fx.host {
			if e.Result != "error" || e.Err == nil || !e.NotAfter.Equal(fx.first.NotAfter) {
				t.Errorf("event %+v; want an error and the served certificate's NotAfter %v", e, fx.first.NotAfter)
			}
			ev = &e
		}
	}
	fx.stillServed(t)

	// Further maintenance passes within the backoff do nothing but say
	// the certificate is due.
	reqs, mark := fx.front.requests.Load(), fx.logs.Len()
	const passes = 3
	for range passes {
		if err := fx.m.cache.RenewManagedCertificates(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if d := fx.front.requests.Load() - reqs; d != 0 {
		t.Errorf("%d requests reached the CA during the backoff", d)
	}
	during := fx.logs.All()[mark:]
	for _, l := range during {
		if l.Level > zapcore.InfoLevel || l.Message == "attempting certificate renewal" {
			t.Errorf("during the backoff: %s %s %v", l.Level, l.Message, l.ContextMap())
		}
	}
	if len(during) > passes {
		t.Errorf("%d log lines from %d maintenance passes in the backoff:\n%s", len(during), passes, logText(during))
	}
	if len(attempt) > 15 || errorLines(attempt) > 2 {
		t.Errorf("%d log lines (%d errors) for one failed renewal:\n%s", len(attempt), errorLines(attempt), logText(attempt))
	}
	t.Logf("renewal failed: %s\n%d log lines for the attempt (%d at error level), %d per maintenance pass in the backoff; %d requests had reached the CA; OnEvent: %v",
		failure, len(attempt), errorLines(attempt), len(during)/passes, reqs, ev != nil)
	return failure, ev
}

// waitLog waits for an entry after the first skip whose message is msg
// and whose fields mention host, and returns its error field.
func waitLog(t *testing.T, logs *observer.ObservedLogs, skip int, msg, host string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, l := range logs.All()[skip:] {
			if m := l.ContextMap(); l.Message == msg && strings.Contains(fmt.Sprint(m), host) {
				return fmt.Sprint(m["error"])
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no %q log line for %s:\n%s", msg, host, logText(logs.All()[skip:]))
	return ""
}

func (fx *faultSetup) stillServed(t *testing.T) {
	t.Helper()
	leaf, err := fetchLeaf(fx.addr, fx.host, fx.e.pebble.IssuerRoots)
	if err != nil {
		t.Fatalf("certificate no longer served: %v", err)
	}
	if leaf.SerialNumber.Cmp(fx.first.SerialNumber) != 0 {
		t.Error("served certificate changed although renewal failed")
	}
}

func logText(lines []observer.LoggedEntry) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "  %s %s %v\n", l.Level, l.Message, l.ContextMap())
	}
	return b.String()
}

func errorLines(lines []observer.LoggedEntry) int {
	n := 0
	for _, l := range lines {
		if l.Level >= zapcore.ErrorLevel {
			n++
		}
	}
	return n
}

// TestFaultNonceRejections has Pebble reject 30% of valid nonces, as a CA
// does after a restart or across a load balancer: acmez retries each
// rejected request with the fresh nonce that came with the rejection
// (RFC 8555 §6.5), so issuance succeeds, quietly.
func TestFaultNonceRejections(t *testing.T) {
	checkLeaks(t)
	fx := startFaultSetup(t, "nonce", envOpts{NonceRejectPercent: 30})
	// The renewal goes through the same rejections, and succeeds.
	logsBefore := fx.logs.Len()
	if err := fx.m.cache.RenewManagedCertificates(t.Context()); err != nil {
		t.Fatal(err)
	}
	fx.rec.wait(t, "renew", fx.host, "ok")
	waitLeaf(t, fx.addr, fx.host, fx.e.pebble.IssuerRoots, func(c *x509.Certificate) bool { return c.SerialNumber.Cmp(fx.first.SerialNumber) != 0 })
	if fx.front.badNonces.Load() == 0 {
		t.Fatal("Pebble rejected no nonce; the fault was not exercised")
	}
	lines := fx.logs.All()[logsBefore:]
	// acmez retries a rejected nonce at debug level: the renewal logs
	// what any renewal logs, and no warning.
	for _, l := range lines {
		if l.Level > zapcore.InfoLevel {
			t.Errorf("%s %s %v", l.Level, l.Message, l.ContextMap())
		}
	}
	if len(lines) > 20 {
		t.Errorf("%d log lines for a renewal with rejected nonces:\n%s", len(lines), logText(lines))
	}
	t.Logf("%d nonces rejected over an obtain and a renewal (%d requests); renewal logged %d lines", fx.front.badNonces.Load(), fx.front.requests.Load(), len(lines))
}

// TestFaultCADown takes the CA off the network (connections close without
// an answer) before a due renewal.
func TestFaultCADown(t *testing.T) {
	checkLeaks(t)
	fx := startFaultSetup(t, "down", envOpts{})
	fx.front.down.Store(true)
	if _, ev := fx.renewFails(t); ev == nil {
		t.Error("OnEvent did not report the failure")
	}
}

// TestFaultRateLimited answers the renewal's new-order with 429 and a
// Retry-After of an hour. The order is not retried within the backoff.
// (The Retry-After value itself is not consulted: certmagic's schedule
// retries after 1, 2, 2, 5, 10 minutes..., earlier than an hour-long
// Retry-After would ask; those attempts only meet another 429.)
func TestFaultRateLimited(t *testing.T) {
	checkLeaks(t)
	fx := startFaultSetup(t, "ratelimit", envOpts{})
	fx.front.limit.Store(2)
	orders := fx.front.orders.Load()
	failure, ev := fx.renewFails(t)
	if !strings.Contains(failure, "rateLimited") || ev == nil {
		t.Errorf("failure %q does not say it was rate-limited, or OnEvent (%v) did not report it", failure, ev)
	}
	if n := fx.front.orders.Load() - orders; n != 1 {
		t.Errorf("%d new orders sent, want 1", n)
	}

	// A first obtain that meets a 429 is not retried at once either.
	host := uniqueHost("ratelimit-first")
	orders = fx.front.orders.Load()
	if err := fx.m.Manage(t.Context(), []string{fx.host, host}); err != nil {
		t.Fatal(err)
	}
	fx.rec.wait(t, "obtain", host, "error")
	time.Sleep(time.Second)
	if n := fx.front.orders.Load() - orders; n != 1 {
		t.Errorf("first obtain: %d new orders within a second, want 1", n)
	}
}

// TestFaultReadOnlyStorage makes the storage directory read-only before a
// due renewal: the renewal fails at its lock, before anything is asked of
// the CA (no issuance is wasted), and a restart on the read-only storage
// serves the stored certificate.
func TestFaultReadOnlyStorage(t *testing.T) {
	checkLeaks(t)
	fx := startFaultSetup(t, "readonly", envOpts{})
	readOnly(t, fx.storage)
	orders := fx.front.orders.Load()
	// certmagic checks the storage (writes and deletes a 10 KiB file)
	// before it locks or orders anything.
	failure, _ := fx.renewFails(t)
	if !strings.Contains(failure, "failed storage check") {
		t.Errorf("failure does not say the storage refused: %v", failure)
	}
	if n := fx.front.orders.Load() - orders; n != 0 {
		t.Errorf("%d orders sent to the CA although nothing could be stored", n)
	}

	fx.m.Close()
	m2 := fx.e.managerVia(fx.front, Options{Storage: fx.storage})
	if err := m2.Manage(t.Context(), []string{fx.host}); err != nil {
		t.Fatal(err)
	}
	waitLeaf(t, serveManager(t, m2), fx.host, fx.e.pebble.IssuerRoots, sameSerial(fx.first))
}

// readOnly makes dir and everything in it unwritable until the test ends:
// immutable (chattr +i) for root, who ignores permission bits, and mode
// bits for anyone else. It skips the test where neither is possible.
func readOnly(t *testing.T, dir string) {
	t.Helper()
	var paths []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, p)
		}
		return nil
	})
	if os.Geteuid() != 0 {
		for _, p := range paths {
			info, _ := os.Stat(p)
			os.Chmod(p, info.Mode().Perm()&^0o222)
			t.Cleanup(func() { os.Chmod(p, info.Mode().Perm()) })
		}
		return
	}
	for _, p := range paths {
		if err := setImmutable(p, true); err != nil {
			t.Skipf("cannot make storage read-only as root (chattr +i on %s: %v); needs CAP_LINUX_IMMUTABLE and ext4, xfs, btrfs or tmpfs", p, err)
		}
		t.Cleanup(func() { setImmutable(p, false) })
	}
	if f, err := os.Create(filepath.Join(dir, "probe")); err == nil {
		f.Close()
		t.Fatal("storage still writable")
	}
}

// fsImmutableFL is FS_IMMUTABLE_FL from linux/fs.h, which x/sys/unix
// does not define.
const fsImmutableFL = 0x00000010

func setImmutable(path string, on bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		return err
	}
	if on {
		flags |= fsImmutableFL
	} else {
		flags &^= fsImmutableFL
	}
	return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags)
}

// TestFaultFullStorage lets no file grow past 1 KiB while a renewal runs,
// the way a full disk fails writes part-way (RLIMIT_FSIZE: EFBIG where a
// full disk gives ENOSPC): small files (the lock, the new key) are
// written, the certificate is not. The renewal fails and the served
// certificate stays. The process's file size limit applies to every
// goroutine, so nothing else in this test writes files meanwhile.
func TestFaultFullStorage(t *testing.T) {
	checkLeaks(t)
	fx := startFaultSetup(t, "full", envOpts{})
	restore := limitFileSize(t, 1024)
	orders := fx.front.orders.Load()
	failure, _ := fx.renewFails(t)
	restore()
	// certmagic's storage check (a 10 KiB test file) fails before
	// anything is ordered, so no issuance is wasted and the stored
	// key and certificate are left alone.
	if !strings.Contains(failure, "failed storage check") || !strings.Contains(failure, "file too large") {
		t.Errorf("failure does not say the storage refused: %v", failure)
	}
	if n := fx.front.orders.Load() - orders; n != 0 {
		t.Errorf("%d orders sent to the CA although nothing could be stored", n)
	}
	// What the failed write left in storage must still load.
	fx.m.Close()
	fx.front.down.Store(true) // the restart cannot fall back on the CA
	m2 := fx.e.managerVia(fx.front, Options{Storage: fx.storage})
	if err := m2.Manage(t.Context(), []string{fx.host}); err != nil {
		t.Fatal(err)
	}
	if leaf, err := fetchLeafWithin(serveManager(t, m2), fx.host, fx.e.pebble.IssuerRoots, 3*time.Second); err != nil || leaf.SerialNumber.Cmp(fx.first.SerialNumber) != 0 {
		t.Errorf("after a restart on the storage the failed write left, the certificate is not served: %v", err)
	}
}

// fetchLeafWithin polls fetchLeaf for up to d.
func fetchLeafWithin(addr, host string, roots *x509.CertPool, d time.Duration) (*x509.Certificate, error) {
	deadline := time.Now().Add(d)
	for {
		leaf, err := fetchLeaf(addr, host, roots)
		if err == nil || time.Now().After(deadline) {
			return leaf, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// limitFileSize sets RLIMIT_FSIZE (writes past n bytes fail with EFBIG
// instead of raising SIGXFSZ) until restore is called.
func limitFileSize(t *testing.T, n uint64) (restore func()) {
	t.Helper()
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	signal.Ignore(syscall.SIGXFSZ)
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: old.Max}); err != nil {
		t.Skipf("cannot limit file sizes: %v", err)
	}
	done := false
	restore = func() {
		if !done {
			done = true
			syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
			signal.Reset(syscall.SIGXFSZ)
		}
	}
	t.Cleanup(restore)
	return restore
}

// TestFaultStaleLock leaves in storage the issuance lock of a relay that
// crashed while obtaining: long stale, freshly abandoned, or empty (it
// died while creating it). The obtain proceeds once the lock counts as
// abandoned (certmagic: no refresh for 10s; an empty file after 2s).
func TestFaultStaleLock(t *testing.T) {
	checkLeaks(t)
	for _, tc := range []struct {
		name    string
		lock    func() []byte
		waitMin time.Duration
	}{
		{"stale for an hour", func() []byte { return lockJSON(time.Now().Add(-time.Hour)) }, 0},
		{"refreshed 8s ago", func() []byte { return lockJSON(time.Now().Add(-8 * time.Second)) }, time.Second},
		{"empty", func() []byte { return nil }, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			front := newCAFront(t, e.pebble)
			var rec recorder
			storage := t.TempDir()
			host := uniqueHost("lock")
			lock := filepath.Join(storage, "locks", certmagic.StorageKeys.Safe("issue_cert_"+host)+".lock")
			os.MkdirAll(filepath.Dir(lock), 0o700)
			if err := os.WriteFile(lock, tc.lock(), 0o600); err != nil {
				t.Fatal(err)
			}
			logger, logs := testLogger(t)
			m := e.managerVia(front, Options{Storage: storage, OnEvent: rec.record, Logger: logger})
			start := time.Now()
			if err := m.Manage(t.Context(), []string{host}); err != nil {
				t.Fatal(err)
			}
			rec.wait(t, "obtain", host, "ok")
			took := time.Since(start)
			waitLeaf(t, serveManager(t, m), host, e.pebble.IssuerRoots, nil)
			if took < tc.waitMin {
				t.Errorf("obtained after %v: the lock was not waited for", took)
			}
			if n := errorLines(logs.All()); n != 0 {
				t.Errorf("%d error lines:\n%s", n, logText(logs.All()))
			}
			t.Logf("obtained after %v with %d log lines", took.Round(time.Millisecond), logs.Len())
		})
	}
}

func lockJSON(updated time.Time) []byte {
	b, _ := json.Marshal(map[string]time.Time{"created": updated, "updated": updated})
	return b
}
