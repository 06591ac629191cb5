package acme

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

const defaultFilePollInterval = 5 * time.Second

// LoadFiles serves the certificate in certFile/keyFile (PEM, chain leaf
// first) for hosts, instead of ACME. A host may be a wildcard "*.example.org",
// matching one label. The certificate must cover every host.
//
// The files are watched: every Options.FilePollInterval their modification
// time and size are compared, and on a change the pair is loaded again and
// swapped in atomically if it is valid; Reload does the same at once. A
// pair that fails to load (half-written, key not matching) leaves the old
// certificate in service and is retried when the files change again.
//
// Calling LoadFiles again for a host replaces its certificate. File
// certificates take precedence over ACME ones for the same host.
func (m *Manager) LoadFiles(hosts []string, certFile, keyFile string) error {
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		name, err := normalizeHost(h)
		if err != nil {
			return err
		}
		names = append(names, name)
	}
	return m.files.load(names, certFile, keyFile)
}

// UnloadFiles stops serving file certificates for hosts (on config reload).
func (m *Manager) UnloadFiles(hosts []string) {
	for _, h := range hosts {
		if name, err := normalizeHost(h); err == nil {
			m.files.unload(name)
		}
	}
}

// Reload re-reads every LoadFiles pair now, e.g. on SIGHUP, and reports the
// pairs that failed (they keep their previous certificate).
func (m *Manager) Reload() error {
	return m.files.reloadAll(true)
}

// fileStore serves LoadFiles certificates. Handshakes read it through
// lookup, which takes only a read lock and an atomic load.
type fileStore struct {
	logger   *zap.Logger
	interval time.Duration

	mu     sync.RWMutex
	byHost map[string]*filePair
	pairs  map[pairKey]*filePair
	closed bool
	stop   chan struct{} // closes the poller; nil until it starts
	done   chan struct{}
}

type pairKey struct{ cert, key string }

type filePair struct {
	pairKey
	hosts   map[string]bool // guarded by fileStore.mu
	current atomic.Pointer[tls.Certificate]

	reloadMu sync.Mutex // serialises reloads of this pair
	seen     [2]fileStamp
}

// fileStamp is how a change is detected without reading the files.
type fileStamp struct {
	mod  time.Time
	size int64
}

func newFileStore(logger *zap.Logger, interval time.Duration) *fileStore {
	if interval == 0 {
		interval = defaultFilePollInterval
	}
	return &fileStore{
		logger:   logger,
		interval: interval,
		byHost:   make(map[string]*filePair),
		pairs:    make(map[pairKey]*filePair),
	}
}

func (s *fileStore) lookup(name string) *tls.Certificate {
	s.mu.RLock()
	p, ok := s.byHost[name]
	if !ok {
		if i := strings.IndexByte(name, '.'); i > 0 {
			p, ok = s.byHost["*"+name[i:]]
		}
	}
	s.mu.RUnlock()
	if !ok {
		return nil
	}
	return p.current.Load()
}

func (s *fileStore) load(hosts []string, certFile, keyFile string) error {
	key, err := absPair(certFile, keyFile)
	if err != nil {
		return err
	}
	stamps := statPair(key)
	cert, err := loadPair(key, hosts)
	if err != nil {
		return err
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	for _, h := range hosts {
		s.unloadLocked(h)
	}
	p := s.pairs[key]
	if p == nil {
		p = &filePair{pairKey: key, hosts: make(map[string]bool)}
		s.pairs[key] = p
	}
	p.reloadMu.Lock()
	p.current.Store(cert)
	p.seen = stamps
	p.reloadMu.Unlock()
	for _, h := range hosts {
		s.byHost[h] = p
		p.hosts[h] = true
	}
	s.logger.Info("serving certificate from files",
		zap.Strings("hosts", hosts), zap.String("cert_file", key.cert),
		zap.Time("not_after", cert.Leaf.NotAfter))
	s.startPollerLocked()
	return nil
}

func (s *fileStore) unload(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unloadLocked(host)
}

func (s *fileStore) unloadLocked(host string) {
	p, ok := s.byHost[host]
	if !ok {
		return
	}
	delete(s.byHost, host)
	delete(p.hosts, host)
	if len(p.hosts) == 0 {
		delete(s.pairs, p.pairKey)
	}
}

func (s *fileStore) startPollerLocked() {
	if s.stop != nil || s.interval < 0 {
		return
	}
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	go s.poll(s.stop, s.done)
}

func (s *fileStore) poll(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			_ = s.reloadAll(false)
		}
	}
}

