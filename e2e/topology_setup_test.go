package e2e

// Building the topology: namespaces, links, addresses and DNS; the home's
// nginx and apps; Pebble; relay46 and the clients that reach it.

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/relay46/relay46/proxy/proxyproto"
)

// network creates the namespaces, links and addresses.
func (tp *topology) network(t *testing.T) {
	// Registered first, so it runs after the namespaces' own cleanups have
	// emptied it.
	if _, err := os.Stat("/etc/netns"); os.IsNotExist(err) {
		t.Cleanup(func() { os.Remove("/etc/netns") })
	}
	tp.client = newNetns(t, "client")
	tp.relay = newNetns(t, "relay")
	tp.home = newNetns(t, "home")
	tp.stranger = newNetns(t, "stranger")
	// The client is an IPv4-only visitor: no IPv6 at all, not even
	// link-local. The relay and home use their addresses at once (no DAD).
	tp.client.sysctl(t, "net.ipv6.conf.all.disable_ipv6", "1")
	tp.client.sysctl(t, "net.ipv6.conf.default.disable_ipv6", "1")
	// The relay routes nothing: relay46 is the only way through.
	tp.relay.sysctl(t, "net.ipv4.ip_forward", "0")
	tp.relay.sysctl(t, "net.ipv6.conf.all.forwarding", "0")
	for _, n := range []*netns{tp.relay, tp.home, tp.stranger} {
		n.sysctl(t, "net.ipv6.conf.all.accept_dad", "0")
		n.sysctl(t, "net.ipv6.conf.default.accept_dad", "0")
	}
	tp.client.ip(t, "link", "add", "c0", "type", "veth", "peer", "name", "rc0", "netns", tp.relay.name)
	tp.relay.ip(t, "link", "add", "rh0", "type", "veth", "peer", "name", "h0", "netns", tp.home.name)
	tp.relay.ip(t, "link", "add", "rs0", "type", "veth", "peer", "name", "s0", "netns", tp.stranger.name)

	tp.client.ip(t, "addr", "add", clientIP+"/24", "dev", "c0")
	tp.client.ip(t, "link", "set", "c0", "up")

	tp.relay.ip(t, "addr", "add", relayV4+"/24", "dev", "rc0")
	tp.relay.ip(t, "-6", "addr", "add", relayV6+"/64", "dev", "rh0", "nodad")
	tp.relay.ip(t, "link", "set", "rc0", "up")
	tp.relay.ip(t, "link", "set", "rh0", "up")
	tp.relay.ip(t, "-6", "route", "add", "2001:db8:1::/64", "dev", "rh0")

	tp.home.ip(t, "-6", "addr", "add", homeOld+"/64", "dev", "h0", "nodad")
	tp.home.ip(t, "link", "set", "h0", "up")
	tp.home.ip(t, "-6", "route", "add", "default", "dev", "h0")

	// Another ISP subscriber, who now holds a prefix a home once had.
	tp.relay.ip(t, "-6", "addr", "add", "2001:db8:fffe::1/64", "dev", "rs0", "nodad")
	tp.relay.ip(t, "link", "set", "rs0", "up")
	tp.relay.ip(t, "-6", "route", "add", "2001:db8:3::/64", "dev", "rs0")
	tp.stranger.ip(t, "-6", "addr", "add", strangerIP+"/64", "dev", "s0", "nodad")
	tp.stranger.ip(t, "link", "set", "s0", "up")
	tp.stranger.ip(t, "-6", "route", "add", "default", "dev", "s0")

	// The relay resolves home.example.test with the system resolver; "ip
	// netns exec" puts /etc/netns/<ns>/resolv.conf in /etc for it.
	tp.relayDNS = newDNSZone()
	tp.relayDNS.set(homeName, netip.MustParseAddr(homeOld))
	tp.relayDNS.serve(t, tp.relay, "127.0.0.1:53")
	etc := filepath.Join("/etc/netns", tp.relay.name)
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(etc, "resolv.conf"), []byte("nameserver 127.0.0.1\noptions timeout:1 attempts:2\n"))

	t.Logf("topology: %s: %s/24 (IPv4 only, IPv6 disabled)", tp.client.name, clientIP)
	t.Logf("topology: %s: %s/24 towards the client, %s/64 towards the home, route 2001:db8:1::/64; forwarding off", tp.relay.name, relayV4, relayV6)
	t.Logf("topology: %s: %s/64 (IPv6 only), DNS %s AAAA %s", tp.home.name, homeOld, homeName, homeOld)
	t.Logf("topology: %s: %s/64, another subscriber's server (relay route 2001:db8:3::/64)", tp.stranger.name, strangerIP)
}

