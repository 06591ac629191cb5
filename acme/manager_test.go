package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zapcore"
)

// uniqueHost returns a host name not used before in this process:
// certmagic keeps renewal backoff state per name in package globals, so a
// name must not carry state from an earlier test (or -count run).
func uniqueHost(label string) string {
	return fmt.Sprintf("%s-%d.relay46.test", label, hostSeq.Add(1))
}

var hostSeq atomic.Int64

// TestObtainHTTP01 obtains a certificate with HTTP-01 answered through the
// relay-style :80 handler, serves it through TLSConfig with a chain a
// client trusting only Pebble's root accepts, and stops serving it when a
// reload drops the host.
func TestObtainHTTP01(t *testing.T) {
	checkLeaks(t)
	e := newEnv(t, envOpts{})
	var rec recorder
	m := e.newManager(Options{DisableTLSALPN01: true, OnEvent: rec.record})
	host := uniqueHost("http01")

	if err := m.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	ev := rec.wait(t, "obtain", host, "ok")
	addr := serveManager(t, m)
	leaf := waitLeaf(t, addr, host, e.pebble.IssuerRoots, nil)

	if e.http01.Load() == 0 || e.alpn01.Load() != 0 {
		t.Errorf("challenges answered: http-01 %d, tls-alpn-01 %d; want only http-01", e.http01.Load(), e.alpn01.Load())
	}
	if !ev.NotAfter.Equal(leaf.NotAfter) {
		t.Errorf("event NotAfter %v, served %v", ev.NotAfter, leaf.NotAfter)
	}
	if na, ok := m.NotAfter(host); !ok || !na.Equal(leaf.NotAfter) {
		t.Errorf("NotAfter = %v, %v; want %v", na, ok, leaf.NotAfter)
	}

	// Config reload without the host: no longer served.
	if err := m.Manage(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.NotAfter(host); ok {
		t.Error("NotAfter still reports a dropped host")
	}
	if _, err := fetchLeaf(addr, host, e.pebble.IssuerRoots); err == nil {
		t.Error("dropped host still served")
	}
}

// TestRestart closes a Manager and starts another on the same storage
// with the CA down: the stored certificate is served without the CA.
func TestRestart(t *testing.T) {
	e := newEnv(t, envOpts{})
	storage := t.TempDir()
	var rec recorder
	m1 := e.newManager(Options{Storage: storage, OnEvent: rec.record})
	host := uniqueHost("restart")
	if err := m1.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "obtain", host, "ok")
	first := waitLeaf(t, serveManager(t, m1), host, e.pebble.IssuerRoots, nil)
	m1.Close()
	e.pebble.Stop()

	m2 := e.newManager(Options{Storage: storage})
	if err := m2.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	waitLeaf(t, serveManager(t, m2), host, e.pebble.IssuerRoots, sameSerial(first))
}

// TestObtainTLSALPN01 obtains with TLS-ALPN-01 only, over IPv6: the CA's
// acme-tls/1 hello reaches TLSConfig's GetCertificate through the
// relay-style TLS listener on [::1].
func TestObtainTLSALPN01(t *testing.T) {
	e := newEnv(t, envOpts{IPv6: true})
	var rec recorder
	m := e.newManager(Options{DisableHTTP01: true, OnEvent: rec.record})
	host := uniqueHost("alpn01")

	if err := m.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "obtain", host, "ok")
	waitLeaf(t, serveManager(t, m), host, e.pebble.IssuerRoots, nil)

	if e.alpn01.Load() == 0 || e.http01.Load() != 0 {
		t.Errorf("challenges answered: http-01 %d, tls-alpn-01 %d; want only tls-alpn-01", e.http01.Load(), e.alpn01.Load())
	}
}

// TestRenewal makes a fresh certificate due (RenewalWindowRatio 1), runs
// certmagic's maintenance pass, and sees a new certificate served; the
// renewal order tells the CA which certificate it replaces.
func TestRenewal(t *testing.T) {
	e := newEnv(t, envOpts{})
	var rec recorder
	m := e.newManager(Options{RenewalWindowRatio: 1, OnEvent: rec.record})
	host := uniqueHost("renew")

	if err := m.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "obtain", host, "ok")
	addr := serveManager(t, m)
	first := waitLeaf(t, addr, host, e.pebble.IssuerRoots, nil)

	if err := m.cache.RenewManagedCertificates(t.Context()); err != nil {
		t.Fatal(err)
	}
	ev := rec.wait(t, "renew", host, "ok")
	second := waitLeaf(t, addr, host, e.pebble.IssuerRoots, func(c *x509.Certificate) bool {
		return c.SerialNumber.Cmp(first.SerialNumber) != 0
	})
	if !ev.NotAfter.Equal(second.NotAfter) {
		t.Errorf("renew event NotAfter %v, served %v", ev.NotAfter, second.NotAfter)
	}
	if !strings.Contains(e.pebbleLog(), "is a replacement of") {
		t.Error("renewal order did not name the certificate it replaces (ARI)")
	}
}

