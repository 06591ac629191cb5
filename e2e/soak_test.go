package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/relay46/relay46/proxy/proxyproto"
)

var soakFlag = flag.Duration("soak", 0, "how long TestSoak runs (default $RELAY46_SOAK, else 2m)")

// soakDuration is -soak, else $RELAY46_SOAK, else two minutes.
func soakDuration(t *testing.T) time.Duration {
	d := 2 * time.Minute
	if s := os.Getenv("RELAY46_SOAK"); s != "" {
		v, err := time.ParseDuration(s)
		if err != nil || v <= 0 {
			t.Fatalf("RELAY46_SOAK=%q is not a positive duration", s)
		}
		d = v
	}
	if *soakFlag > 0 {
		d = *soakFlag
	}
	// Leave room for setup, draining and the report inside go test's timeout.
	if deadline, ok := t.Deadline(); ok {
		if room := time.Until(deadline) - 90*time.Second; d > room {
			t.Logf("soak shortened from %s to %s to fit go test -timeout", d, room.Round(time.Second))
			d = room
		}
	}
	if d < 30*time.Second {
		t.Fatalf("soak of %s is too short to say anything (at least 30s)", d)
	}
	return d
}

// The soak's tolerances: what "roughly flat" means. Under the same load, a
// Go process's RSS moves with the GC cycle and the goroutine and descriptor
// counts with the connections open at the instant of the sample; a leak
// grows with time and so shows in a run of minutes. Idle samples, before
// traffic and after it has drained, are compared tightly.
const (
	fdLoadSlack   = 0.25 // under load: end ≤ start × 1.25 + fdLoadMin
	fdLoadMin     = 32
	fdIdleSlack   = 4    // idle after ≤ idle before + 4, not counting pooled splice pipes
	grLoadSlack   = 0.25 // goroutines under load: end ≤ start × 1.25 + grLoadMin
	grLoadMin     = 64
	grIdleSlack   = 10       // idle after ≤ idle before + 10
	rssLoadFactor = 1.5      // end ≤ start × 1.5 + rssLoadMin
	rssLoadMin    = 32 << 20 // bytes
	soakReloadGap = 10 * time.Second
)

// Sources of the soak's traffic: every kind from its own loopback address,
// so the relay's per-source limits see legitimate clients apart from the
// hostile one.
const (
	srcPass    = "127.0.0.11"
	srcTermH1  = "127.0.0.12"
	srcTermH2  = "127.0.0.13"
	srcHTTP80  = "127.0.0.14"
	srcWSPass  = "127.0.0.15"
	srcWSTerm  = "127.0.0.16"
	srcHostile = "127.0.0.66"
	srcFlood   = "127.0.0.67"
)

// TestSoak runs one relay46 on loopback under mixed traffic for a few
// minutes (RELAY46_SOAK or -soak), reloading its config every 10s, and
// shows that no accepted connection lost a byte and that open files,
// memory and goroutines stay flat.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak takes minutes; skipped with -short")
	}
	duration := soakDuration(t)
	s := newSoak(t)
	s.start(t)
	s.run(t, duration)
	s.report(t)
}

// soak holds the relay under test, its origins and the tallies.
type soak struct {
	dir        string
	relay      *proc
	cfgPath    string
	cfgs       [2]string
	httpsAddr  string
	httpAddr   string
	adminAddr  string
	ca         *testCA
	hello      string // a complete ClientHello for term.soak.test
	stats      *tally
	origins    []*http.Server
	proxyVers  sync.Map // PROXY header versions the origins saw: int → *atomic.Int64
	reloads    int
	samples    []sample
	stopping   atomic.Bool
	duration   time.Duration
	hostileSem chan struct{}
	gcForced   bool // the idle-after sample follows two GCs in relay46
	floodMu    sync.Mutex
}

