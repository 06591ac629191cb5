package dyndns

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// CertFiles serves a certificate from PEM files and loads them again when
// they change on disk, so a renewed certificate is picked up without a
// restart.
type CertFiles struct {
	CertFile, KeyFile string

	mu      sync.Mutex
	cert    *tls.Certificate
	modCert time.Time
	modKey  time.Time
}

// TLSConfig returns a server config that serves the files' certificate.
func (c *CertFiles) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.GetCertificate}
}

// GetCertificate is a tls.Config.GetCertificate that returns the current
// certificate. If reloading fails, the one loaded before keeps being
// served.
func (c *CertFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ci, err1 := os.Stat(c.CertFile)
	ki, err2 := os.Stat(c.KeyFile)
	if err1 == nil && err2 == nil && (c.cert == nil || !ci.ModTime().Equal(c.modCert) || !ki.ModTime().Equal(c.modKey)) {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err == nil {
			c.cert, c.modCert, c.modKey = &cert, ci.ModTime(), ki.ModTime()
		} else if c.cert == nil {
			return nil, fmt.Errorf("update endpoint certificate: %w", err)
		}
	}
	if c.cert == nil {
		return nil, fmt.Errorf("update endpoint certificate: cannot read %s or %s", c.CertFile, c.KeyFile)
	}
	return c.cert, nil
}
