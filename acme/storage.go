package acme

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// closeWait bounds how long Close waits for background storage writers
// and lock holders; they notice the closed Manager at their next step.
const closeWait = 10 * time.Second

// guardedStorage wraps certmagic's storage so that a closed Manager stops
// writing: certmagic's obtain and renew jobs run in its own goroutines,
// which Close cannot join, so instead Close refuses new writes and locks
// and waits for the ones in progress (and locks held) to end. A relay that
// reloads can then hand the directory to a new Manager cleanly.
// Reads, deletes and unlocks stay allowed so those jobs can clean up.
type guardedStorage struct {
	certmagic.Storage
	locker certmagic.TryLocker
	logger *zap.Logger

	mu     sync.Mutex
	closed bool
	busy   int           // writes in progress plus locks held
	idle   chan struct{} // closed when busy drops to 0 after close
}

var (
	_ certmagic.Storage   = (*guardedStorage)(nil)
	_ certmagic.TryLocker = (*guardedStorage)(nil)
)

func newGuardedStorage(dir string, logger *zap.Logger) *guardedStorage {
	fs := &certmagic.FileStorage{Path: dir}
	return &guardedStorage{Storage: fs, locker: fs, logger: logger}
}

func (s *guardedStorage) begin() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	s.busy++
	return nil
}

func (s *guardedStorage) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.busy > 0 {
		s.busy--
	}
	if s.busy == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

func (s *guardedStorage) Store(ctx context.Context, key string, value []byte) error {
	if err := s.begin(); err != nil {
		return err
	}
	defer s.end()
	return s.Storage.Store(ctx, key, value)
}

func (s *guardedStorage) Lock(ctx context.Context, name string) error {
	if err := s.begin(); err != nil {
		return err
	}
	err := s.Storage.Lock(ctx, name)
	if err != nil {
		s.end()
	}
	return err
}

func (s *guardedStorage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := s.begin(); err != nil {
		return false, err
	}
	ok, err := s.locker.TryLock(ctx, name)
	if !ok {
		s.end()
	}
	return ok, err
}

func (s *guardedStorage) Unlock(ctx context.Context, name string) error {
	err := s.Storage.Unlock(ctx, name)
	s.end()
	return err
}

// close refuses further writes and locks and waits, up to closeWait, for
// those in progress to finish.
func (s *guardedStorage) close() {
	s.mu.Lock()
	s.closed = true
	if s.busy == 0 {
		s.mu.Unlock()
		return
	}
	idle := make(chan struct{})
	s.idle = idle
	s.mu.Unlock()
	select {
	case <-idle:
	case <-time.After(closeWait):
		s.logger.Warn("closing with certificate storage still busy", zap.Duration("waited", closeWait))
	}
}