func newSoak(t *testing.T) *soak {
	s := &soak{dir: t.TempDir(), stats: newTally(), hostileSem: make(chan struct{}, 12)}
	s.ca = newTestCA(t, "r46e2e soak CA")
	bin := buildBinaries(t, filepath.Join(s.dir, "bin"), "./cmd/relay46")["./cmd/relay46"]

	// Origins, all on [::1] like a home: a TLS server behind PROXY
	// protocol for passthrough (:443 and :80 of the route), and a plain
	// HTTP app for the terminated route.
	mux := http.NewServeMux()
	mux.Handle("/echo", echoHandler(nil))
	mux.Handle("/ws", wsEchoHandler(func(r *http.Request) string { return "origin=" + localAddr(r) }))
	passTLS := s.originListener(t, true)
	passHTTP := s.originListener(t, false)
	rawApp, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	appLn := lingerListener{rawApp}
	s.origins = append(s.origins,
		s.serveOrigin(passTLS, mux), s.serveOrigin(passHTTP, mux), s.serveOrigin(appLn, mux))

	certPEM, keyPEM := s.ca.issue(t, "term.soak.test")
	certFile := writeFile(t, filepath.Join(s.dir, "term.pem"), certPEM)
	keyFile := writeFile(t, filepath.Join(s.dir, "term.key"), keyPEM)
	s.httpsAddr, s.httpAddr, s.adminAddr = freeLoopback(t), freeLoopback(t), freeLoopback(t)
	// Two valid configs the reloads alternate between: the passthrough
	// route's PROXY version, the hello timeout and an extra route change.
	for i, v := range []struct{ proxy, hello, extra string }{
		{"v2", "2s", ""},
		{"v1", "3s", "\n  - name: extra\n    hosts: [extra.soak.test]\n    upstream: \"[::1]:9\"\n"},
	} {
		s.cfgs[i] = fmt.Sprintf(`# relay46 soak config %[1]d
listen: {https: %[2]q, http: %[3]q}
admin: %[4]q
timeouts: {hello: %[5]s, dial: 2s, idle: 10m}
acme: {storage: %[6]q}
routes:
  - name: pass
    hosts: [pass.soak.test]
    upstream: %[7]q
    http_upstream: %[8]q
    proxy_protocol: %[9]s
  - name: term
    hosts: [term.soak.test]
    mode: terminate
    upstream: "http://%[10]s"
    cert_file: %[11]q
    key_file: %[12]q%[13]s
log: {format: json, level: info}
debug_pprof: true  # the soak forces a GC through /debug/pprof before its last sample
`, i, s.httpsAddr, s.httpAddr, s.adminAddr, v.hello, filepath.Join(s.dir, "acme"),
			passTLS.Addr().String(), passHTTP.Addr().String(), v.proxy, appLn.Addr().String(), certFile, keyFile, v.extra)
	}
	s.cfgPath = writeFile(t, filepath.Join(s.dir, "relay46.yaml"), []byte(s.cfgs[0]))
	s.relay = startProc(t, s.dir, "relay46", exec.Command(bin, "run", "-config", s.cfgPath))
	s.hello = clientHello(t, "term.soak.test")
	return s
}

// originListener listens on [::1] for an origin that requires a PROXY
// header and, when tlsOn, speaks TLS after it.
func (s *soak) originListener(t *testing.T, tlsOn bool) net.Listener {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var out net.Listener = lingerListener{&proxyproto.Listener{Listener: ln, Required: true}}
	if tlsOn {
		out = tls.NewListener(out, &tls.Config{Certificates: []tls.Certificate{s.ca.tlsCert(t, "pass.soak.test")}})
	}
	return out
}

// serveOrigin serves h on ln, counting the PROXY header versions seen.
func (s *soak) serveOrigin(ln net.Listener, h http.Handler) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if tc, ok := c.(*tls.Conn); ok {
				c = tc.NetConn()
			}
			if lc, ok := c.(lingerConn); ok {
				c = lc.Conn
			}
			if pc, ok := c.(*proxyproto.Conn); ok {
				if h, err := pc.Header(); err == nil {
					v, _ := s.proxyVers.LoadOrStore(h.Version, new(atomic.Int64))
					v.(*atomic.Int64).Add(1)
				}
			}
			return ctx
		}}
	// What the origins think of their peers is not what the soak checks:
	// the clients check every byte.
	srv.ErrorLog = log.New(io.Discard, "", 0)
	go srv.Serve(ln)
	return srv
}

// lingerListener gives its connections a lingering close, as nginx does.
// A peer that closes with bytes from the other side still unread (a TLS
// close_notify racing a "Connection: close") sends a reset instead of a
// FIN, which relay46 rightly reports as an aborted connection. The soak's
// clients and origins behave, so that every abort it sees is relay46's.
type lingerListener struct{ net.Listener }

func (l lingerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return lingerConn{c}, nil
}

type lingerConn struct{ net.Conn }

// Close sends a FIN, reads what the peer still sends for up to 5s, then
// closes.
func (c lingerConn) Close() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return c.Conn.Close()
	}
	go func() {
		c.Conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c.Conn)
		c.Conn.Close()
	}()
	return nil
}

func freeLoopback(t *testing.T) string {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// start waits for the relay and takes the idle baseline.
func (s *soak) start(t *testing.T) {
	if err := waitFor(15*time.Second, func() error {
		if !s.relay.alive() {
			return errors.New("relay46 exited")
		}
		_, err := s.metrics()
		return err
	}); err != nil {
		t.Fatalf("relay46 did not start: %v\n%s", err, tail(s.relay.log, 30))
	}
	s.sample(t, "idle before", 0)
}

// dialer returns a DialContext from src to the relay's listener for the
// URL's scheme. Its connections close lingering, like the origins'.
func (s *soak) dialer(src string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		to := s.httpsAddr
		if strings.HasSuffix(addr, ":80") {
			to = s.httpAddr
		}
		c, err := d.DialContext(ctx, "tcp4", to)
		if err != nil {
			return nil, err
		}
		return lingerConn{c}, nil
	}
}

func (s *soak) client(src string, h2 bool) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext:         s.dialer(src),
		TLSClientConfig:     &tls.Config{RootCAs: s.ca.pool()},
		ForceAttemptHTTP2:   h2,
		MaxIdleConnsPerHost: 4,
	}}
}

