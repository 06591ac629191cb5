package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/proxy"
)

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("routes:\n  - name: home\n    hosts: [misskey.example.com]\n    upstream: \"[2001:db8::2:64]:443\"\n    proxy_protocol: v2\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("routes:\n  - name: home\n    hosts: [misskey.example.com]\n    upstream: \"192.0.2.1:443\"\n    colour: blue\n"), 0o644)

	var out, errOut bytes.Buffer
	if code := realMain([]string{"check", "-config", good}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	for _, want := range []string{"good.yaml: OK", "passes through untouched to [2001:db8::2:64]:443 with PROXY protocol v2", "relayed by Host to [2001:db8::2:64]:80"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := realMain([]string{"check", "-config", bad}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d for a bad config", code)
	}
	if want := bad + ":5: routes[0].colour: unknown key \"colour\""; !strings.Contains(errOut.String(), want) {
		t.Errorf("error output lacks %q:\n%s", want, errOut.String())
	}
	if code := realMain([]string{"check"}, &out, &errOut); code != 2 {
		t.Errorf("check without -config: exit %d, want 2", code)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := realMain([]string{"version"}, &out, io.Discard); code != 0 || !strings.HasPrefix(out.String(), "relay46 dev") {
		t.Errorf("exit %d, %q", code, out.String())
	}
}

func TestDemoOnce(t *testing.T) {
	var out, errOut bytes.Buffer
	code := realMain([]string{"demo", "-once", "-https", "127.0.0.1:0", "-http", "127.0.0.1:0"}, &out, &errOut)
	if code != 0 {
		t.Fatalf("demo exit %d\n%s\n%s", code, out.String(), errOut.String())
	}
	for _, want := range []string{"you are 127.0.0.1:", "hello from the IPv6-only origin [::1]:", "you are 127.0.0.1 (X-Forwarded-For; X-Forwarded-Proto: https)", "HTTP/2.0", "refused: ", "unrecognized name"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestDemoCurlCommands runs the curl commands the demo prints, exactly as
// a user would paste them.
func TestDemoCurlCommands(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is not installed; .ci/run must install it")
		}
		t.Skip("curl is not installed")
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		done <- realMainCtx(ctx, []string{"demo", "-https", "127.0.0.1:0", "-http", "127.0.0.1:0"}, pw, io.Discard)
		pw.Close()
	}()
	defer func() { cancel(); <-done }()
	var cmds []string
	sc := bufio.NewScanner(pr)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "curl ") {
			cmds = append(cmds, line)
		}
		if strings.HasPrefix(line, "Press Ctrl-C") {
			break
		}
	}
	go io.Copy(io.Discard, pr)
	if len(cmds) != 5 {
		t.Fatalf("demo printed %d curl commands, want 5: %q", len(cmds), cmds)
	}
	run := func(cmd string) (string, error) {
		out, err := exec.Command("bash", "-c", cmd+" --silent --show-error --max-time 5").CombinedOutput()
		return string(out), err
	}
	for i, want := range []*regexp.Regexp{
		regexp.MustCompile(`you are 127\.0\.0\.1:\d+ \(learned from PROXY protocol v2\)`),
		regexp.MustCompile(`acme-challenge/demo-token over plain HTTP`),
		regexp.MustCompile(`you are 127\.0\.0\.1 \(X-Forwarded-For; X-Forwarded-Proto: https\)`),
		regexp.MustCompile(`unrecognized name|alert`),
		regexp.MustCompile(`no route for this host`),
	} {
		out, err := run(cmds[i])
		if !want.MatchString(out) {
			t.Errorf("%s\n=> %v\n%s\nwant %v", cmds[i], err, out, want)
		}
	}
}

