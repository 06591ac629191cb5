//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/proxy"
)

func TestListenFDs(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		name  string
		env   map[string]string
		n     int
		names []string
		err   string
	}{
		{name: "not activated", env: map[string]string{}},
		{name: "named", env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "3", "LISTEN_FDNAMES": "https:http:admin"}, n: 3, names: []string{"https", "http", "admin"}},
		{name: "unnamed", env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, n: 2, names: []string{"", ""}},
		{name: "for another process", env: map[string]string{"LISTEN_PID": "1", "LISTEN_FDS": "2"}},
		{name: "no pid", env: map[string]string{"LISTEN_FDS": "2"}},
		{name: "bad pid", env: map[string]string{"LISTEN_PID": "x", "LISTEN_FDS": "2"}, err: "LISTEN_PID=\"x\" is not a process id"},
		{name: "bad count", env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "-1"}, err: "LISTEN_FDS=\"-1\" is not a count"},
		{name: "names mismatch", env: map[string]string{"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "https"}, err: "LISTEN_FDNAMES names 1 sockets but LISTEN_FDS=2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"OTHER": "kept"}
			for k, v := range tc.env {
				env[k] = v
			}
			n, names, err := listenFDs(pid, func(k string) string { return env[k] }, func(k string) error { delete(env, k); return nil })
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
			} else if err != nil || n != tc.n || fmt.Sprint(names) != fmt.Sprint(tc.names) {
				t.Fatalf("got %d %q %v, want %d %q", n, names, err, tc.n, tc.names)
			}
			// Whatever they said, children must not see them.
			if len(env) != 1 || env["OTHER"] != "kept" {
				t.Errorf("environment after: %v", env)
			}
		})
	}
}

func TestSameAddr(t *testing.T) {
	v4 := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 443}
	any6 := &net.TCPAddr{IP: net.IPv6unspecified, Port: 443}
	any4 := &net.TCPAddr{IP: net.IPv4zero, Port: 443}
	for _, tc := range []struct {
		have net.Addr
		want string
		same bool
	}{
		{v4, "127.0.0.1:443", true},
		{v4, "127.0.0.1:https", true},
		{v4, "127.0.0.2:443", false},
		{v4, "127.0.0.1:80", false},
		{v4, ":443", false},
		{any6, ":443", true},
		{any4, ":443", true},
		{any6, "[::]:443", true},
		{any6, "0.0.0.0:443", false}, // IPv4 only was asked for
		{v4, "localhost:443", false}, // names are not resolved
		{&net.UnixAddr{Name: "/run/x", Net: "unix"}, ":443", false},
	} {
		if got := sameAddr(tc.have, "tcp", tc.want); got != tc.same {
			t.Errorf("sameAddr(%s, %q) = %v", tc.have, tc.want, got)
		}
	}
}

// passSockets makes listening sockets the way a service manager passes
// them: only the descriptors remain, no listener in this process.
func passSockets(t *testing.T, addrs ...string) []*os.File {
	t.Helper()
	var files []*os.File
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}

