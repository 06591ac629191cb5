package acme

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io/fs"
	"path"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

const (
	challengeHTTP01    = acme.ChallengeTypeHTTP01
	challengeTLSALPN01 = acme.ChallengeTypeTLSALPN01
)

// challengeStore holds the HTTP-01 and TLS-ALPN-01 challenges being
// presented. It replaces certmagic's own solvers, which would try to listen
// on :80 and :443 themselves: here "presenting" a challenge only records it,
// and the relay's listeners hand validation requests to the Manager.
//
// Each challenge is also written to storage, where certmagic's distributed
// solver puts it (acme/<ca>/challenge_tokens/<host>.json), so a Manager
// sharing the storage can answer a validation that another one started.
// certmagic's per-host issuance lock guarantees one challenge per host at a
// time, hence the key by host.
type challengeStore struct {
	storage certmagic.Storage
	logger  *zap.Logger
	// prefixes are the storage prefixes of the directories the issuer
	// uses (the CA, and its test CA if any). Set once before first use.
	prefixes []string

	mu     sync.RWMutex
	active map[string]presented
}

type presented struct {
	chal acme.Challenge
	cert *tls.Certificate // TLS-ALPN-01 only
}

func newChallengeStore(storage certmagic.Storage, logger *zap.Logger) *challengeStore {
	return &challengeStore{storage: storage, logger: logger, active: make(map[string]presented)}
}

func challengePrefix(issuerKey string) string {
	return path.Join("acme", certmagic.StorageKeys.Safe(issuerKey), "challenge_tokens")
}

func challengeKey(prefix, host string) string {
	return path.Join(prefix, certmagic.StorageKeys.Safe(host)+".json")
}

func newPresented(chal acme.Challenge) (presented, error) {
	p := presented{chal: chal}
	if chal.Type == challengeTLSALPN01 {
		cert, err := acmez.TLSALPN01ChallengeCert(chal)
		if err != nil {
			return presented{}, err
		}
		p.cert = cert
	}
	return p, nil
}

func (s *challengeStore) present(ctx context.Context, prefix string, chal acme.Challenge) error {
	p, err := newPresented(chal)
	if err != nil {
		return err
	}
	host := lookupName(chal.Identifier.Value)
	s.mu.Lock()
	s.active[host] = p
	s.mu.Unlock()
	data, err := json.Marshal(chal)
	if err != nil {
		return err
	}
	s.logger.Debug("presenting challenge", zap.String("host", host), zap.String("type", chal.Type))
	return s.storage.Store(ctx, challengeKey(prefix, host), data)
}

func (s *challengeStore) cleanUp(ctx context.Context, prefix string, chal acme.Challenge) error {
	host := lookupName(chal.Identifier.Value)
	s.mu.Lock()
	if p, ok := s.active[host]; ok && p.chal.Token == chal.Token {
		delete(s.active, host)
	}
	s.mu.Unlock()
	err := s.storage.Delete(ctx, challengeKey(prefix, host))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// lookup finds the challenge being presented for host: in memory, or, if
// fromStorage, in storage. Callers allow storage only for hosts they manage,
// so unsolicited requests cannot make the relay read files for arbitrary
// names.
func (s *challengeStore) lookup(ctx context.Context, host string, fromStorage bool) (presented, bool) {
	s.mu.RLock()
	p, ok := s.active[host]
	s.mu.RUnlock()
	if ok || !fromStorage {
		return p, ok
	}
	for _, prefix := range s.prefixes {
		data, err := s.storage.Load(ctx, challengeKey(prefix, host))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				s.logger.Warn("loading shared challenge", zap.String("host", host), zap.Error(err))
			}
			continue
		}
		var chal acme.Challenge
		if err := json.Unmarshal(data, &chal); err != nil {
			s.logger.Warn("decoding shared challenge", zap.String("host", host), zap.Error(err))
			continue
		}
		if p, err := newPresented(chal); err == nil {
			return p, true
		}
	}
	return presented{}, false
}

// solver is the acmez.Solver for both HTTP-01 and TLS-ALPN-01 challenges
// of one ACME directory.
type solver struct {
	store  *challengeStore
	prefix string
}

var _ acmez.Solver = solver{}

func (s solver) Present(ctx context.Context, chal acme.Challenge) error {
	return s.store.present(ctx, s.prefix, chal)
}

// CleanUp runs after the challenge is decided, often after ctx is done;
// cleanup must happen anyway.
func (s solver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	return s.store.cleanUp(context.WithoutCancel(ctx), s.prefix, chal)
}
