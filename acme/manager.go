package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"go.uber.org/zap"
	"golang.org/x/net/idna"
)

// Well-known ACME directories for Options.CA.
const (
	LetsEncrypt        = certmagic.LetsEncryptProductionCA
	LetsEncryptStaging = certmagic.LetsEncryptStagingCA
)

// Named errors, for errors.Is.
var (
	ErrClosed        = errors.New("acme: manager closed")
	ErrNoCA          = errors.New("acme: no ACME CA configured")
	ErrInvalidHost   = errors.New("acme: invalid host name")
	ErrNoCertificate = errors.New("acme: no certificate for server name")
	ErrNoChallenge   = errors.New("acme: no tls-alpn-01 challenge pending for server name")
	ErrHostMismatch  = errors.New("acme: certificate does not cover host")
)

// Options configures a Manager. The zero value of each field is documented
// next to it; the zero Options is a Manager serving only LoadFiles
// certificates.
type Options struct {
	// Email is the ACME account's contact. Empty registers without one.
	Email string
	// CA is the ACME directory URL, e.g. LetsEncrypt. Empty disables ACME:
	// Manage fails with ErrNoCA and only LoadFiles certificates are served.
	// Configuring a CA means agreeing to its subscriber agreement. With
	// LetsEncrypt, a retry after a failed attempt is first rehearsed on
	// LetsEncryptStaging, to spare production's failed-validation limit.
	CA string
	// CARoots is the trust for the CA's directory (Pebble, a private CA).
	// Nil means the system roots.
	CARoots *x509.CertPool
	// Storage is the directory for certificates, keys and the ACME account.
	// Required when CA is set.
	Storage string
	// HTTPPort and TLSPort are the ports the relay serves HTTP-01 and
	// TLS-ALPN-01 on (0 means 80 and 443). The Manager never listens, so
	// they only appear in logs, to tell an operator where the CA will
	// connect.
	HTTPPort, TLSPort int
	// DisableHTTP01 and DisableTLSALPN01 turn a challenge type off; at least
	// one must stay on.
	DisableHTTP01, DisableTLSALPN01 bool
	// RenewalWindowRatio is the share of a certificate's lifetime, counted
	// back from its expiry, in which it is renewed. 0 means certmagic's
	// default (1/3); 1 makes every certificate due at once.
	RenewalWindowRatio float64
	// FilePollInterval is how often LoadFiles certificates are checked for
	// changes. 0 means 5s; negative disables polling, leaving Reload.
	FilePollInterval time.Duration
	// Logger receives structured logs. Nil means zap.NewNop().
	Logger *zap.Logger
	// OnEvent, if set, is called after every obtain or renew attempt. It is
	// called synchronously from certmagic's goroutines, concurrently: keep
	// it fast (update a metric).
	OnEvent func(Event)
}

// Event reports the outcome of one obtain or renew attempt.
type Event struct {
	Kind   string // "obtain" or "renew"
	Host   string
	Result string // "ok" or "error"
	// NotAfter is the expiry of the new certificate on "ok", and of the
	// certificate still being served (zero if none) on "error".
	NotAfter time.Time
	Err      error // set on "error"
}

// Manager serves certificates for the relay's terminated hosts.
type Manager struct {
	logger  *zap.Logger
	onEvent func(Event)
	files   *fileStore

	// ACME machinery; all nil when Options.CA is empty.
	cache      *certmagic.Cache
	cfg        *certmagic.Config
	storage    *guardedStorage
	issuer     *issuer
	challenges *challengeStore
	disHTTP    bool
	disALPN    bool

	lifetime context.Context // canceled by Close
	cancel   context.CancelFunc

	mu      sync.RWMutex
	managed map[string]context.CancelFunc // ACME hosts → stops their obtain retries
	closed  bool

	closeOnce sync.Once

	tlsOnce sync.Once
	tlsCfg  *tls.Config // see TLSConfig
}