func TestActivationListen(t *testing.T) {
	files := passSockets(t, "127.0.0.1:0", "127.0.0.1:0", "[::1]:0")
	a, err := newActivation(files, []string{"https", "something.socket", "http"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	named, unnamed, namedHTTP := a.sockets[0].addr.String(), a.sockets[1].addr.String(), a.sockets[2].addr.String()
	for _, s := range a.sockets {
		rc, err := s.file.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var flags uintptr
		rc.Control(func(fd uintptr) { flags, _, _ = syscall.Syscall(syscall.SYS_FCNTL, fd, syscall.F_GETFD, 0) })
		if flags&syscall.FD_CLOEXEC == 0 {
			t.Errorf("%s is not close-on-exec: a child process would inherit it", s)
		}
	}

	check := func(role, addr, want string) {
		t.Helper()
		ln, err := a.listen(role, "tcp", addr)
		if err != nil {
			t.Fatalf("listen(%s, %s): %v", role, addr, err)
		}
		defer ln.Close()
		if got := ln.Addr().String(); got != want && want != "" {
			t.Errorf("listen(%s, %s) gave %s, want %s", role, addr, got, want)
		}
		if want == "" {
			for _, s := range a.sockets {
				if s.addr.String() == ln.Addr().String() {
					t.Errorf("listen(%s, %s) gave the passed socket %s", role, addr, s)
				}
			}
		}
		// It accepts: the passed socket is live behind it.
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if c, err := ln.Accept(); err != nil {
			t.Errorf("accept on %s: %v", ln.Addr(), err)
		} else {
			c.Close()
		}
	}
	check("https", ":443", named)                                   // by name, whatever the configured address
	check("https", ":443", named)                                   // again, after the first listener was closed
	check("admin", unnamed, unnamed)                                // an unnamed socket, by its address
	check("admin", "127.0.0.1:0", "")                               // nothing fits: a new socket
	check("http", "[::1]:0", namedHTTP)                             // by name
	if ln, err := a.listen("admin", "tcp", namedHTTP); err == nil { // a socket named for another role is never taken by address
		ln.Close()
		t.Errorf("listen(admin, %s) took the socket named http", namedHTTP)
	}
	var nilActivation *activation
	ln, err := nilActivation.listen("https", "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
}

func TestActivationRejectsNonListeners(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := pc.(*net.UDPConn).File()
	pc.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = newActivation([]*os.File{f}, []string{"https"}, nil)
	if err == nil || !strings.Contains(err.Error(), "not a listening stream socket") {
		t.Errorf("a UDP socket was accepted: %v", err)
	}
}

// TestActivationReloadBack removes the passed :80 socket's listener by a
// reload and adds it back by another: the socket is kept, and a connection
// made in between waits in its queue and is served after the second reload.
func TestActivationReloadBack(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "origin:"+r.URL.Path) })}
	oln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	go origin.Serve(oln)
	defer origin.Close()

	files := passSockets(t, "127.0.0.1:0")
	act, err := newActivation(files, []string{"http"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	defer act.close()
	httpAddr := act.sockets[0].addr.String()
	cfgText := func(http string) string {
		return fmt.Sprintf("listen: {https: \"127.0.0.1:0\", http: %q}\nadmin: \"\"\nshutdown_grace: 1s\nroutes:\n  - name: a\n    hosts: [a.example]\n    upstream: \"[::1]:1\"\n    http_upstream: %q\n", http, oln.Addr().String())
	}
	path := filepath.Join(t.TempDir(), "relay46.yaml")
	os.WriteFile(path, []byte(cfgText(":80")), 0o644) // the socket is named: the address does not matter
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan map[proxy.Protocol]net.Addr, 1)
	d := &daemon{path: path, logger: zap.NewNop(), listen: act.listen, ready: ready,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: "test"})}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.run(ctx, cfg) }()
	defer func() { cancel(); <-errc }()
	if addrs := <-ready; addrs[proxy.HTTP].String() != httpAddr {
		t.Fatalf("http listener on %s, want the passed %s", addrs[proxy.HTTP], httpAddr)
	}

	get := func(c net.Conn, p string) string {
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n", p)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	dial := func() net.Conn {
		c, err := net.Dial("tcp4", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if got := get(dial(), "/1"); !strings.HasSuffix(got, "origin:/1") {
		t.Fatalf("before: %q", got)
	}

	os.WriteFile(path, []byte(cfgText("")), 0o644)
	if err := d.reload(); err != nil {
		t.Fatal(err)
	}
	waiting := dial() // not refused: the socket is still bound, nobody accepts
	defer waiting.Close()
	fmt.Fprintf(waiting, "GET /2 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n")
	waiting.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := waiting.Read(make([]byte, 1)); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a connection was answered with the listener removed: %d %v", n, err)
	}

	os.WriteFile(path, []byte(cfgText(":80")), 0o644)
	if err := d.reload(); err != nil {
		t.Fatalf("reload back to the passed socket: %v", err)
	}
	waiting.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(waiting); !strings.HasSuffix(string(b), "origin:/2") {
		t.Errorf("the connection made in between: %q", b)
	}
	if got := get(dial(), "/3"); !strings.HasSuffix(got, "origin:/3") {
		t.Errorf("after: %q", got)
	}
}

// --- with systemd's own systemd-socket-activate and the real binary ---

const activationHost = "origin.relay46.test"