// TestRenewalCADown stops the CA before a due renewal: the renewal fails
// visibly (event and error log) and the old certificate keeps being served.
func TestRenewalCADown(t *testing.T) {
	e := newEnv(t, envOpts{})
	var rec recorder
	logger, logs := testLogger(t)
	m := e.newManager(Options{RenewalWindowRatio: 1, OnEvent: rec.record, Logger: logger})
	host := uniqueHost("cadown")

	if err := m.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	rec.wait(t, "obtain", host, "ok")
	addr := serveManager(t, m)
	before := waitLeaf(t, addr, host, e.pebble.IssuerRoots, nil)

	e.pebble.Stop()
	if err := m.cache.RenewManagedCertificates(t.Context()); err != nil {
		t.Fatal(err)
	}
	ev := rec.wait(t, "renew", host, "error")
	if ev.Err == nil || !ev.NotAfter.Equal(before.NotAfter) {
		t.Errorf("failure event = %+v; want an error and the old NotAfter %v", ev, before.NotAfter)
	}
	after, err := fetchLeaf(addr, host, e.pebble.IssuerRoots)
	if err != nil {
		t.Fatalf("old certificate no longer served: %v", err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Error("served certificate changed although renewal failed")
	}
	if logs.FilterLevelExact(zapcore.ErrorLevel).FilterFieldKey("identifier").Len() == 0 {
		t.Errorf("no error log about %s; logs: %v", host, logs.All())
	}
}

// TestSharedStorage runs two Managers on one storage directory, both
// managing the same two hosts at once, with the CA's validation requests
// dealt alternately to each. certmagic's locks let one of them obtain each
// certificate and the other load it; the shared challenge records let
// either answer a validation. One account, one issuance per host, and both
// serve the same valid certificate.
func TestSharedStorage(t *testing.T) {
	e := newEnv(t, envOpts{})
	storage := t.TempDir()
	var rec recorder
	m1 := e.newManager(Options{Storage: storage, OnEvent: rec.record})
	m2 := e.newManager(Options{Storage: storage, OnEvent: rec.record})
	hosts := []string{uniqueHost("shared-a"), uniqueHost("shared-b")}

	var wg sync.WaitGroup
	for _, m := range []*Manager{m1, m2} {
		wg.Go(func() {
			if err := m.Manage(t.Context(), hosts); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()

	addr1, addr2 := serveManager(t, m1), serveManager(t, m2)
	for _, host := range hosts {
		l1 := waitLeaf(t, addr1, host, e.pebble.IssuerRoots, nil)
		l2 := waitLeaf(t, addr2, host, e.pebble.IssuerRoots, nil)
		if l1.SerialNumber.Cmp(l2.SerialNumber) != 0 {
			t.Errorf("%s: managers serve different certificates", host)
		}
		if n := rec.count("obtain", host, "ok"); n != 1 {
			t.Errorf("%s: %d issuances, want 1", host, n)
		}
	}
	accounts, _ := filepath.Glob(filepath.Join(storage, "acme", "*", "relay46_accounts", "*.json"))
	if len(accounts) != 1 {
		t.Errorf("accounts in storage: %v, want exactly one", accounts)
	}
	leftovers, _ := filepath.Glob(filepath.Join(storage, "acme", "*", "challenge_tokens", "*"))
	if len(leftovers) != 0 {
		t.Errorf("challenge records left in storage: %v", leftovers)
	}
}

// TestTestCARehearsal checks that a retry first validates against the test
// CA and then issues from the real one, as for Let's Encrypt + staging.
func TestTestCARehearsal(t *testing.T) {
	e := newEnv(t, envOpts{})
	staging := newEnv(t, envOpts{}) // its own ports; only its directory is used
	m := e.newManager(Options{DisableTLSALPN01: true})
	m.issuer.testCA = staging.pebble.DirectoryURL
	m.challenges.prefixes = m.issuer.challengePrefixes()
	// The staging VA connects to staging's ports: route them to m too.
	staging.mu.Lock()
	staging.managers = append(staging.managers, m)
	staging.mu.Unlock()

	csr := testCSR(t, uniqueHost("rehearsal"))
	attempts := 1
	ctx := context.WithValue(t.Context(), certmagicAttempts, &attempts)
	ic, err := m.issuer.Issue(ctx, csr)
	if err != nil {
		t.Fatal(err)
	}
	if staging.http01.Load() == 0 {
		t.Error("test CA was not rehearsed on")
	}
	leaf := parseLeaf(t, ic.Certificate)
	pool := x509.NewCertPool()
	for _, c := range parseChain(t, ic.Certificate)[1:] {
		pool.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.pebble.IssuerRoots, Intermediates: pool}); err != nil {
		t.Errorf("certificate does not come from the real CA: %v", err)
	}
}

// TestChallengeRouting covers the relay-facing hooks without a CA: what
// HandleHTTPChallenge and GetCertificate do with requests that are not
// (or not quite) pending challenges.
func TestChallengeRouting(t *testing.T) {
	// A CA that refuses connections: Manage marks the host managed, and
	// the obtain it starts fails before presenting any challenge.
	m, err := New(Options{CA: "https://127.0.0.1:1/dir", Storage: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	host := uniqueHost("routing")
	if err := m.Manage(t.Context(), []string{host}); err != nil {
		t.Fatal(err)
	}
	chal := testChallenge(host, challengeHTTP01, "tok_en-1")
	if err := m.challenges.present(t.Context(), challengePrefix(m.issuer.IssuerKey()), chal); err != nil {
		t.Fatal(err)
	}
	defer m.challenges.cleanUp(t.Context(), challengePrefix(m.issuer.IssuerKey()), chal)

	for _, tc := range []struct {
		name, method, host, path string
		want                     bool
	}{
		{"pending", "GET", host, "/.well-known/acme-challenge/tok_en-1", true},
		{"port in Host", "GET", host + ":80", "/.well-known/acme-challenge/tok_en-1", true},
		{"other token", "GET", host, "/.well-known/acme-challenge/other", false},
		{"other host (DNS rebinding)", "GET", "evil.test", "/.well-known/acme-challenge/tok_en-1", false},
		{"not a challenge", "GET", host, "/index.html", false},
		{"POST", "POST", host, "/.well-known/acme-challenge/tok_en-1", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, r := newRequest(tc.method, tc.host, tc.path)
			if got := m.HandleHTTPChallenge(w, r); got != tc.want {
				t.Fatalf("handled = %v, want %v", got, tc.want)
			}
			if tc.want && w.Body.String() != chal.KeyAuthorization {
				t.Errorf("body %q, want the key authorization", w.Body.String())
			}
			if !tc.want && w.Body.Len() != 0 {
				t.Error("wrote a response although not handled")
			}
		})
	}

	acmeHello := &tls.ClientHelloInfo{ServerName: host, SupportedProtos: []string{"acme-tls/1"}}
	if _, err := m.getCertificate(acmeHello); !errors.Is(err, ErrNoChallenge) {
		t.Errorf("acme-tls/1 hello without a tls-alpn-01 challenge: err = %v, want ErrNoChallenge", err)
	}
	if _, err := m.getCertificate(&tls.ClientHelloInfo{ServerName: "unknown.relay46.test"}); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("unknown name: err = %v, want ErrNoCertificate", err)
	}
}

func TestManageErrors(t *testing.T) {
	files, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer files.Close()
	if err := files.Manage(t.Context(), []string{"a.relay46.test"}); !errors.Is(err, ErrNoCA) {
		t.Errorf("Manage without CA: %v, want ErrNoCA", err)
	}
	if err := files.Manage(t.Context(), nil); err != nil {
		t.Errorf("Manage(nil) without CA: %v", err)
	}

	m, err := New(Options{CA: "https://127.0.0.1:1/dir", Storage: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"*.relay46.test", "192.0.2.1", "::1", "", "a.relay46.test:443"} {
		if err := m.Manage(t.Context(), []string{h}); !errors.Is(err, ErrInvalidHost) {
			t.Errorf("Manage(%q): %v, want ErrInvalidHost", h, err)
		}
	}
	m.Close()
	m.Close()
	if err := m.Manage(t.Context(), []string{"a.relay46.test"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Manage after Close: %v, want ErrClosed", err)
	}

	for _, opts := range []Options{
		{CA: LetsEncrypt},
		{CA: LetsEncrypt, Storage: "x", DisableHTTP01: true, DisableTLSALPN01: true},
	} {
		if _, err := New(opts); err == nil {
			t.Errorf("New(%+v) succeeded", opts)
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"Blog.Example.ORG", "blog.example.org"},
		{"blog.example.org.", "blog.example.org"},
		{" blog.example.org ", "blog.example.org"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"*.example.org", "*.example.org"},
		{"a:b", ""},
		{"a/b", ""},
		{"a.*.example", ""},
		{"2001:db8::1", ""},
	} {
		got, err := normalizeHost(tc.in)
		if got != tc.want || (err != nil) != (tc.want == "") {
			t.Errorf("normalizeHost(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for in, want := range map[string]string{
		"a.example":      "a.example",
		"a.example:80":   "a.example",
		"[2001:db8::1]":  "2001:db8::1",
		"[::1]:8080":     "::1",
		"192.0.2.1:8080": "192.0.2.1",
	} {
		if got := hostOnly(in); got != want {
			t.Errorf("hostOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIssuerKey(t *testing.T) {
	// Same storage layout as certmagic.ACMEIssuer, hence as Caddy.
	for in, want := range map[string]string{
		LetsEncrypt:                      "acme-v02.api.letsencrypt.org-directory",
		LetsEncryptStaging:               "acme-staging-v02.api.letsencrypt.org-directory",
		"https://127.0.0.1:14000/dir":    "127.0.0.1:14000-dir",
		"https://ca.example/acme/v2/dir": "ca.example-acme-v2-dir",
	} {
		if got := issuerKey(in); got != want {
			t.Errorf("issuerKey(%q) = %q, want %q", in, got, want)
		}
	}
}
