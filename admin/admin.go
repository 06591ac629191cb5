// Package admin serves relay46's admin listener: Prometheus metrics, liveness
// and readiness probes, a config reload trigger and, when enabled, pprof.
//
// The admin listener is meant for loopback or a private network
// (admin: "127.0.0.1:9046" by default): readiness errors and pprof reveal
// internals, and /reload changes what the relay serves. Typical use:
//
//	srv := &admin.Server{
//		Metrics: m,
//		Ready:   relay.Ready,
//		Reload:  relay.Reload,
//		Logger:  logger.Named("admin"),
//	}
//	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
//	go hs.Serve(adminListener)
//
// Routes:
//
//	GET  /metrics        Prometheus metrics (404 if Metrics is nil)
//	GET  /healthz        200 "ok" while the process serves HTTP at all
//	GET  /readyz         200 "ready", or 503 with the error from Ready
//	POST /reload         200 "reloaded", or 500 with the error from Reload (only if Reload is set)
//	GET  /debug/pprof/   runtime profiles (only if Pprof is true)
package admin

import (
	"net/http"
	"net/http/pprof"
	"sync"

	"go.uber.org/zap"

	"github.com/relay46/relay46/metrics"
)

// Server describes the admin endpoints. Fields are read when Handler is
// called; change them by building a new handler.
type Server struct {
	// Metrics is served on /metrics. Nil serves 404 there.
	Metrics *metrics.Metrics
	// Ready reports why the relay cannot serve yet (listeners not bound,
	// config not loaded, a route without a usable upstream), or nil when it
	// can. Nil means always ready.
	Ready func() error
	// Reload reloads the config. It is called for POST /reload, one call at
	// a time; it should record metrics.ConfigReload itself, since SIGHUP
	// reloads the same way. Nil leaves /reload unregistered (404).
	Reload func() error
	// Pprof enables /debug/pprof/. Off by default: profiles expose memory
	// contents and cost CPU.
	Pprof bool
	// Logger receives reload results. Nil discards them.
	Logger *zap.Logger
}

// Handler returns the admin HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.Metrics.Handler())
	mux.HandleFunc("GET /healthz", healthz)
	mux.Handle("GET /readyz", readyz(s.Ready))
	if s.Reload != nil {
		// Registering only POST makes the mux answer other methods with 405
		// and an Allow header.
		mux.Handle("POST /reload", reload(s.Reload, s.logger()))
	}
	if s.Pprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	return mux
}

func (s *Server) logger() *zap.Logger {
	if s.Logger == nil {
		return zap.NewNop()
	}
	return s.Logger
}

// healthz answers while the process can serve HTTP; it checks nothing else,
// so a supervisor restarts relay46 only when it is truly stuck.
func healthz(w http.ResponseWriter, _ *http.Request) {
	text(w, http.StatusOK, "ok")
}

func readyz(ready func() error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				text(w, http.StatusServiceUnavailable, err.Error())
				return
			}
		}
		text(w, http.StatusOK, "ready")
	})
}

func reload(fn func() error, logger *zap.Logger) http.Handler {
	// Two operators (or a script and a SIGHUP-happy operator) must not run
	// reloads concurrently through this handler.
	var mu sync.Mutex
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		err := fn()
		mu.Unlock()
		if err != nil {
			logger.Error("config reload via admin failed", zap.String("remote", r.RemoteAddr), zap.Error(err))
			text(w, http.StatusInternalServerError, err.Error())
			return
		}
		logger.Info("config reloaded via admin", zap.String("remote", r.RemoteAddr))
		text(w, http.StatusOK, "reloaded")
	})
}

// text writes a one-line plain-text answer that no cache keeps.
func text(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}
