package main

import (
	"crypto/tls"
	"net"
	"sync"

	"github.com/relay46/relay46/proxy"
	"github.com/relay46/relay46/upstream/dyndns"
)

// updatesListener names the update endpoint (updates.listen) among the
// daemon's listeners; a socket-activated one is named "updates".
const updatesListener proxy.Protocol = "updates"

// serveUpdates serves the dyndns2 update endpoint on ln until ln closes.
// Pushed addresses go into the proxy's upstream registry, which saves
// them in acme.storage.
func (d *daemon) serveUpdates(ln net.Listener) error {
	log := d.logger.Named("updates")
	h := &dyndns.Handler{Updater: d.srv.Upstreams(), Logger: log}
	return dyndns.NewServer(h, log).Serve(&updatesTLS{Listener: ln, paths: d.updatesCert})
}

// updatesCert returns the certificate files of the update endpoint in the
// config in use: "" when it speaks plain HTTP.
func (d *daemon) updatesCert() (certFile, keyFile string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil {
		return "", ""
	}
	return d.cfg.Updates.CertFile, d.cfg.Updates.KeyFile
}

// closeUpdates stops the update endpoint first when the relay stops, so
// that no home is told its hostname is unknown by a relay halfway down:
// its client retries later instead.
func (d *daemon) closeUpdates() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if b := d.listeners[updatesListener]; b != nil {
		b.ln.Close()
	}
}

// updatesTLS makes each accepted connection TLS when the config in use
// names a certificate for the endpoint, so that adding, removing or
// renewing it takes a reload, not a restart. With a certificate, plain
// HTTP is not served: clients send their password in every request.
type updatesTLS struct {
	net.Listener
	paths func() (certFile, keyFile string)

	mu    sync.Mutex
	certs *dyndns.CertFiles
}

func (l *updatesTLS) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	certFile, keyFile := l.paths()
	if certFile == "" {
		return c, nil
	}
	l.mu.Lock()
	if l.certs == nil || l.certs.CertFile != certFile || l.certs.KeyFile != keyFile {
		l.certs = &dyndns.CertFiles{CertFile: certFile, KeyFile: keyFile}
	}
	cfg := l.certs.TLSConfig()
	l.mu.Unlock()
	cfg.NextProtos = []string{"http/1.1"}
	return tls.Server(c, cfg), nil
}
