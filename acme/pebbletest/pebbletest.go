// Package pebbletest runs Pebble, Let's Encrypt's test ACME CA, inside the
// test process, so tests can obtain real certificates over real ACME without
// a network, a container or a pebble binary.
//
// Pebble's validation authority (VA) resolves every name through a tiny DNS
// server started alongside it, which answers with one loopback address, and
// connects to the HTTP and TLS ports the test gives it: listen on loopback
// first, then start Pebble with those ports.
//
//	httpLn, _ := net.Listen("tcp", "127.0.0.1:0")
//	tlsLn, _ := net.Listen("tcp", "127.0.0.1:0")
//	p := pebbletest.Start(t, pebbletest.Opts{
//		HTTPPort: httpLn.Addr().(*net.TCPAddr).Port,
//		TLSPort:  tlsLn.Addr().(*net.TCPAddr).Port,
//	})
//	// ACME client: directory p.DirectoryURL, trusting p.DirectoryRoots.
//	// TLS client of the issued certificate: trusting p.IssuerRoots.
//
// It is a test helper: import it only from _test.go files.
package pebbletest

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"log"
	"maps"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Opts configures an in-process Pebble.
type Opts struct {
	// HTTPPort is the port the VA connects to for http-01 challenges,
	// i.e. where the test serves its stand-in for the relay's :80.
	// Zero means 80, which tests normally cannot listen on.
	HTTPPort int

	// TLSPort is the port the VA connects to for tls-alpn-01 challenges.
	// Zero means 443.
	TLSPort int

	// Addr is what the DNS server answers for every name: an A record for
	// an IPv4 address, an AAAA record for an IPv6 one. Zero means
	// 127.0.0.1. Use ::1 when the test servers listen on [::1].
	Addr netip.Addr

	// Validity is the lifetime of issued certificates, rounded to whole
	// seconds. Zero means Pebble's default of about 90 days; a short one
	// (minutes) makes every fresh certificate due for renewal.
	Validity time.Duration

	// Logf receives Pebble's log lines. Nil means t.Logf, which the test
	// prints only on failure or with -v.
	Logf func(format string, args ...any)

	// NonceRejectPercent is the share of valid nonces Pebble rejects as
	// badNonce (PEBBLE_WFE_NONCEREJECT), as a real CA may after a
	// restart. Zero means none.
	NonceRejectPercent int
}

// Pebble is a running in-process Pebble.
type Pebble struct {
	// DirectoryURL is the ACME directory, an https URL on 127.0.0.1.
	DirectoryURL string
	// DirectoryRoots trusts the directory's HTTPS certificate; give it to
	// the ACME client (acme.Options.CARoots).
	DirectoryRoots *x509.CertPool
	// IssuerRoot is the root that certificates issued by this Pebble chain
	// to, and IssuerRoots a pool holding only it: what a TLS client of the
	// issued certificate must trust.
	IssuerRoot  *x509.Certificate
	IssuerRoots *x509.CertPool
	// DNSAddr is the host:port of the DNS server the VA resolves names with
	// (TCP only).
	DNSAddr string

	srv      *httptest.Server
	dns      *dns.Server
	stopOnce sync.Once
}

// envMu serialises Start: Pebble reads its tuning knobs from the process
// environment once, while being constructed, so Start sets them, builds
// Pebble and puts the old values back. t.Setenv would forbid t.Parallel in
// every test that uses Pebble.
var envMu sync.Mutex

// pebbleEnv makes Pebble fast and deterministic: no random pre-validation
// sleeps, no randomly rejected nonces, and a fresh authorization (so a real
// challenge) for every order.
var pebbleEnv = map[string]string{
	"PEBBLE_VA_NOSLEEP":      "1",
	"PEBBLE_WFE_NONCEREJECT": "0",
	"PEBBLE_AUTHZREUSE":      "0",
}

