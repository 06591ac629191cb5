package main

import (
	"context"
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
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/proxy"
	"github.com/relay46/relay46/proxy/proxyproto"
)

// The demo's two hosts: one passed through to an origin that holds its own
// certificate, one terminated at the relay with a certificate of its own.
const (
	demoHost     = "demo.relay46.test"
	demoTermHost = "blog.relay46.test"
)

// cmdDemo shows relay46 doing its job on this machine: an origin that
// listens only on IPv6 loopback, speaks PROXY protocol and holds its own
// certificate, reached over IPv4 through the relay.
func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("demo", stderr)
	httpsAddr := fs.String("https", "127.0.0.1:8443", "relay's TLS listener")
	httpAddr := fs.String("http", "127.0.0.1:8080", "relay's HTTP listener")
	once := fs.Bool("once", false, "make the requests itself, print what came back, and exit")
	logFormat := fs.String("log-format", "console", "json or console")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "relay46-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cert, certFile, _, err := demoCertificate(dir, "origin", demoHost)
	if err != nil {
		return err
	}
	termCert, termCertFile, termKeyFile, err := demoCertificate(dir, "relay", demoTermHost)
	if err != nil {
		return err
	}
	appOrigin, err := startDemoOrigin(ctx, "app", cert)
	if err != nil {
		return err
	}
	defer appOrigin.Close()
	tlsOrigin, err := startDemoOrigin(ctx, "tls", cert)
	if err != nil {
		return fmt.Errorf("start the IPv6 demo origin (is IPv6 loopback ::1 available?): %w", err)
	}
	defer tlsOrigin.Close()
	httpOrigin, err := startDemoOrigin(ctx, "http", cert)
	if err != nil {
		return err
	}
	defer httpOrigin.Close()

	cfgText := fmt.Sprintf(`# written by relay46 demo
listen:
  https: %q
  http: %q
admin: ""
routes:
  - name: demo
    hosts: [%q]
    mode: passthrough
    upstream: %q
    http_upstream: %q
    proxy_protocol: v2
  - name: blog
    hosts: [%q]
    mode: terminate
    upstream: "http://%s"
    cert_file: %q
    key_file: %q
shutdown_grace: 2s
`, *httpsAddr, *httpAddr, demoHost, tlsOrigin.Addr().String(), httpOrigin.Addr().String(),
		demoTermHost, appOrigin.Addr().String(), termCertFile, termKeyFile)
	cfgPath := filepath.Join(dir, "relay46.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o644); err != nil {
		return err
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		return err
	}
	logger, err := newLogger(*logFormat, "info", stderr)
	if err != nil {
		return err
	}
	ready := make(chan map[proxy.Protocol]net.Addr, 1)
	d := &daemon{
		path: cfgPath, logger: logger, listen: netListen, ready: ready,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: version, GoVersion: goVersion()}),
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- d.run(runCtx, cfg) }()
	var addrs map[proxy.Protocol]net.Addr
	select {
	case addrs = <-ready:
	case err := <-errc:
		return fmt.Errorf("%w (choose other ports with -https and -http)", err)
	}
	httpsPort := addrs[proxy.HTTPS].(*net.TCPAddr).Port
	httpPort := addrs[proxy.HTTP].(*net.TCPAddr).Port

	fmt.Fprintf(stdout, `
relay46 demo is running.

  origin (IPv6 only):  https://%s  and  http://%s, PROXY protocol v2 required, own certificate
  app (IPv6 only):     http://%s, plain HTTP behind the terminated host
  relay (IPv4):        https://127.0.0.1:%d  and  http://127.0.0.1:%d
  config:              %s

Try these in another terminal:

  # TLS passes through untouched: curl verifies the ORIGIN's certificate,
  # and the origin names the IPv4 client it learned from PROXY protocol.
  curl --cacert %s --resolve %s:%d:127.0.0.1 https://%s:%d/

  # Port 80 is relayed by Host, so the origin's own ACME HTTP-01 works:
  curl -H 'Host: %s' http://127.0.0.1:%d/.well-known/acme-challenge/demo-token

  # %s is terminated at the relay (its certificate here comes from a file;
  # in production from Let's Encrypt) and proxied over IPv6 to a plain-HTTP app
  # that learns the client from X-Forwarded-For. HTTP/2 to the client:
  curl --cacert %s --resolve %s:%d:127.0.0.1 https://%s:%d/

  # Unknown names are refused, never relayed (TLS alert unrecognized_name, HTTP 421):
  curl -k --resolve other.example:%d:127.0.0.1 https://other.example:%d/
  curl -H 'Host: other.example' http://127.0.0.1:%d/

Press Ctrl-C to stop.
`, tlsOrigin.Addr(), httpOrigin.Addr(), appOrigin.Addr(), httpsPort, httpPort, cfgPath,
		certFile, demoHost, httpsPort, demoHost, httpsPort,
		demoHost, httpPort,
		demoTermHost, termCertFile, demoTermHost, httpsPort, demoTermHost, httpsPort,
		httpsPort, httpsPort, httpPort)

	if *once {
		err := demoRequests(stdout, cert, termCert, httpsPort, httpPort)
		cancel()
		if rerr := <-errc; err == nil {
			err = rerr
		}
		return err
	}
	return <-errc
}

