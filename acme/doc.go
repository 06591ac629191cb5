// Package acme gives relay46 the certificates for the hosts it terminates:
// obtained and renewed from an ACME CA (Let's Encrypt) through certmagic, or
// loaded from files the operator provides.
//
// The relay owns every listener. The Manager never binds a port; it solves
// challenges only through the two hooks the relay calls:
//
//   - HTTP-01: the relay's :80 handler calls HandleHTTPChallenge first, and
//     only if it returns false goes on (to the origin of a passthrough host,
//     or to the HTTPS redirect).
//   - TLS-ALPN-01: the CA's ClientHello carries the host's SNI and offers
//     only the "acme-tls/1" protocol. The relay routes it by SNI like any
//     other hello: for a terminated host it reaches the in-process TLS
//     server, whose TLSConfig().GetCertificate answers it with the challenge
//     certificate; for a passthrough host it goes to the origin, which
//     solves its own. After the handshake, a connection whose
//     NegotiatedProtocol is "acme-tls/1" has done its job: close it, do not
//     serve HTTP on it.
//
// Typical use:
//
//	m, err := acme.New(acme.Options{
//		Email:   "admin@example.org",
//		CA:      acme.LetsEncrypt,
//		Storage: "/var/lib/relay46/certs",
//		Logger:  logger,
//	})
//	if err != nil { ... }
//	defer m.Close()
//	_ = m.LoadFiles([]string{"intranet.example.org"}, "/etc/relay46/in.crt", "/etc/relay46/in.key")
//	_ = m.Manage(ctx, []string{"blog.example.org"}) // returns at once; issuance runs in the background
//
//	http80 := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
//		if m.HandleHTTPChallenge(w, r) {
//			return
//		}
//		redirectToHTTPS(w, r)
//	})
//	tlsServer := tls.NewListener(terminatedConns, m.TLSConfig())
//
// Certificates, keys and the ACME account live under Options.Storage in
// certmagic's layout (certificates/<ca>/<host>/...), protected by certmagic's
// file locks, so several Managers or relays may share one directory.
package acme