// Start runs Pebble until the test ends (or Stop is called).
func Start(t testing.TB, opts Opts) *Pebble {
	t.Helper()
	if opts.HTTPPort == 0 {
		opts.HTTPPort = 80
	}
	if opts.TLSPort == 0 {
		opts.TLSPort = 443
	}
	if !opts.Addr.IsValid() {
		opts.Addr = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	logger := log.New(newTestWriter(t, opts.Logf), "pebble ", log.Lmicroseconds)

	p := &Pebble{}
	p.dns, p.DNSAddr = startDNS(t, opts.Addr.Unmap())

	profile := ca.Profile{Description: "pebbletest"}
	if opts.Validity > 0 {
		profile.ValidityPeriod = uint64(opts.Validity.Round(time.Second) / time.Second)
	}

	env := maps.Clone(pebbleEnv)
	if opts.NonceRejectPercent > 0 {
		env["PEBBLE_WFE_NONCEREJECT"] = strconv.Itoa(opts.NonceRejectPercent)
	}
	envMu.Lock()
	restore := setenv(env)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": profile})
	validator := va.New(logger, opts.HTTPPort, opts.TLSPort, false, p.DNSAddr, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	restore()
	envMu.Unlock()

	p.srv = httptest.NewUnstartedServer(front.Handler())
	p.srv.Config.ErrorLog = logger
	p.srv.StartTLS()
	p.DirectoryURL = p.srv.URL + wfe.DirectoryPath
	p.DirectoryRoots = x509.NewCertPool()
	p.DirectoryRoots.AddCert(p.srv.Certificate())
	p.IssuerRoot = authority.GetRootCert(0).Cert
	p.IssuerRoots = x509.NewCertPool()
	p.IssuerRoots.AddCert(p.IssuerRoot)

	t.Cleanup(p.Stop)
	return p
}

// Stop takes the CA off the network: the directory stops accepting
// connections, as if the CA were down. It is idempotent.
//
// Pebble's VA keeps one goroutine blocked on its (never closed) task queue
// after Stop; leak checks must ignore
// github.com/letsencrypt/pebble/v2/va.VAImpl.processTasks.
func (p *Pebble) Stop() {
	p.stopOnce.Do(func() {
		p.srv.CloseClientConnections()
		p.srv.Close()
		_ = p.dns.Shutdown()
	})
}

func setenv(vars map[string]string) (restore func()) {
	type old struct {
		value string
		set   bool
	}
	saved := make(map[string]old, len(vars))
	for k, v := range vars {
		value, set := os.LookupEnv(k)
		saved[k] = old{value, set}
		_ = os.Setenv(k, v)
	}
	return func() {
		for k, o := range saved {
			if o.set {
				_ = os.Setenv(k, o.value)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}
}

// startDNS serves A/AAAA answers pointing every name at addr, over TCP
// because that is what Pebble's VA uses with a custom resolver.
func startDNS(t testing.TB, addr netip.Addr) (*dns.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pebbletest: DNS listener: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		Listener:          ln,
		Handler:           dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) { answer(w, r, addr) }),
		NotifyStartedFunc: func() { close(started) },
	}
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	return srv, ln.Addr().String()
}

func answer(w dns.ResponseWriter, r *dns.Msg, addr netip.Addr) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 1, Rrtype: q.Qtype}
		switch {
		case q.Qtype == dns.TypeA && addr.Is4():
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: addr.AsSlice()})
		case q.Qtype == dns.TypeAAAA && addr.Is6():
			m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: addr.AsSlice()})
		}
	}
	_ = w.WriteMsg(m)
}

// testWriter forwards Pebble's log lines to the test log until the test
// ends; Pebble's goroutines can outlive the test, and testing panics on a
// Log call after that.
type testWriter struct {
	mu   sync.Mutex
	logf func(string, ...any)
	done bool
}

func newTestWriter(t testing.TB, logf func(string, ...any)) *testWriter {
	w := &testWriter{logf: logf}
	if w.logf == nil {
		w.logf = t.Logf
	}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.logf("%s", bytes.TrimRight(b, "\n"))
	}
	return len(b), nil
}

// String helps when a test prints the Pebble it started.
func (p *Pebble) String() string {
	return fmt.Sprintf("pebble(%s, dns %s)", p.DirectoryURL, p.DNSAddr)
}