func (s *fileStore) close() {
	s.mu.Lock()
	s.closed = true
	stop, done := s.stop, s.done
	s.mu.Unlock()
	if stop != nil {
		close(stop)
		<-done
	}
}

// reloadAll reloads every pair; unless force, only those whose files
// changed since last seen.
func (s *fileStore) reloadAll(force bool) error {
	s.mu.RLock()
	pairs := make([]*filePair, 0, len(s.pairs))
	hosts := make([][]string, 0, len(s.pairs))
	for _, p := range s.pairs {
		pairs = append(pairs, p)
		hs := make([]string, 0, len(p.hosts))
		for h := range p.hosts {
			hs = append(hs, h)
		}
		hosts = append(hosts, hs)
	}
	s.mu.RUnlock()

	var errs []error
	for i, p := range pairs {
		if err := s.reload(p, hosts[i], force); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (s *fileStore) reload(p *filePair, hosts []string, force bool) error {
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	stamps := statPair(p.pairKey)
	if !force && sameStamps(stamps, p.seen) {
		return nil
	}
	p.seen = stamps
	cert, err := loadPair(p.pairKey, hosts)
	if err != nil {
		s.logger.Warn("reloading certificate files failed; keeping the previous certificate",
			zap.String("cert_file", p.pairKey.cert), zap.Error(err))
		return err
	}
	if old := p.current.Load(); old != nil && bytes.Equal(old.Certificate[0], cert.Certificate[0]) {
		return nil
	}
	p.current.Store(cert)
	s.logger.Info("reloaded certificate from files",
		zap.Strings("hosts", hosts), zap.String("cert_file", p.pairKey.cert),
		zap.String("serial", cert.Leaf.SerialNumber.Text(16)),
		zap.Time("not_after", cert.Leaf.NotAfter))
	return nil
}

func sameStamps(a, b [2]fileStamp) bool {
	return a[0].mod.Equal(b[0].mod) && a[0].size == b[0].size &&
		a[1].mod.Equal(b[1].mod) && a[1].size == b[1].size
}

func absPair(certFile, keyFile string) (pairKey, error) {
	c, err := filepath.Abs(certFile)
	if err != nil {
		return pairKey{}, err
	}
	k, err := filepath.Abs(keyFile)
	if err != nil {
		return pairKey{}, err
	}
	return pairKey{c, k}, nil
}

func statPair(key pairKey) [2]fileStamp {
	var s [2]fileStamp
	for i, name := range []string{key.cert, key.key} {
		if fi, err := os.Stat(name); err == nil {
			s[i] = fileStamp{fi.ModTime(), fi.Size()}
		}
	}
	return s
}

// loadPair loads and checks a pair: key matching certificate (done by
// tls.LoadX509KeyPair) and every host covered.
func loadPair(key pairKey, hosts []string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(key.cert, key.key)
	if err != nil {
		return nil, fmt.Errorf("acme: loading %s: %w", key.cert, err)
	}
	if cert.Leaf == nil { // GODEBUG=x509keypairleaf=0
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("acme: parsing %s: %w", key.cert, err)
		}
	}
	for _, h := range hosts {
		if err := cert.Leaf.VerifyHostname(h); err != nil {
			return nil, fmt.Errorf("%w: %s for %q", ErrHostMismatch, key.cert, h)
		}
	}
	return &cert, nil
}