// demoRequests makes the README's requests itself and shows the answers.
func demoRequests(w io.Writer, cert, termCert tls.Certificate, httpsPort, httpPort int) error {
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	termRoots := x509.NewCertPool()
	termRoots.AddCert(termCert.Leaf)
	dialTo := func(port int) func(ctx context.Context, network, _ string) (net.Conn, error) {
		return func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
		}
	}
	get := func(port int, url string, tlsCfg *tls.Config) (string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: dialTo(port), TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}}
		defer c.CloseIdleConnections()
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.Status + "\n" + string(b), err
	}
	fmt.Fprintf(w, "\n$ curl --cacert origin.pem https://%s:%d/\n", demoHost, httpsPort)
	out, err := get(httpsPort, fmt.Sprintf("https://%s:%d/", demoHost, httpsPort), &tls.Config{RootCAs: roots})
	if err != nil {
		return fmt.Errorf("HTTPS through the relay: %w", err)
	}
	fmt.Fprint(w, out)
	fmt.Fprintf(w, "\n$ curl -H 'Host: %s' http://127.0.0.1:%d/.well-known/acme-challenge/demo-token\n", demoHost, httpPort)
	if out, err = get(httpPort, "http://"+demoHost+"/.well-known/acme-challenge/demo-token", nil); err != nil {
		return fmt.Errorf("HTTP through the relay: %w", err)
	}
	fmt.Fprint(w, out)
	fmt.Fprintf(w, "\n$ curl --cacert relay.pem https://%s:%d/\n", demoTermHost, httpsPort)
	if out, err = get(httpsPort, fmt.Sprintf("https://%s:%d/", demoTermHost, httpsPort), &tls.Config{RootCAs: termRoots}); err != nil {
		return fmt.Errorf("terminated HTTPS through the relay: %w", err)
	}
	fmt.Fprint(w, out)
	fmt.Fprintf(w, "\n$ curl -k https://other.example:%d/\n", httpsPort)
	if _, err = get(httpsPort, fmt.Sprintf("https://other.example:%d/", httpsPort), &tls.Config{InsecureSkipVerify: true}); err == nil {
		return fmt.Errorf("an unknown name was relayed")
	}
	fmt.Fprintf(w, "refused: %v\n", err)
	return nil
}

// startDemoOrigin serves the demo page on [::1], behind a PROXY protocol
// listener, over TLS or plain HTTP.
func startDemoOrigin(ctx context.Context, kind string, cert tls.Certificate) (net.Listener, error) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return nil, err
	}
	var inner net.Listener = &proxyproto.Listener{Listener: ln, Required: true}
	if kind == "app" {
		inner = ln
	}
	if kind == "tls" {
		inner = tls.NewListener(inner, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	}
	origin := ln.Addr().String()
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			proto := "plain HTTP"
			if r.TLS != nil {
				proto = "TLS, terminated here at the origin with its own certificate"
			}
			if kind == "app" {
				fmt.Fprintf(w, "hello from the IPv6-only app %s, behind the relay's TLS\n", origin)
				fmt.Fprintf(w, "you are %s (X-Forwarded-For; X-Forwarded-Proto: %s)\n", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
				fmt.Fprintf(w, "you asked for %s%s; the relay spoke to me from %s\n", r.Host, r.URL.Path, r.RemoteAddr)
				return
			}
			fmt.Fprintf(w, "hello from the IPv6-only origin %s\n", origin)
			fmt.Fprintf(w, "you are %s (learned from PROXY protocol v2)\n", r.RemoteAddr)
			fmt.Fprintf(w, "you asked for %s%s over %s (%s)\n", r.Host, r.URL.Path, proto, r.Proto)
		}),
	}
	go srv.Serve(inner)
	go func() { <-ctx.Done(); srv.Close() }()
	return ln, nil
}

// demoCertificate makes a self-signed certificate for host and writes it
// (and its key) where curl --cacert and the relay's cert_file can read it.
func demoCertificate(dir, name, host string) (tls.Certificate, string, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: host, Organization: []string{"relay46 demo " + name}},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, "", "", err
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, "", "", err
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return tls.Certificate{}, "", "", err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, certPath, keyPath, nil
}
