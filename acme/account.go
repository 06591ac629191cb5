package acme

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// accountStore keeps one ACME account per directory and contact email,
// persisted in storage and registered at most once even when several
// Managers or relays share the storage.
type accountStore struct {
	storage certmagic.Storage
	email   string
	logger  *zap.Logger

	regMu sync.Mutex // serialises load-or-register within the process
	mu    sync.Mutex
	cache map[string]acme.Account // by directory URL
}

// storedAccount is the on-disk form. The key sits beside the location, in
// a 0600 file under the same directory as the certificates' own keys.
type storedAccount struct {
	Location   string   `json:"location"`
	Contact    []string `json:"contact,omitempty"`
	PrivateKey string   `json:"private_key"`
}

func (s *accountStore) key(dir string) string {
	name := s.email
	if name == "" {
		name = "default"
	}
	return path.Join("acme", certmagic.StorageKeys.Safe(issuerKey(dir)), "relay46_accounts",
		certmagic.StorageKeys.Safe(name)+".json")
}

func (s *accountStore) cached(dir string) (acme.Account, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.cache[dir]
	return a, ok
}

// get returns the registered account for the client's directory, loading
// it from storage or registering a new one.
func (s *accountStore) get(ctx context.Context, client *acmez.Client) (acme.Account, error) {
	dir := client.Directory
	if a, ok := s.cached(dir); ok {
		return a, nil
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if a, ok := s.cached(dir); ok {
		return a, nil
	}
	a, err := s.load(ctx, dir)
	if errors.Is(err, fs.ErrNotExist) {
		a, err = s.register(ctx, client)
	}
	if err != nil {
		return acme.Account{}, err
	}
	s.mu.Lock()
	s.cache[dir] = a
	s.mu.Unlock()
	return a, nil
}

func (s *accountStore) load(ctx context.Context, dir string) (acme.Account, error) {
	data, err := s.storage.Load(ctx, s.key(dir))
	if err != nil {
		return acme.Account{}, err
	}
	var stored storedAccount
	if err := json.Unmarshal(data, &stored); err != nil {
		return acme.Account{}, fmt.Errorf("acme: decoding account %s: %w", s.key(dir), err)
	}
	key, err := certmagic.PEMDecodePrivateKey([]byte(stored.PrivateKey))
	if err != nil {
		return acme.Account{}, fmt.Errorf("acme: decoding account key %s: %w", s.key(dir), err)
	}
	return acme.Account{
		Status:               acme.StatusValid,
		Contact:              stored.Contact,
		TermsOfServiceAgreed: true,
		Location:             stored.Location,
		PrivateKey:           key,
	}, nil
}

// register creates the account under the storage lock, unless another
// holder of the lock registered it meanwhile.
func (s *accountStore) register(ctx context.Context, client *acmez.Client) (acme.Account, error) {
	dir := client.Directory
	lock := "relay46_account_" + issuerKey(dir)
	if err := s.storage.Lock(ctx, lock); err != nil {
		return acme.Account{}, fmt.Errorf("acme: locking account registration: %w", err)
	}
	defer func() {
		if err := s.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			s.logger.Error("unlocking account registration", zap.Error(err))
		}
	}()
	if a, err := s.load(ctx, dir); !errors.Is(err, fs.ErrNotExist) {
		return a, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return acme.Account{}, err
	}
	account := acme.Account{TermsOfServiceAgreed: true, PrivateKey: key}
	if s.email != "" {
		account.Contact = []string{"mailto:" + s.email}
	}
	account, err = client.NewAccount(ctx, account)
	if err != nil {
		return acme.Account{}, fmt.Errorf("acme: registering account with %s: %w", dir, err)
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		return acme.Account{}, err
	}
	data, err := json.MarshalIndent(storedAccount{
		Location:   account.Location,
		Contact:    account.Contact,
		PrivateKey: string(keyPEM),
	}, "", "\t")
	if err != nil {
		return acme.Account{}, err
	}
	if err := s.storage.Store(ctx, s.key(dir), data); err != nil {
		return acme.Account{}, fmt.Errorf("acme: saving account: %w", err)
	}
	s.logger.Info("registered ACME account", zap.String("ca", dir), zap.String("account", account.Location))
	return account, nil
}

// forget drops the account for dir so the next get registers a new one.
func (s *accountStore) forget(ctx context.Context, dir string) error {
	s.mu.Lock()
	delete(s.cache, dir)
	s.mu.Unlock()
	err := s.storage.Delete(ctx, s.key(dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}