// startDaemon runs the daemon with cfgText on loopback ports.
func startDaemon(t *testing.T, cfgText string) (*daemon, map[proxy.Protocol]net.Addr, string, func() error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay46.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan map[proxy.Protocol]net.Addr, 1)
	d := &daemon{
		path: path, logger: zap.NewNop(), listen: netListen, ready: ready,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: "test"}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- d.run(ctx, cfg) }()
	select {
	case addrs := <-ready:
		stop := func() error { cancel(); return <-errc }
		t.Cleanup(func() { cancel() })
		return d, addrs, path, stop
	case err := <-errc:
		t.Fatal(err)
	}
	return nil, nil, "", nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestRunAdminAndReload(t *testing.T) {
	origin := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "origin:"+r.Host) })}
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	go origin.Serve(ln)
	defer origin.Close()
	base := fmt.Sprintf(`listen: {https: "127.0.0.1:0", http: "127.0.0.1:0"}
admin: "127.0.0.1:0"
shutdown_grace: 1s
routes:
  - name: a
    hosts: [a.example]
    upstream: "[::1]:1"
    http_upstream: %q
`, ln.Addr().String())
	d, addrs, path, stop := startDaemon(t, base)
	adminURL := "http://" + addrs[adminListener].String()
	httpAddr := addrs[proxy.HTTP].String()
	fetch := func(host string) string {
		c, err := net.Dial("tcp4", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := fetch("a.example"); !strings.HasSuffix(got, "origin:a.example") {
		t.Fatalf("route a: %q", got)
	}
	if code, body := get(t, adminURL+"/readyz"); code != 200 {
		t.Errorf("readyz %d %s", code, body)
	}
	// A connection is counted when the relay finishes it, which may be a
	// moment after the client has read its answer.
	want := `relay46_connections_finished_total{listener="http",mode="passthrough",outcome="ok",route="a"} 1`
	var code int
	var body string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if code, body = get(t, adminURL+"/metrics"); code == 200 && strings.Contains(body, want) {
			break
		}
	}
	if code != 200 || !strings.Contains(body, want) {
		t.Errorf("metrics %d:\n%s", code, body)
	}

	// A good reload adds route b; an open connection on route a is untouched.
	held, err := net.Dial("tcp4", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	fmt.Fprintf(held, "GET /1 HTTP/1.1\r\nHost: a.example\r\n\r\n")
	heldReader := bufio.NewReader(held)
	if resp, err := http.ReadResponse(heldReader, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("held connection: %v", err)
	} else {
		io.Copy(io.Discard, resp.Body)
	}
	os.WriteFile(path, []byte(base+"  - name: b\n    hosts: [b.example]\n    upstream: \"[::1]:1\"\n    http_upstream: "+fmt.Sprintf("%q", ln.Addr().String())+"\n"), 0o644)
	resp, err := http.Post(adminURL+"/reload", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("reload: %v %v", resp, err)
	}
	if got := fetch("b.example"); !strings.HasSuffix(got, "origin:b.example") {
		t.Errorf("route b after reload: %q", got)
	}
	fmt.Fprintf(held, "GET /2 HTTP/1.1\r\nHost: a.example\r\n\r\n")
	if resp, err := http.ReadResponse(heldReader, nil); err != nil || resp.StatusCode != 200 {
		t.Errorf("held connection after reload: %v", err)
	}

	// A bad reload changes nothing and is counted.
	os.WriteFile(path, []byte("routes: [oops"), 0o644)
	if err := d.reload(); err == nil {
		t.Error("a bad config reloaded")
	}
	if got := fetch("b.example"); !strings.HasSuffix(got, "origin:b.example") {
		t.Errorf("route b after a failed reload: %q", got)
	}
	if _, body := get(t, adminURL+"/metrics"); !strings.Contains(body, `relay46_config_reloads_total{result="error"} 1`) || !strings.Contains(body, `relay46_config_reloads_total{result="ok"} 1`) {
		t.Errorf("reloads not counted:\n%s", body)
	}
	held.Close()
	if err := stop(); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

// TestGracefulShutdown: on shutdown the relay stops accepting at once,
// lets a stream that finishes within shutdown_grace complete, and closes
// one that does not when the grace period ends.
func TestGracefulShutdown(t *testing.T) {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }() // echo until the client is done
		}
	}()
	_, addrs, _, stop := startDaemon(t, fmt.Sprintf(`listen: {https: "127.0.0.1:0", http: ""}
admin: ""
shutdown_grace: 700ms
routes:
  - name: a
    hosts: [a.example]
    upstream: %q
`, ln.Addr().String()))
	hello := clientHelloBytes(t, "a.example")
	open := func() net.Conn {
		c, err := net.Dial("tcp4", addrs[proxy.HTTPS].String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(hello)
		if _, err := io.ReadFull(c, make([]byte, len(hello))); err != nil {
			t.Fatal(err)
		}
		return c
	}
	finishing, lingering := open(), open()
	defer lingering.Close()

	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- stop() }()
	time.Sleep(200 * time.Millisecond)
	if c, err := net.DialTimeout("tcp4", addrs[proxy.HTTPS].String(), time.Second); err == nil {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if n, _ := c.Read(make([]byte, 1)); n > 0 {
			t.Error("a new connection was served after shutdown began")
		}
		c.Close()
	}
	// The first stream finishes inside the grace period, intact.
	finishing.Write([]byte("last words"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(finishing, buf); err != nil || string(buf) != "last words" {
		t.Errorf("stream during grace: %q %v", buf, err)
	}
	finishing.Close()
	// The other is cut when the grace period ends, and run returns.
	lingering.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := lingering.Read(make([]byte, 1)); err == nil {
		t.Error("lingering stream still open")
	}
	if err := <-done; err != nil {
		t.Errorf("run returned %v", err)
	}
	if d := time.Since(start); d < 600*time.Millisecond || d > 3*time.Second {
		t.Errorf("shutdown took %v with a 700ms grace period", d)
	}
}

// clientHelloBytes returns a real ClientHello for sni.
func clientHelloBytes(t *testing.T, sni string) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	go func() {
		tls.Client(b, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
		b.Close()
	}()
	buf := make([]byte, 8192)
	n, err := a.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}