// payloadSize is mostly small, sometimes large: 70% up to 16 KiB, 25% up
// to 256 KiB, 5% up to 2 MiB.
func payloadSize() int {
	switch p := mrand.IntN(100); {
	case p < 70:
		return 1 + mrand.IntN(16<<10)
	case p < 95:
		return 16<<10 + mrand.IntN(240<<10)
	default:
		return 256<<10 + mrand.IntN(1792<<10)
	}
}

// run sends the traffic for duration, sampling the relay as it goes.
func (s *soak) run(t *testing.T, duration time.Duration) {
	s.duration = duration
	t.Logf("soak: %s of mixed traffic through relay46 (pid %d) on %s and %s, reload every %s", duration, s.relay.pid(), s.httpsAddr, s.httpAddr, soakReloadGap)
	var wg sync.WaitGroup
	worker := func(fn func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !s.stopping.Load() {
				fn()
			}
		}()
	}
	pass, termH1, termH2, http80 := s.client(srcPass, false), s.client(srcTermH1, false), s.client(srcTermH2, true), s.client(srcHTTP80, false)
	for range 2 {
		worker(func() { s.echo("passthrough https", pass, "https://pass.soak.test/echo", "HTTP/1.1") })
		worker(func() { s.echo("terminated h1", termH1, "https://term.soak.test/echo", "HTTP/1.1") })
	}
	for range 3 {
		worker(func() { s.echo("terminated h2", termH2, "https://term.soak.test/echo", "HTTP/2.0") })
	}
	worker(func() { s.echo(":80 relay", http80, "http://pass.soak.test:80/echo", "HTTP/1.1") })
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			s.websocket("websocket passthrough", s.client(srcWSPass, false), "wss://pass.soak.test/ws", i)
		}()
		go func() {
			defer wg.Done()
			s.websocket("websocket terminated", s.client(srcWSTerm, false), "wss://term.soak.test/ws", i)
		}()
	}
	worker(func() { s.hostile(&wg) })
	worker(func() { s.flood(300); time.Sleep(time.Second) })

	begin := time.Now()
	warm := min(15*time.Second, duration/6)
	time.Sleep(warm)
	s.sample(t, "start (warm)", time.Since(begin))
	reload := time.NewTicker(soakReloadGap)
	defer reload.Stop()
	sampleTick := time.NewTicker(duration / 8)
	defer sampleTick.Stop()
	end := time.After(duration - warm)
loop:
	for {
		select {
		case <-reload.C:
			s.reload(t)
		case <-sampleTick.C:
			s.sample(t, "", time.Since(begin))
		case <-end:
			break loop
		}
	}
	s.sample(t, "end (load)", time.Since(begin))
	s.stopping.Store(true)
	wg.Wait()
	for _, c := range []*http.Client{pass, termH1, termH2, http80} {
		c.CloseIdleConnections()
	}
	// A last reload lets the relay's idle connections to the origins go
	// (the old config's transports are closed), as any reload does.
	s.reload(t)
	time.Sleep(3 * time.Second)
	s.gcForced = s.forceGC()
	s.sample(t, "idle after", time.Since(begin))
}

// echo sends one checked request and tallies it. One HTTP/1.1 request in
// ten is the last on its connection, so new connections keep coming and
// reloads reach every kind.
func (s *soak) echo(kind string, c *http.Client, url, proto string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := checkedEcho(ctx, c, url, payloadSize(), proto == "HTTP/1.1" && mrand.IntN(10) == 0)
	if err == nil && res.proto != proto {
		err = fmt.Errorf("answered over %s, want %s", res.proto, proto)
	}
	s.stats.add(kind, res.sent, res.received, err)
}

// websocket keeps one WebSocket open for the whole soak, exchanging a
// checked message every 50–250ms; a broken one is counted and reopened.
func (s *soak) websocket(kind string, c *http.Client, url string, i int) {
	ctx := context.Background()
	for !s.stopping.Load() {
		ws, err := dialWS(ctx, c, url)
		if err != nil {
			s.stats.add(kind, 0, 0, fmt.Errorf("open: %w", err))
			time.Sleep(time.Second)
			continue
		}
		for !s.stopping.Load() {
			if err = ws.exchange(ctx, 1+mrand.IntN(64<<10)); err != nil {
				break
			}
			time.Sleep(time.Duration(50+mrand.IntN(200)) * time.Millisecond)
		}
		if err == nil {
			err = ws.verify()
		}
		if err == nil {
			err = ws.close()
		}
		s.stats.addStream(kind, ws.messages, ws.sent, ws.received, err)
	}
}

// reload writes the other config and sends SIGHUP.
func (s *soak) reload(t *testing.T) {
	s.reloads++
	cfg := s.cfgs[s.reloads%2]
	tmp := s.cfgPath + ".tmp"
	writeFile(t, tmp, []byte(cfg))
	if err := os.Rename(tmp, s.cfgPath); err != nil {
		t.Fatal(err)
	}
	if err := s.relay.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP: %v", err)
	}
}