// New builds a Manager. It starts certmagic's maintenance (renewal and OCSP
// checks) but obtains nothing until Manage.
func New(opts Options) (*Manager, error) {
	logger := opts.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	m := &Manager{
		logger:  logger,
		onEvent: opts.OnEvent,
		managed: make(map[string]context.CancelFunc),
		disHTTP: opts.DisableHTTP01,
		disALPN: opts.DisableTLSALPN01,
	}
	m.lifetime, m.cancel = context.WithCancel(context.Background())
	m.files = newFileStore(logger, opts.FilePollInterval)
	if opts.CA == "" {
		return m, nil
	}
	if opts.Storage == "" {
		m.cancel()
		return nil, errors.New("acme: Options.Storage is required with a CA")
	}
	if opts.DisableHTTP01 && opts.DisableTLSALPN01 {
		m.cancel()
		return nil, errors.New("acme: both challenge types disabled")
	}
	// Fail now, not in a background obtain, if the directory is unusable.
	if err := os.MkdirAll(opts.Storage, 0o700); err != nil {
		m.cancel()
		return nil, fmt.Errorf("acme: storage: %w", err)
	}
	m.setUpCertmagic(opts)
	logger.Info("ACME certificate management ready",
		zap.String("ca", opts.CA),
		zap.String("storage", opts.Storage),
		zap.Int("http01_port", portOr(opts.HTTPPort, 80, opts.DisableHTTP01)),
		zap.Int("tlsalpn01_port", portOr(opts.TLSPort, 443, opts.DisableTLSALPN01)))
	return m, nil
}

func portOr(port, def int, disabled bool) int {
	switch {
	case disabled:
		return 0
	case port == 0:
		return def
	}
	return port
}

// setUpCertmagic wires an explicit Cache and Config. Every field certmagic
// would otherwise copy from its package-level Default is set here.
func (m *Manager) setUpCertmagic(opts Options) {
	m.storage = newGuardedStorage(opts.Storage, m.logger)
	m.challenges = newChallengeStore(m.storage, m.logger)
	m.issuer = newIssuer(opts, m.storage, m.challenges, m.logger, m.lifetime)
	m.challenges.prefixes = m.issuer.challengePrefixes()

	ratio := opts.RenewalWindowRatio
	if ratio == 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return m.cfg, nil },
		Logger:           m.logger.Named("certmagic"),
	})
	m.cfg = certmagic.New(m.cache, certmagic.Config{
		RenewalWindowRatio: ratio,
		OnEvent:            m.certmagicEvent,
		ShouldEmitFunc:     shouldEmit,
		Issuers:            []certmagic.Issuer{m.issuer},
		KeySource:          certmagic.StandardKeyGenerator{KeyType: certmagic.P256},
		OCSP:               certmagic.OCSPConfig{}, // zero value: stapling on
		Storage:            m.storage,
		Logger:             m.logger.Named("certmagic"),
	})
	// certmagic.New fills these from certmagic.Default when they are zero;
	// pin them so nothing set on the package variable leaks in.
	m.cfg.OnDemand = nil
	m.cfg.MustStaple = false
	m.cfg.DefaultServerName = ""
	m.cfg.FallbackServerName = ""
	m.cfg.LocalCache = nil
}

// Manage makes hosts the set of ACME-managed hosts: new hosts are loaded
// from storage or obtained, in the background and with certmagic's
// retry/backoff; hosts already managed are left alone; hosts missing from
// this call stop being renewed and served. ctx bounds only the call: the
// work it starts runs until the host is dropped or the Manager closes.
func (m *Manager) Manage(ctx context.Context, hosts []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	want := make(map[string]bool, len(hosts))
	for _, h := range hosts {
		name, err := normalizeHost(h)
		if err != nil {
			return err
		}
		if strings.HasPrefix(name, "*.") {
			return fmt.Errorf("%w: %q: wildcards need DNS-01, which the relay does not do", ErrInvalidHost, h)
		}
		want[name] = true
	}
	if m.cfg == nil {
		if len(want) == 0 {
			return nil
		}
		return ErrNoCA
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	var dropped []certmagic.SubjectIssuer
	for name, stop := range m.managed {
		if !want[name] {
			stop()
			delete(m.managed, name)
			dropped = append(dropped, certmagic.SubjectIssuer{Subject: name})
		}
	}
	m.cache.RemoveManaged(dropped)
	var added []string
	for name := range want {
		if _, ok := m.managed[name]; ok {
			continue
		}
		hostCtx, stop := context.WithCancel(m.lifetime)
		m.managed[name] = stop
		added = append(added, name)
		if err := m.cfg.ManageAsync(hostCtx, []string{name}); err != nil {
			return fmt.Errorf("acme: managing %s: %w", name, err)
		}
	}
	if len(added) > 0 || len(dropped) > 0 {
		m.logger.Info("ACME-managed hosts changed",
			zap.Strings("added", added), zap.Int("dropped", len(dropped)), zap.Int("managed", len(m.managed)))
	}
	return nil
}

func (m *Manager) isManaged(name string) bool {
	m.mu.RLock()
	defer m.mu.RUnlock()
	_, ok := m.managed[name]
	return ok
}

// TLSConfig returns the *tls.Config for the in-process TLS server, the
// same one on every call: its session ticket keys (made and rotated by
// crypto/tls) are what lets a returning client resume its TLS session,
// and a config per connection would give every connection keys of its
// own. Its GetCertificate serves LoadFiles certificates first, then ACME
// ones, and answers TLS-ALPN-01 challenge hellos; NextProtos offers h2,
// http/1.1 and acme-tls/1. Callers must not modify it.
func (m *Manager) TLSConfig() *tls.Config {
	m.tlsOnce.Do(func() {
		m.tlsCfg = &tls.Config{
			GetCertificate: m.getCertificate,
			NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
			MinVersion:     tls.VersionTLS12,
		}
	})
	return m.tlsCfg
}

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := lookupName(hello.ServerName)
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmez.ACMETLS1Protocol {
		return m.challengeCertificate(hello, name)
	}
	if cert := m.files.lookup(name); cert != nil {
		return cert, nil
	}
	if m.cfg != nil && m.isManaged(name) {
		return m.cfg.GetCertificate(hello)
	}
	return nil, fmt.Errorf("%w: %q", ErrNoCertificate, hello.ServerName)
}

