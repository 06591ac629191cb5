package acme

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// issuer obtains certificates over ACME for certmagic. It stands in for
// certmagic.ACMEIssuer, whose HTTP-01 and TLS-ALPN-01 solvers cannot be
// replaced and try to listen on :80/:443 (or, if those are taken, silently
// assume whoever holds them will answer). Ours only record the challenge
// in a challengeStore that the relay's listeners consult.
type issuer struct {
	ca string
	// testCA, if set, is rehearsed on before retrying ca after a failure,
	// as certmagic does with Let's Encrypt staging: a misconfigured host
	// then burns staging's generous failed-validation limit, not
	// production's 5 per hour.
	testCA     string
	email      string
	storage    certmagic.Storage
	challenges *challengeStore
	httpClient *http.Client
	logger     *zap.Logger
	solveHTTP  bool
	solveALPN  bool
	lifetime   context.Context // Issue gives up when it is done

	mu       sync.Mutex
	clients  map[string]*acmez.Client // by directory URL
	accounts *accountStore

	inflightMu sync.Mutex
	closed     bool
	inflight   sync.WaitGroup
}

var (
	_ certmagic.Issuer            = (*issuer)(nil)
	_ certmagic.RenewalInfoGetter = (*issuer)(nil)
)

// ACME client tuning. PollTimeout bounds waiting for the CA to validate
// and issue; Let's Encrypt takes seconds, but allow for a busy CA.
const (
	acmeHTTPTimeout = 30 * time.Second
	acmePollTimeout = 5 * time.Minute
	userAgent       = "relay46"
)

func newIssuer(opts Options, storage certmagic.Storage, challenges *challengeStore, logger *zap.Logger, lifetime context.Context) *issuer {
	iss := &issuer{
		ca:         opts.CA,
		email:      opts.Email,
		storage:    storage,
		challenges: challenges,
		httpClient: newHTTPClient(opts.CARoots),
		logger:     logger,
		solveHTTP:  !opts.DisableHTTP01,
		solveALPN:  !opts.DisableTLSALPN01,
		lifetime:   lifetime,
		clients:    make(map[string]*acmez.Client),
	}
	if opts.CA == LetsEncrypt {
		iss.testCA = LetsEncryptStaging
	}
	iss.accounts = &accountStore{storage: storage, email: opts.Email, logger: logger, cache: make(map[string]acme.Account)}
	return iss
}

// newHTTPClient talks to the CA. No proxy from the environment: packages
// do not read the environment, and the relay reaches its CA directly.
func newHTTPClient(roots *x509.CertPool) *http.Client {
	dialer := &net.Dialer{Timeout: acmeHTTPTimeout, KeepAlive: 2 * time.Minute}
	return &http.Client{
		Timeout: acmeHTTPTimeout,
		Transport: &http.Transport{
			DialContext:           dialer.DialContext,
			TLSClientConfig:       &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:   acmeHTTPTimeout,
			ResponseHeaderTimeout: acmeHTTPTimeout,
			IdleConnTimeout:       90 * time.Second,
			ForceAttemptHTTP2:     true,
		},
	}
}

// IssuerKey names the CA in storage paths. It is derived the way
// certmagic.ACMEIssuer derives it (host plus path), so certificates land
// where Caddy would put them.
func (iss *issuer) IssuerKey() string { return issuerKey(iss.ca) }

func issuerKey(ca string) string {
	u, err := url.Parse(ca)
	if err != nil {
		return ca
	}
	key := u.Host
	if p := strings.Trim(strings.NewReplacer("/", "-", "\\", "-").Replace(u.Path), "-"); p != "" {
		key += "-" + p
	}
	return key
}

func (iss *issuer) challengePrefixes() []string {
	prefixes := []string{challengePrefix(issuerKey(iss.ca))}
	if iss.testCA != "" {
		prefixes = append(prefixes, challengePrefix(issuerKey(iss.testCA)))
	}
	return prefixes
}

// Issue implements certmagic.Issuer.
func (iss *issuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	if !iss.begin() {
		return nil, certmagic.ErrNoRetry{Err: ErrClosed}
	}
	defer iss.inflight.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(iss.lifetime, cancel)()

	var attempts int
	if n, ok := ctx.Value(certmagic.AttemptsCtxKey).(*int); ok {
		attempts = *n
	}
	if attempts > 0 && iss.testCA != "" {
		if _, err := iss.issueFrom(ctx, iss.testCA, csr, false); err != nil {
			return nil, fmt.Errorf("rehearsal on test CA: %w", err)
		}
		iss.logger.Info("rehearsal on test CA succeeded; trying the CA again",
			zap.Strings("hosts", csr.DNSNames), zap.String("test_ca", iss.testCA))
	}
	// Like certmagic, leave the ARI replacement out of one retry, in case
	// the CA rejects the order only because of it.
	return iss.issueFrom(ctx, iss.ca, csr, attempts != 2)
}