// startHome runs the home server: nginx with its own certificate and
// PROXY protocol on [::]:443 and [::]:80, a WebSocket echo behind it, and a
// plain-HTTP app on [::]:8080 for the terminated route.
func (tp *topology) startHome(t *testing.T, nginxBin string) {
	tp.homeCA = newTestCA(t, "r46e2e home CA")
	tp.homeCAFile = writeFile(t, filepath.Join(tp.dir, "home-ca.pem"), tp.homeCA.pem)
	cert, key := tp.homeCA.issue(t, passHost)
	dir := filepath.Join(tp.dir, "nginx")
	os.MkdirAll(dir, 0o755)
	writeFile(t, filepath.Join(dir, "cert.pem"), cert)
	writeFile(t, filepath.Join(dir, "key.pem"), key)

	// Behind nginx: the WebSocket echo, told by nginx who the client is
	// and which address of the home the connection came in on.
	wsMux := http.NewServeMux()
	wsMux.Handle("/streaming", wsEchoHandler(func(r *http.Request) string {
		return fmt.Sprintf("origin=%s from=%s", r.Header.Get("X-Origin-Addr"), r.Header.Get("X-Real-IP"))
	}))
	serveHTTP(t, tp.home.listen(t, "tcp6", "[::1]:8081"), wsMux)

	// The app of the terminated route.
	app := http.NewServeMux()
	app.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app in home: origin=%s from=%s xfp=%s host=%s relay=%s\n",
			localAddr(r), r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Host, r.RemoteAddr)
	})
	app.Handle("/echo", echoHandler(func(r *http.Request) string { return "origin=" + localAddr(r) }))
	app.Handle("/ws", wsEchoHandler(func(r *http.Request) string {
		return fmt.Sprintf("origin=%s from=%s", localAddr(r), r.Header.Get("X-Forwarded-For"))
	}))
	serveHTTP(t, tp.home.listen(t, "tcp6", "[::]:8080"), app)

	// The stranger serves HTTPS for the same name, with a certificate
	// from a CA the home does not use, and accepts PROXY headers.
	strangerCA := newTestCA(t, "r46e2e someone else's CA")
	strangerMux := http.NewServeMux()
	strangerMux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "a stranger's server") })
	sln := &proxyproto.Listener{Listener: tp.stranger.listen(t, "tcp6", "[::]:443")}
	strangerSrv := &http.Server{Handler: strangerMux, ErrorLog: log.New(io.Discard, "", 0)} // the relay rejecting its certificate is the point
	go strangerSrv.Serve(tls.NewListener(sln, &tls.Config{Certificates: []tls.Certificate{strangerCA.tlsCert(t, passHost)}}))
	t.Cleanup(func() { strangerSrv.Close() })

	tp.nginxAccessLog = filepath.Join(dir, "access.log")
	conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 256; }