// TestSocketActivation runs the built binary under systemd-socket-activate,
// which binds the sockets and passes them as systemd does.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-socket-activate is not installed; .ci/run must install systemd")
		}
		t.Skip("systemd-socket-activate is not installed (apt-get install systemd)")
	}
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "relay46")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	o := startActivationOrigin(t)

	t.Run("serves the passed sockets", func(t *testing.T) {
		e := newActivationEnv(t, o)
		cmd := e.command(activate, bin, "run", "-config", e.cfg)
		e.waitForLine("Listening on " + e.addrs[2] + " as 5.")
		// The first connection starts relay46, as on-demand activation does;
		// it was made before relay46 existed, and is served.
		if err := o.request(e.addrs[0], "/first"); err != nil {
			t.Fatalf("request through the passed https socket: %v\n%s", err, e.logs())
		}
		for _, role := range []string{"https", "http", "admin"} {
			e.waitFor(t, "listening on a socket passed by the service manager", map[string]string{"listener": role, "fd_name": role})
		}
		if got, err := o.plainRequest(e.addrs[1], "/http"); err != nil || !strings.Contains(got, "plain origin:/http") {
			t.Errorf("request through the passed http socket: %q %v", got, err)
		}
		if out, err := exec.Command(bin, "health", "-ready", "-admin", e.addrs[2]).CombinedOutput(); err != nil || string(out) != "ready\n" {
			t.Errorf("relay46 health on the passed admin socket: %v %q", err, out)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("relay46 exited with %v\n%s", err, e.logs())
		}
	})

	t.Run("restart loses no connection", func(t *testing.T) {
		e := newActivationEnv(t, o)
		// What systemd does on "systemctl restart": it keeps the sockets and
		// starts the service again, forking, setting LISTEN_PID to the
		// child's pid and exec'ing. Here a shell started by
		// systemd-socket-activate holds the sockets and plays that part.
		const supervisor = `relay=$1 cfg=$2 dir=$3
for run in 1 2; do
  ( echo $BASHPID >"$dir/pid$run.tmp"; mv "$dir/pid$run.tmp" "$dir/pid$run"
    export LISTEN_PID=$BASHPID; exec "$relay" run -config "$cfg" ) &
  wait $!
  echo "supervisor: run $run exited with status $?" >&2
  [ $run = 1 ] && sleep 0.5   # a slow restart: no relay46 process at all for 0.5s
done
exit 0`
		cmd := e.command(activate, "bash", "-c", supervisor, "supervisor", bin, e.cfg, e.dir)
		e.waitForLine("Listening on " + e.addrs[2] + " as 5.")
		if err := o.request(e.addrs[0], "/first"); err != nil {
			t.Fatalf("first request: %v\n%s", err, e.logs())
		}
		e.waitFor(t, "relay46 started", nil)
		pid1 := e.pid(t, 1)

		// Clients connect every 5ms, each on a new connection, before,
		// during and after the restart.
		type result struct {
			at  time.Time
			err error
		}
		var (
			mu      sync.Mutex
			results []result
			wg      sync.WaitGroup
		)
		stop := make(chan struct{})
		go func() {
			tick := time.NewTicker(5 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					at := time.Now()
					err := o.request(e.addrs[0], "/loop")
					mu.Lock()
					results = append(results, result{at, err})
					mu.Unlock()
				}()
			}
		}()
		time.Sleep(300 * time.Millisecond)
		syscall.Kill(pid1, syscall.SIGTERM)
		stopped := e.waitFor(t, "stopped", nil)
		e.waitForLine("supervisor: run 1 exited with status 0")
		started := e.waitFor(t, "relay46 started", map[string]string{"#": "2"})
		time.Sleep(300 * time.Millisecond)
		close(stop)
		wg.Wait()

		var failed []string
		during := 0
		for _, r := range results {
			if r.err != nil {
				failed = append(failed, fmt.Sprintf("%s: %v", r.at.Format("15:04:05.000"), r.err))
			}
			if r.at.After(stopped.time) && r.at.Before(started.time) {
				during++
			}
		}
		t.Logf("%d connections in all, %d made while no relay46 process was running (%s to %s), %d failed",
			len(results), during, stopped.time.Format("15:04:05.000"), started.time.Format("15:04:05.000"), len(failed))
		if len(failed) > 0 {
			t.Errorf("%d connections failed:\n%s\n%s", len(failed), strings.Join(failed, "\n"), e.logs())
		}
		if during < 20 {
			t.Errorf("only %d connections were made during the restart; the test proves nothing", during)
		}
		syscall.Kill(e.pid(t, 2), syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("supervisor: %v\n%s", err, e.logs())
		}
	})
}

// activationOrigin is the home server: TLS and plain HTTP, on [::1] only.
type activationOrigin struct {
	tlsAddr, httpAddr string
	roots             *x509.CertPool
}

