package upstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"
)

// StateFileName is the file in the storage directory (acme.storage)
// where the last pushed address of each route is kept across restarts.
const StateFileName = "pushed-addresses.json"

// savedAddr is one route's last pushed address.
type savedAddr struct {
	Address string    `json:"address"`
	At      time.Time `json:"pushed_at"`
	From    string    `json:"pushed_from,omitempty"`
}

type stateDoc struct {
	Version int                  `json:"version"`
	Pushed  map[string]savedAddr `json:"pushed"` // by route name
}

// stateFile reads the saved addresses once and rewrites the whole file,
// atomically, on every accepted push.
type stateFile struct {
	path  string
	mu    sync.Mutex
	saved map[string]savedAddr
}

// setState points the registry at the state file in the storage
// directory, reading it when the directory is new to the registry.
func (r *Registry) setState(path string) {
	if r.state != nil && r.state.path == path {
		return
	}
	st := &stateFile{path: path, saved: map[string]savedAddr{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		r.log.Error("cannot read the saved pushed addresses; starting without them", zap.String("file", path), zap.Error(err))
	default:
		var doc stateDoc
		if err := json.Unmarshal(b, &doc); err != nil || doc.Version != 1 {
			r.log.Error("the saved pushed addresses are unreadable; starting without them", zap.String("file", path), zap.Error(err), zap.Int("version", doc.Version))
		} else if doc.Pushed != nil {
			st.saved = doc.Pushed
		}
	}
	r.state = st
}

func (st *stateFile) get(route string) (savedAddr, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	a, ok := st.saved[route]
	return a, ok
}

// save replaces the file's contents with pushed: written to a temporary
// file, synced and renamed over the old one, so a crash leaves either the
// old state or the new, never half of one.
func (st *stateFile) save(pushed map[string]savedAddr) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	b, err := json.MarshalIndent(stateDoc{Version: 1, Pushed: pushed}, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(st.path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".pushed-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), st.path); err != nil {
		return fmt.Errorf("save %s: %w", st.path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	st.saved = pushed
	return nil
}