http {
  log_format e2e 'proxy_protocol_addr=$proxy_protocol_addr:$proxy_protocol_port server_addr=$server_addr:$server_port "$request" $status';
  access_log %[1]s/access.log e2e;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  set_real_ip_from %[2]s;
  real_ip_header proxy_protocol;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  server {
    listen [::]:443 ssl proxy_protocol;
    listen [::]:80 proxy_protocol;
    server_name %[3]s;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    location /streaming {
      proxy_pass http://[::1]:8081;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Origin-Addr $server_addr;
      proxy_read_timeout 1h;
    }
    location / {
      return 200 "nginx in home: proxy_protocol_addr=$proxy_protocol_addr remote_addr=$remote_addr server_addr=$server_addr scheme=$scheme host=$host\n";
    }
  }
}
`, dir, relayV6, passHost)
	confPath := writeFile(t, filepath.Join(dir, "nginx.conf"), []byte(conf))
	tp.nginx = startProc(t, tp.dir, "nginx", tp.home.command(context.Background(), nginxBin, "-p", dir, "-c", confPath, "-e", "stderr"))
	if err := waitFor(10*time.Second, func() error {
		return dialOnce(tp.home, "tcp6", "[::1]:443")
	}); err != nil {
		t.Fatalf("nginx did not start listening: %v\n%s", err, tail(tp.nginx.log, 20))
	}
	t.Logf("home: nginx (pid %d) on [::]:443 ssl proxy_protocol and [::]:80 proxy_protocol, its own certificate for %s; WebSocket echo behind it at /streaming; Go app on [::]:8080",
		tp.nginx.pid(), passHost)
}

func localAddr(r *http.Request) string {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		return a.String()
	}
	return "?"
}

// serveHTTP serves h on ln until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv
}

func dialOnce(ns *netns, network, addr string) error {
	c, err := ns.dial(context.Background(), network, addr)
	if err == nil {
		c.Close()
	}
	return err
}

// startPebble runs Pebble in the client namespace: the CA is somewhere on
// the IPv4 internet, and validates over IPv4 as Let's Encrypt would. Its
// DNS (answering only A records) points the relay's names at 192.0.2.1.
func (tp *topology) startPebble(t *testing.T, bin string) {
	tp.pebbleDNS = newDNSZone()
	for _, h := range []string{passHost, termHost} {
		tp.pebbleDNS.set(h, netip.MustParseAddr(relayV4))
	}
	tp.pebbleDNS.serve(t, tp.client, "127.0.0.1:8053")

	// Pebble's own HTTPS listeners get a certificate for their IP address.
	ca := newTestCA(t, "r46e2e Pebble listener CA")
	cert, key := ca.issue(t, clientIP)
	dir := filepath.Join(tp.dir, "pebble")
	os.MkdirAll(dir, 0o755)
	writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":           clientIP + ":14000",
		"managementListenAddress": clientIP + ":15000",
		"certificate":             writeFile(t, filepath.Join(dir, "cert.pem"), cert),
		"privateKey":              writeFile(t, filepath.Join(dir, "key.pem"), key),
		"httpPort":                80,
		"tlsPort":                 443,
		"keyAlgorithm":            "ecdsa",
	}}
	cfgPath := writeFile(t, filepath.Join(dir, "pebble.json"), must(json.Marshal(cfg)))
	cmd := tp.client.command(context.Background(), bin, "-config", cfgPath, "-dnsserver", "127.0.0.1:8053")
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	tp.pebble = startProc(t, tp.dir, "pebble", cmd)

	mgmt := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext:     tp.client.dial,
		TLSClientConfig: &tls.Config{RootCAs: ca.pool()},
	}}
	var root []byte
	if err := waitFor(15*time.Second, func() error {
		resp, err := mgmt.Get("https://" + clientIP + ":15000/roots/0")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		root, err = io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s", resp.Status)
		}
		return err
	}); err != nil {
		t.Fatalf("Pebble did not start: %v\n%s", err, tail(tp.pebble.log, 20))
	}
	tp.pebbleRootFile = writeFile(t, filepath.Join(dir, "issuer-root.pem"), root)
	writeFile(t, filepath.Join(dir, "directory-ca.pem"), ca.pem)
	t.Logf("client: Pebble (pid %d) at https://%s:14000/dir, validating on ports 80/443 of what its DNS says (%s → %s, A records only)",
		tp.pebble.pid(), clientIP, termHost, relayV4)
}

// startRelay writes the relay's config and runs relay46 in the relay
// namespace.
func (tp *topology) startRelay(t *testing.T, bin string) {
	// The home pushes its address for misskey (the relay is its dynamic
	// DNS) with the password only it knows; blog's upstream is a name.
	tp.updatePassword = fmt.Sprintf("e2e-%x", must(rand.Int(rand.Reader, big.NewInt(1<<62))))
	hash := must(bcrypt.GenerateFromPassword([]byte(tp.updatePassword), bcrypt.MinCost))
	cfg := fmt.Sprintf(`# relay46 config of the end-to-end topology test
