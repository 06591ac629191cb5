package admin_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/relay46/relay46/admin"
)

// Readiness reports the first reason the relay cannot serve yet.
func ExampleServer() {
	loaded := false
	srv := &admin.Server{
		Ready: func() error {
			if !loaded {
				return errors.New("config not loaded")
			}
			return nil
		},
		Reload: func() error { loaded = true; return nil },
	}
	h := srv.Handler()

	for _, req := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/readyz", nil),
		httptest.NewRequest(http.MethodPost, "/reload", nil),
		httptest.NewRequest(http.MethodGet, "/readyz", nil),
		httptest.NewRequest(http.MethodGet, "/reload", nil),
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		fmt.Printf("%s %s: %d %s", req.Method, req.URL.Path, rec.Code, rec.Body)
	}
	// Output:
	// GET /readyz: 503 config not loaded
	// POST /reload: 200 reloaded
	// GET /readyz: 200 ready
	// GET /reload: 405 Method Not Allowed
}
