package acme_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"time"

	"github.com/relay46/relay46/acme"
	"go.uber.org/zap"
)

// The relay's wiring: certificates for terminated hosts from Let's Encrypt,
// the CA's HTTP-01 requests answered from the relay's own :80 handler, and
// its TLS-ALPN-01 hellos from the relay's TLS server.
func Example() {
	ctx := context.Background()
	m, err := acme.New(acme.Options{
		Email:   "admin@example.org",
		CA:      acme.LetsEncrypt,
		Storage: "/var/lib/relay46/certificates",
		Logger:  zap.NewExample(),
		OnEvent: func(e acme.Event) { /* count e.Kind/e.Result, gauge e.NotAfter */ },
	})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	if err := m.Manage(ctx, []string{"blog.example.org"}); err != nil {
		panic(err)
	}

	// :80 — challenges first, then whatever the relay does with the rest.
	plain := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if m.HandleHTTPChallenge(w, r) {
				return
			}
			http.Redirect(w, r, "https://"+r.Host+r.URL.RequestURI(), http.StatusMovedPermanently)
		}),
	}
	go plain.ListenAndServe()

	// :443 — the connections the relay decided to terminate, after peeking
	// the SNI (a CA's acme-tls/1 hello carries the host's SNI, so it is
	// routed here like any other hello for a terminated host).
	var terminated net.Listener // fed by the relay's SNI router
	if terminated == nil {
		return
	}
	for {
		c, err := terminated.Accept()
		if err != nil {
			return
		}
		go func() {
			conn := tls.Server(c, m.TLSConfig())
			if err := conn.HandshakeContext(ctx); err != nil {
				conn.Close()
				return
			}
			if conn.ConnectionState().NegotiatedProtocol == "acme-tls/1" {
				conn.Close() // a validation: the handshake was the answer
				return
			}
			// serve HTTP on conn ...
		}()
	}
}
