package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/relay46/relay46/proxy"
	"github.com/relay46/relay46/upstream"
)

// TestRunUpdateEndpoint runs the daemon with updates.listen: a home pushes
// its address there, :80 traffic follows it, and the address is saved in
// acme.storage.
func TestRunUpdateEndpoint(t *testing.T) {
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "home") })}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	go origin.Serve(ln)
	defer origin.Close()
	storage := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	_, d, addrs := startUpdatesDaemon(t, fmt.Sprintf(`listen: {https: "127.0.0.1:0", http: "127.0.0.1:0"}
admin: ""
shutdown_grace: 1s
acme: {storage: %q}
updates: {listen: "127.0.0.1:0"}
routes:
  - name: home
    hosts: [home.example]
    allowed_prefixes: ["::1/128"]
    upstreams: [{address_from: update, http_port: %d}]
    update: {password_hash: %q}
`, storage, ln.Addr().(*net.TCPAddr).Port, hash))
	fetch := func() string {
		c, err := net.Dial("tcp4", addrs[proxy.HTTP].String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: home.example\r\nConnection: close\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := fetch(); !strings.HasPrefix(got, "HTTP/1.1 502") {
		t.Errorf("before any update: %q", got)
	}
	updURL := "http://" + addrs[updatesListener].String() + "/nic/update?hostname=home.example&myip=::1"
	if code, body := getAuth(t, http.DefaultClient, updURL, "home", "pw"); code != 200 || body != "good ::1\n" {
		t.Fatalf("update: %d %q", code, body)
	}
	if got := fetch(); !strings.HasSuffix(got, "home") {
		t.Errorf("after the update: %q", got)
	}
	if b, err := os.ReadFile(filepath.Join(storage, upstream.StateFileName)); err != nil || !strings.Contains(string(b), `"address": "::1"`) {
		t.Errorf("state file: %s %v", b, err)
	}
	if err := d(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if _, err := net.Dial("tcp4", addrs[updatesListener].String()); err == nil {
		t.Error("the update endpoint still accepts after shutdown")
	}
}

// TestRunUpdateEndpointTLS: with updates.cert_file the endpoint speaks
// only HTTPS.
func TestRunUpdateEndpointTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, roots := writeSelfSigned(t, dir, "relay.example.net")
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	_, _, addrs := startUpdatesDaemon(t, fmt.Sprintf(`listen: {https: "127.0.0.1:0", http: ""}
admin: ""
acme: {storage: %q}
updates: {listen: "127.0.0.1:0", cert_file: %q, key_file: %q}
routes:
  - name: home
    hosts: [home.example]
    allowed_prefixes: ["::1/128"]
    upstreams: [{address_from: update}]
    update: {password_hash: %q}
`, dir, certFile, keyFile, hash))
	addr := addrs[updatesListener].String()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "relay.example.net"}}, Timeout: 5 * time.Second}
	if code, body := getAuth(t, c, "https://"+addr+"/nic/update?hostname=home.example&myip=::1", "home", "pw"); code != 200 || body != "good ::1\n" {
		t.Fatalf("update over HTTPS: %d %q", code, body)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/nic/update?hostname=home.example&myip=::1", nil)
	req.SetBasicAuth("home", "pw")
	// Go's server answers a plain request on a TLS port with 400 and
	// nothing else.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP answered %d; an update must not be taken in clear", resp.StatusCode)
		}
	}
}

func startUpdatesDaemon(t *testing.T, cfg string) (*daemon, func() error, map[proxy.Protocol]net.Addr) {
	t.Helper()
	d, addrs, _, stop := startDaemon(t, cfg)
	if addrs[updatesListener] == nil {
		t.Fatalf("no update listener among %v", addrs)
	}
	return d, stop, addrs
}

func getAuth(t *testing.T, c *http.Client, url, user, pass string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth(user, pass)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func writeSelfSigned(t *testing.T, dir, name string) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "u.pem"), filepath.Join(dir, "u.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	leaf, _ := x509.ParseCertificate(der)
	roots = x509.NewCertPool()
	roots.AddCert(leaf)
	return certFile, keyFile, roots
}