func (iss *issuer) issueFrom(ctx context.Context, dir string, csr *x509.CertificateRequest, markReplacement bool) (*certmagic.IssuedCertificate, error) {
	client := iss.client(dir)
	for retried := false; ; retried = true {
		account, err := iss.accounts.get(ctx, client)
		if err != nil {
			return nil, err
		}
		params, err := acmez.OrderParametersFromCSR(account, csr)
		if err != nil {
			return nil, err
		}
		if markReplacement {
			params.Replaces = iss.replaced(ctx, dir, account, csr.DNSNames)
		}
		chains, err := client.ObtainCertificate(ctx, params)
		var problem acme.Problem
		if err != nil && !retried && errors.As(err, &problem) && problem.Type == acme.ProblemTypeAccountDoesNotExist {
			// The CA forgot us (Pebble restarts, a private CA reinstalled).
			iss.logger.Warn("ACME account unknown to the CA; registering a new one",
				zap.String("ca", dir), zap.String("account", account.Location))
			if err := iss.accounts.forget(ctx, dir); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%v from %s: %w", csr.DNSNames, dir, err)
		}
		if len(chains) == 0 {
			return nil, fmt.Errorf("%v from %s: no certificate chain", csr.DNSNames, dir)
		}
		chain := chains[0]
		chain.CA, chain.Account = dir, account.Location
		return &certmagic.IssuedCertificate{Certificate: chain.ChainPEM, Metadata: chain}, nil
	}
}

// replaced returns the certificate a renewal replaces, so the order can say
// so (ARI, RFC 9773 §5; Let's Encrypt exempts such renewals from some rate
// limits): the one in storage for the name, provided this account obtained
// it from this CA, since the CA rejects the order otherwise. Nil when
// there is none (a first obtain).
func (iss *issuer) replaced(ctx context.Context, dir string, account acme.Account, names []string) *x509.Certificate {
	if len(names) != 1 || dir != iss.ca {
		return nil
	}
	metaJSON, err := iss.storage.Load(ctx, certmagic.StorageKeys.SiteMeta(iss.IssuerKey(), names[0]))
	if err != nil {
		return nil
	}
	var meta struct {
		IssuerData acme.Certificate `json:"issuer_data"`
	}
	if json.Unmarshal(metaJSON, &meta) != nil || meta.IssuerData.CA != dir || meta.IssuerData.Account != account.Location {
		return nil
	}
	certPEM, err := iss.storage.Load(ctx, certmagic.StorageKeys.SiteCert(iss.IssuerKey(), names[0]))
	if err != nil {
		return nil
	}
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil
	}
	return leaf
}

// GetRenewalInfo implements certmagic.RenewalInfoGetter, letting certmagic
// follow the CA's ACME Renewal Information (RFC 9773) for renewal timing.
func (iss *issuer) GetRenewalInfo(ctx context.Context, cert certmagic.Certificate) (acme.RenewalInfo, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(iss.lifetime, cancel)()
	return iss.client(iss.ca).GetRenewalInfo(ctx, cert.Leaf)
}

// client returns the ACME client for dir, created once so the directory
// and nonces are fetched once.
func (iss *issuer) client(dir string) *acmez.Client {
	iss.mu.Lock()
	defer iss.mu.Unlock()
	if c, ok := iss.clients[dir]; ok {
		return c
	}
	s := solver{store: iss.challenges, prefix: challengePrefix(issuerKey(dir))}
	solvers := make(map[string]acmez.Solver, 2)
	if iss.solveHTTP {
		solvers[challengeHTTP01] = s
	}
	if iss.solveALPN {
		solvers[challengeTLSALPN01] = s
	}
	c := &acmez.Client{
		Client: &acme.Client{
			Directory:   dir,
			HTTPClient:  iss.httpClient,
			UserAgent:   userAgent,
			PollTimeout: acmePollTimeout,
			Logger: slog.New(zapslog.NewHandler(iss.logger.Core(),
				zapslog.WithName("acmez"),
				zapslog.AddStacktraceAt(slog.LevelError+1))),
		},
		ChallengeSolvers: solvers,
	}
	iss.clients[dir] = c
	return c
}

func (iss *issuer) begin() bool {
	iss.inflightMu.Lock()
	defer iss.inflightMu.Unlock()
	if iss.closed {
		return false
	}
	iss.inflight.Add(1)
	return true
}

// close refuses new issuance, waits for running ones (which the canceled
// lifetime context is unwinding) and drops idle connections to the CA.
func (iss *issuer) close() {
	iss.inflightMu.Lock()
	iss.closed = true
	iss.inflightMu.Unlock()
	iss.inflight.Wait()
	iss.httpClient.CloseIdleConnections()
}
