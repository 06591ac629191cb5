package main

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/acme/pebbletest"
	"github.com/relay46/relay46/proxy"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// directoryRootPEM fetches the certificate chain of Pebble's directory and
// writes it where acme.ca_root can name it.
func directoryRootPEM(t *testing.T, dirURL string) string {
	t.Helper()
	u, _ := url.Parse(dirURL)
	c, err := tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	path := filepath.Join(t.TempDir(), "pebble-directory.pem")
	var out []byte
	for _, cert := range c.ConnectionState().PeerCertificates {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	os.WriteFile(path, out, 0o644)
	return path
}

// TestACMEThroughTheRelaysOwnListeners has a real ACME CA (Pebble) issue
// a certificate for a terminated host, validating through relay46's own
// :80 (HTTP-01) or :443 (TLS-ALPN-01), while a passthrough host shares
// the same listeners. A client trusting only Pebble's root then gets a
// valid chain and the origin's answer.
func TestACMEThroughTheRelaysOwnListeners(t *testing.T) {
	for _, challenge := range []string{"http-01", "tls-alpn-01"} {
		t.Run(challenge, func(t *testing.T) {
			origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "origin: %s %s xfp=%s", r.Host, r.URL.Path, r.Header.Get("X-Forwarded-Proto"))
			})}
			oln, err := net.Listen("tcp6", "[::1]:0")
			if err != nil {
				t.Fatal(err)
			}
			go origin.Serve(oln)
			defer origin.Close()

			httpsAddr, httpAddr := freeAddr(t), freeAddr(t)
			p := pebbletest.Start(t, pebbletest.Opts{HTTPPort: port(httpAddr), TLSPort: port(httpsAddr)})
			host := fmt.Sprintf("blog-%s-%d.example.org", strings.ReplaceAll(challenge, "-", ""), time.Now().UnixNano()%1e6)
			cfg := fmt.Sprintf(`listen: {https: %q, http: %q}
admin: ""
acme:
  email: admin@example.org
  ca: %q
  ca_root: %q
  storage: %q
  challenges: [%s]
routes:
  - name: home
    hosts: [misskey.example.com]
    upstream: "[::1]:1"
  - name: blog
    hosts: [%s]
    mode: terminate
    upstream: "http://%s"
`, httpsAddr, httpAddr, p.DirectoryURL, directoryRootPEM(t, p.DirectoryURL), t.TempDir(), challenge, host, oln.Addr())
			_, addrs, _, stop := startDaemon(t, cfg)
			defer stop()

			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{RootCAs: p.IssuerRoots},
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "tcp4", addrs[proxy.HTTPS].String())
				},
			}}
			deadline := time.Now().Add(60 * time.Second)
			for {
				resp, err := client.Get("https://" + host + "/hello")
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if want := "origin: " + host + " /hello xfp=https"; string(body) != want {
						t.Fatalf("got %q, want %q", body, want)
					}
					issuer := resp.TLS.PeerCertificates[0].Issuer.CommonName
					t.Logf("%s: certificate for %s issued by %q, valid until %s", challenge, host, issuer, resp.TLS.PeerCertificates[0].NotAfter.Format(time.RFC3339))
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no valid certificate through the relay after 60s: %v", err)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}