listen: {https: ":443", http: ":80"}
admin: "127.0.0.1:9046"
updates: {listen: "[%[7]s]:8245"}   # dyndns2, on the home-facing side
acme:
  email: admin@example.test
  ca: "https://%[1]s:14000/dir"
  ca_root: %[2]q
  storage: %[3]q
routes:
  - name: misskey
    hosts: [%[4]s]
    mode: passthrough
    upstreams:
      - prefix_from: update      # the /64 the home pushes…
        interface_id: "::2:64"   # …plus its fixed interface identifier
    proxy_protocol: v2
    identity_check: true         # a new address must show the home's certificate
    identity_ca: %[8]q
    update: {password_hash: %[9]q}
  - name: blog
    hosts: [%[6]s]
    mode: terminate
    upstream: "http://%[5]s:8080"   # AAAA from DNS, followed by its TTL
log: {format: json, level: info}
`, clientIP, filepath.Join(tp.dir, "pebble", "directory-ca.pem"), filepath.Join(tp.dir, "acme"), passHost, homeName, termHost,
		relayV6, tp.homeCAFile, hash)
	path := writeFile(t, filepath.Join(tp.dir, "relay46.yaml"), []byte(cfg))
	tp.relay46 = startProc(t, tp.dir, "relay46", tp.relay.command(context.Background(), bin, "run", "-config", path))
	tp.relayPID = tp.relay46.pid()
	admin := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: tp.relay.dial}}
	if err := waitFor(15*time.Second, func() error {
		if !tp.relay46.alive() {
			return errors.New("relay46 exited")
		}
		resp, err := admin.Get("http://127.0.0.1:9046/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	}); err != nil {
		t.Fatalf("relay46 not ready: %v\n%s", err, tail(tp.relay46.log, 30))
	}
	t.Logf("relay: relay46 run (pid %d) config:\n%s", tp.relayPID, indent(cfg))

	relayAt := func(ctx context.Context, network, addr string) (net.Conn, error) {
		_, port, _ := net.SplitHostPort(addr)
		return tp.client.dial(ctx, "tcp4", net.JoinHostPort(relayV4, port))
	}
	pebbleRoots := x509.NewCertPool()
	if !pebbleRoots.AppendCertsFromPEM(must(os.ReadFile(tp.pebbleRootFile))) {
		t.Fatal("no Pebble root")
	}
	transport := func(roots *x509.CertPool, h2 bool) *http.Transport {
		return &http.Transport{DialContext: relayAt, TLSClientConfig: &tls.Config{RootCAs: roots},
			ForceAttemptHTTP2: h2, DisableKeepAlives: !h2}
	}
	// HTTP/1.1 clients open a new connection per request: each request
	// shows where a new connection goes.
	tp.passClient = &http.Client{Timeout: 10 * time.Second, Transport: transport(tp.homeCA.pool(), false)}
	tp.termClient = &http.Client{Timeout: 10 * time.Second, Transport: transport(pebbleRoots, false)}
	tp.termH2 = &http.Client{Timeout: 10 * time.Second, Transport: transport(pebbleRoots, true)}
}

// push sends a dyndns2 update from the home namespace with curl, as
// ddclient would, and returns the relay's answer.
func (tp *topology) push(t *testing.T, password, query string) string {
	t.Helper()
	url := fmt.Sprintf("http://[%s]:8245/nic/update?hostname=%s%s", relayV6, passHost, query)
	out, err := tp.home.command(context.Background(), tp.curl, "--silent", "--show-error", "--max-time", "20",
		"--user", "misskey:"+password, url).CombinedOutput()
	shown := "misskey:<password>"
	if password != tp.updatePassword {
		shown = "misskey:" + password
	}
	t.Logf("home$ curl --user %s '%s'\n%s", shown, url, indent(string(out)))
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	return strings.TrimSpace(string(out))
}
