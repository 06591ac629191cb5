package acme

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// certmagic events the Manager listens to. certmagic calls OnEvent for
// every TLS handshake too ("tls_get_certificate"); shouldEmit keeps those
// off the hot path.
const (
	evObtained = "cert_obtained"
	evFailed   = "cert_failed"
	evCached   = "cached_managed_cert"
)

func shouldEmit(event string) bool {
	switch event {
	case evObtained, evFailed, evCached:
		return true
	}
	return false
}

// certmagicEvent is the certmagic.Config.OnEvent hook. Its error return
// could veto some events; the Manager never vetoes.
func (m *Manager) certmagicEvent(ctx context.Context, event string, data map[string]any) error {
	switch event {
	case evObtained, evFailed:
		m.emit(ctx, event, data)
	case evCached:
		m.dropUnmanaged(data)
	}
	return nil
}

func (m *Manager) emit(ctx context.Context, event string, data map[string]any) {
	if m.onEvent == nil {
		return
	}
	host, _ := data["identifier"].(string)
	if m.lifetime.Err() != nil || !m.isManaged(host) {
		return // an attempt cut short by Close or by dropping the host
	}
	e := Event{Kind: "obtain", Host: host, Result: "ok"}
	if renewal, _ := data["renewal"].(bool); renewal {
		e.Kind = "renew"
	}
	if event == evFailed {
		e.Result = "error"
		e.Err, _ = data["error"].(error)
		e.NotAfter, _ = m.NotAfter(host)
	} else {
		path, _ := data["certificate_path"].(string)
		e.NotAfter = m.storedNotAfter(ctx, path)
	}
	m.onEvent(e)
}

// storedNotAfter reads the expiry of the certificate certmagic has just
// saved at path; zero if it cannot.
func (m *Manager) storedNotAfter(ctx context.Context, path string) time.Time {
	data, err := m.cfg.Storage.Load(ctx, path)
	if err != nil {
		m.logger.Warn("reading obtained certificate", zap.String("path", path), zap.Error(err))
		return time.Time{}
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return time.Time{}
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return time.Time{}
	}
	return leaf.NotAfter
}

// dropUnmanaged undoes a race: an obtain that was already running when
// Manage dropped its host caches the certificate when it finishes.
// getCertificate would not serve it, but maintenance would keep renewing.
func (m *Manager) dropUnmanaged(data map[string]any) {
	sans, _ := data["sans"].([]string)
	var drop []certmagic.SubjectIssuer
	for _, name := range sans {
		if !m.isManaged(name) {
			drop = append(drop, certmagic.SubjectIssuer{Subject: name})
		}
	}
	if len(drop) > 0 {
		m.cache.RemoveManaged(drop)
	}
}
