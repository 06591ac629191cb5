package proxy

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// needTool finds a program the test needs. Missing it fails the test in CI
// (where .ci/run installs it) and skips it elsewhere, with the reason.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return filepath.Join(dir, name)
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run must install it", name)
	}
	t.Skipf("%s is not installed (apt-get install nginx-light); skipping", name)
	return ""
}

func freePort(t *testing.T, network, addr string) string {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startNginx runs a real nginx origin on [::1] that requires PROXY
// protocol on an HTTPS and an HTTP port and answers with what it learned.
func startNginx(t *testing.T, certPEM, keyPEM []byte) (httpsAddr, httpAddr string) {
	t.Helper()
	bin := needTool(t, "nginx")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
	httpsAddr = freePort(t, "tcp6", "[::1]:0")
	httpAddr = freePort(t, "tcp6", "[::1]:0")
	answer := `return 200 "proxy_protocol_addr=$proxy_protocol_addr proxy_protocol_port=$proxy_protocol_port remote_addr=$remote_addr host=$host scheme=$scheme uri=$request_uri\n";`
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  set_real_ip_from 127.0.0.1;
  set_real_ip_from ::1;
  real_ip_header proxy_protocol;
  server {
    listen %[2]s ssl proxy_protocol;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    location / { %[4]s }
  }
  server {
    listen %[3]s proxy_protocol;
    location / { %[4]s }
  }
}
`, dir, httpsAddr, httpAddr, answer)
	confPath := filepath.Join(dir, "nginx.conf")
	os.WriteFile(confPath, []byte(conf), 0o600)
	var stderr bytes.Buffer
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", "stderr")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("nginx stderr:\n%s", stderr.String())
		}
	})
	for _, a := range []string{httpsAddr, httpAddr} {
		deadline := time.Now().Add(5 * time.Second)
		for {
			c, err := net.Dial("tcp6", a)
			if err == nil {
				c.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("nginx did not start: %v\n%s", err, stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return httpsAddr, httpAddr
}

func TestProxyProtocolWithRealNginx(t *testing.T) {
	cert, roots := testCert(t, "v1.example.com", "v2.example.com")
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	httpsAddr, httpAddr := startNginx(t,
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	r := startRelay(t, fmt.Sprintf(`routes:
  - name: v1
    hosts: [v1.example.com]
    upstream: %[1]q
    http_upstream: %[2]q
    proxy_protocol: v1
  - name: v2
    hosts: [v2.example.com]
    upstream: %[1]q
    http_upstream: %[2]q
    proxy_protocol: v2
`, httpsAddr, httpAddr))

	for _, v := range []string{"v1", "v2"} {
		host := v + ".example.com"
		t.Run(v+" over TLS passthrough", func(t *testing.T) {
			body, cs, err := httpsGet(t, r.https, host, "/whoami", roots)
			if err != nil {
				t.Fatal(err)
			}
			if !cs.PeerCertificates[0].Equal(cert.Leaf) {
				t.Error("not nginx's certificate")
			}
			// The client is 127.0.0.1: sent as TCP4, never ::ffff:127.0.0.1.
			for _, want := range []string{"proxy_protocol_addr=127.0.0.1 ", "remote_addr=127.0.0.1 ", "scheme=https", "host=" + host} {
				if !strings.Contains(body, want) {
					t.Errorf("nginx answered %q, want %q in it", body, want)
				}
			}
		})
		t.Run(v+" over the :80 relay", func(t *testing.T) {
			got := rawHTTP(t, r.http, "GET /.well-known/acme-challenge/x HTTP/1.1\r\nHost: "+host+"\r\nConnection: close\r\n\r\n")
			for _, want := range []string{"HTTP/1.1 200", "proxy_protocol_addr=127.0.0.1 ", "scheme=http ", "uri=/.well-known/acme-challenge/x"} {
				if !strings.Contains(got, want) {
					t.Errorf("nginx answered %q, want %q in it", got, want)
				}
			}
		})
	}
}