// challengeCertificate answers a CA's TLS-ALPN-01 validation hello
// (RFC 8737: SNI is the host, ALPN is only acme-tls/1).
func (m *Manager) challengeCertificate(hello *tls.ClientHelloInfo, name string) (*tls.Certificate, error) {
	if m.challenges != nil && !m.disALPN && name != "" {
		p, ok := m.challenges.lookup(hello.Context(), name, m.isManaged(name))
		if ok && p.cert != nil {
			if hello.Conn != nil {
				m.logger.Info("served tls-alpn-01 challenge certificate",
					zap.String("host", name), zap.Stringer("remote", hello.Conn.RemoteAddr()))
			}
			return p.cert, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNoChallenge, hello.ServerName)
}

// HandleHTTPChallenge answers r if it is an HTTP-01 validation request for
// a challenge this Manager (or another sharing its storage) is presenting,
// and reports whether it did. When it returns false it has not touched w.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	if m.challenges == nil || m.disHTTP || !certmagic.LooksLikeHTTPChallenge(r) {
		return false
	}
	name := lookupName(hostOnly(r.Host))
	p, ok := m.challenges.lookup(r.Context(), name, m.isManaged(name))
	if !ok || p.chal.Type != challengeHTTP01 {
		return false
	}
	return certmagic.SolveHTTPChallenge(m.logger, w, r, p.chal)
}

// NotAfter returns the expiry of the certificate currently served for
// host, and false if there is none (not managed, or not obtained yet).
// When several match, the latest expiry wins.
func (m *Manager) NotAfter(host string) (time.Time, bool) {
	name := lookupName(host)
	if cert := m.files.lookup(name); cert != nil && cert.Leaf != nil {
		return cert.Leaf.NotAfter, true
	}
	if m.cache == nil || !m.isManaged(name) {
		return time.Time{}, false
	}
	var latest time.Time
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if c.Leaf != nil && c.Leaf.NotAfter.After(latest) {
			latest = c.Leaf.NotAfter
		}
	}
	return latest, !latest.IsZero()
}

// Close stops renewals, pending obtain retries and file polling, waits for
// in-flight ACME requests and storage writes to unwind, and from then on
// never writes to Storage. Certificates already loaded keep being served by
// TLSConfig. Close is idempotent and always returns nil.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		m.cancel()
		m.files.close()
		if m.cache != nil {
			m.cache.Stop()
			m.issuer.close()
			m.storage.close()
		}
	})
	return nil
}

// normalizeHost turns a configured host into the form SNI and certificates
// use: lower case, no trailing dot, IDNs as punycode. A leading "*." is kept.
func normalizeHost(h string) (string, error) {
	name := strings.TrimSuffix(strings.TrimSpace(h), ".")
	wild := strings.HasPrefix(name, "*.")
	if wild {
		name = name[2:]
	}
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil || ascii == "" || strings.ContainsAny(ascii, ":/*") {
		return "", fmt.Errorf("%w: %q", ErrInvalidHost, h)
	}
	if _, err := netip.ParseAddr(ascii); err == nil {
		return "", fmt.Errorf("%w: %q: IP addresses are not supported", ErrInvalidHost, h)
	}
	if wild {
		ascii = "*." + ascii
	}
	return ascii, nil
}

// lookupName is the cheap per-handshake form of normalizeHost.
func lookupName(serverName string) string {
	return strings.ToLower(strings.TrimSuffix(serverName, "."))
}

// hostOnly strips the port from an HTTP Host header.
func hostOnly(hostport string) string {
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		return host
	}
	return strings.Trim(hostport, "[]")
}