func startActivationOrigin(t *testing.T) *activationOrigin {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), DNSNames: []string{activationHost},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	o := &activationOrigin{roots: x509.NewCertPool()}
	o.roots.AddCert(leaf)
	serve := func(kind string, tlsCfg *tls.Config) string {
		ln, err := net.Listen("tcp6", "[::1]:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{TLSConfig: tlsCfg, ReadHeaderTimeout: 5 * time.Second,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "%s origin:%s", kind, r.URL.Path) })}
		if tlsCfg != nil {
			go srv.ServeTLS(ln, "", "")
		} else {
			go srv.Serve(ln)
		}
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	o.tlsAddr = serve("tls", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	o.httpAddr = serve("plain", nil)
	return o
}

// request makes one HTTPS request through the relay's :443 at addr, on a
// new connection, verifying the origin's certificate: TLS passes through.
func (o *activationOrigin) request(addr, path string) error {
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(15 * time.Second))
	tc := tls.Client(c, &tls.Config{ServerName: activationHost, RootCAs: o.roots})
	fmt.Fprintf(tc, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, activationHost)
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(b) != "tls origin:"+path {
		return fmt.Errorf("%s %q", resp.Status, b)
	}
	return nil
}

func (o *activationOrigin) plainRequest(addr, path string) (string, error) {
	c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, activationHost)
	b, err := io.ReadAll(c)
	return string(b), err
}

// activationEnv is one systemd-socket-activate run: its sockets (https,
// http, admin on free loopback ports), relay46's config, and the output.
type activationEnv struct {
	t     *testing.T
	dir   string
	cfg   string
	addrs [3]string

	mu    sync.Mutex
	lines []string
}

func newActivationEnv(t *testing.T, o *activationOrigin) *activationEnv {
	e := &activationEnv{t: t, dir: t.TempDir()}
	for i := range e.addrs {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		e.addrs[i] = ln.Addr().String()
		ln.Close()
	}
	// The config names the same addresses, as a real one would (":443"):
	// binding them itself would fail, since systemd-socket-activate holds them.
	e.cfg = filepath.Join(e.dir, "relay46.yaml")
	cfg := fmt.Sprintf(`listen: {https: %q, http: %q}
admin: %q
shutdown_grace: 5s
log: {format: json}
routes:
  - name: origin
    hosts: [%s]
    upstream: %q
    http_upstream: %q
`, e.addrs[0], e.addrs[1], e.addrs[2], activationHost, o.tlsAddr, o.httpAddr)
	if err := os.WriteFile(e.cfg, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// command starts systemd-socket-activate with the three sockets, named as
// FileDescriptorName= names them in deploy/relay46-*.socket.
func (e *activationEnv) command(activate string, args ...string) *exec.Cmd {
	full := []string{"-l", e.addrs[0], "-l", e.addrs[1], "-l", e.addrs[2], "--fdname=https:http:admin"}
	cmd := exec.Command(activate, append(full, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	cmd.Stdout = cmd.Stderr
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // our own process group, if anything is left
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			e.mu.Lock()
			e.lines = append(e.lines, sc.Text())
			e.mu.Unlock()
		}
	}()
	return cmd
}

func (e *activationEnv) logs() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return strings.Join(e.lines, "\n")
}

func (e *activationEnv) waitForLine(line string) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		for _, l := range e.lines {
			if strings.Contains(l, line) {
				e.mu.Unlock()
				return
			}
		}
		e.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("no line %q in:\n%s", line, e.logs())
}

type logEntry struct {
	time   time.Time
	fields map[string]any
}

// waitFor waits for relay46's JSON log line with message msg and the given
// fields; the field "#" picks the n-th such line.
func (e *activationEnv) waitFor(t *testing.T, msg string, fields map[string]string) logEntry {
	t.Helper()
	nth := 1
	if n, ok := fields["#"]; ok {
		nth, _ = strconv.Atoi(n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		lines := e.lines
		e.mu.Unlock()
		seen := 0
	lines:
		for _, l := range lines {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != msg {
				continue
			}
			for k, v := range fields {
				if k != "#" && m[k] != v {
					continue lines
				}
			}
			if seen++; seen == nth {
				ts, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(m["time"]))
				return logEntry{time: ts, fields: m}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no log line %q %v in:\n%s", msg, fields, e.logs())
	return logEntry{}
}

func (e *activationEnv) pid(t *testing.T, run int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, fmt.Sprintf("pid%d", run)))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}
