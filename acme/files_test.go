package acme

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLoadFiles serves a self-signed certificate from files on a Manager
// without ACME, then rewrites the files and sees the poller swap the new
// one in.
func TestLoadFiles(t *testing.T) {
	checkLeaks(t)
	logger, _ := testLogger(t)
	m, err := New(Options{FilePollInterval: 20 * time.Millisecond, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	const host = "files.relay46.test"
	certFile, keyFile := pairPaths(t)

	first := writePair(t, certFile, keyFile, host)
	if err := m.LoadFiles([]string{host}, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	addr := serveManager(t, m)
	waitLeaf(t, addr, host, poolOf(first), sameSerial(first))
	if na, ok := m.NotAfter(host); !ok || !na.Equal(first.NotAfter) {
		t.Errorf("NotAfter = %v, %v; want %v", na, ok, first.NotAfter)
	}

	second := writePair(t, certFile, keyFile, host)
	waitLeaf(t, addr, host, poolOf(second), sameSerial(second))

	w, r := newRequest("GET", host, "/.well-known/acme-challenge/x")
	if m.HandleHTTPChallenge(w, r) {
		t.Error("a Manager without ACME handled a challenge request")
	}
}

// TestReloadFiles uses explicit Reload with polling off, including a
// half-written pair that must not replace the certificate in service.
func TestReloadFiles(t *testing.T) {
	m, err := New(Options{FilePollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	const host = "reload.relay46.test"
	certFile, keyFile := pairPaths(t)
	first := writePair(t, certFile, keyFile, host)
	if err := m.LoadFiles([]string{host}, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	addr := serveManager(t, m)

	second := writePair(t, certFile, keyFile, host)
	time.Sleep(50 * time.Millisecond)
	if leaf, err := fetchLeaf(addr, host, poolOf(first)); err != nil || !sameSerial(first)(leaf) {
		t.Fatalf("changed without polling or Reload: %v", err)
	}
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	waitLeaf(t, addr, host, poolOf(second), sameSerial(second))

	// The certificate is written, the key not yet.
	keyPEM, _ := os.ReadFile(keyFile)
	third := writePair(t, certFile, keyFile, host)
	thirdKey, _ := os.ReadFile(keyFile)
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err == nil {
		t.Error("Reload of a mismatched pair succeeded")
	}
	waitLeaf(t, addr, host, poolOf(second), sameSerial(second))
	if err := os.WriteFile(keyFile, thirdKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Reload(); err != nil {
		t.Fatal(err)
	}
	waitLeaf(t, addr, host, poolOf(third), sameSerial(third))
}

func TestLoadFilesHosts(t *testing.T) {
	m, err := New(Options{FilePollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	certFile, keyFile := pairPaths(t)
	wild := writePair(t, certFile, keyFile, "*.wild.relay46.test")

	if err := m.LoadFiles([]string{"other.relay46.test"}, certFile, keyFile); !errors.Is(err, ErrHostMismatch) {
		t.Errorf("host not in certificate: %v, want ErrHostMismatch", err)
	}
	if err := m.LoadFiles([]string{"a.relay46.test"}, certFile+".missing", keyFile); err == nil {
		t.Error("missing file loaded")
	}
	if err := m.LoadFiles([]string{"*.wild.relay46.test"}, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	addr := serveManager(t, m)
	waitLeaf(t, addr, "a.wild.relay46.test", poolOf(wild), sameSerial(wild))
	if _, err := fetchLeaf(addr, "a.b.wild.relay46.test", poolOf(wild)); err == nil {
		t.Error("wildcard matched two labels")
	}

	m.UnloadFiles([]string{"*.wild.relay46.test"})
	if _, err := fetchLeaf(addr, "a.wild.relay46.test", poolOf(wild)); err == nil {
		t.Error("unloaded host still served")
	}
	if _, ok := m.NotAfter("a.wild.relay46.test"); ok {
		t.Error("NotAfter reports an unloaded host")
	}
}

func pairPaths(t *testing.T) (string, string) {
	dir := t.TempDir()
	return filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
}

// writePair writes a fresh self-signed P-256 certificate for host.
func writePair(t *testing.T, certFile, keyFile, host string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func sameSerial(want *x509.Certificate) func(*x509.Certificate) bool {
	return func(got *x509.Certificate) bool { return got.SerialNumber.Cmp(want.SerialNumber) == 0 }
}

// TestTLSConfigResumesSessions: clients resume their TLS sessions across
// connections, which takes the same session ticket keys on each one, so
// TLSConfig must hand out one config, not one per connection.
func TestTLSConfigResumesSessions(t *testing.T) {
	m, err := New(Options{FilePollInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	const host = "resume.relay46.test"
	certFile, keyFile := pairPaths(t)
	leaf := writePair(t, certFile, keyFile, host)
	if err := m.LoadFiles([]string{host}, certFile, keyFile); err != nil {
		t.Fatal(err)
	}
	addr := serveManager(t, m)
	cache := tls.NewLRUClientSessionCache(4)
	for i := range 3 {
		// TLS 1.2: the ticket comes within the handshake.
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: host, RootCAs: poolOf(leaf), MaxVersion: tls.VersionTLS12, ClientSessionCache: cache})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ConnectionState().DidResume; got != (i > 0) {
			t.Errorf("connection %d: resumed = %v", i, got)
		}
		c.Close()
	}
}
