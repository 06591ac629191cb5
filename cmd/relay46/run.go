package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/relay46/relay46/acme"
	"github.com/relay46/relay46/admin"
	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/proxy"
)

func cmdRun(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("run", stderr)
	path := fs.String("config", "", "config file (required)")
	logFormat := fs.String("log-format", "", "json or console (default: the config's log.format, json)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (default: the config's log.level, info)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintln(stderr, "relay46 run: -config FILE is required")
		return errUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	logger, err := newLogger(or(*logFormat, cfg.Log.Format), or(*logLevel, cfg.Log.Level), stderr)
	if err != nil {
		return err
	}
	defer logger.Sync()
	act, err := activationFromEnv(logger)
	if err != nil {
		return err
	}
	d := &daemon{
		path:    *path,
		logger:  logger,
		metrics: metrics.New(prometheus.NewRegistry(), metrics.BuildInfo{Version: version, GoVersion: goVersion()}),
		listen:  act.listen,
	}
	return d.run(ctx, cfg)
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// daemon owns the relay's listeners and swaps configs on reload.
type daemon struct {
	path    string
	logger  *zap.Logger
	metrics *metrics.Metrics
	listen  func(role, network, addr string) (net.Listener, error)
	ready   chan<- map[proxy.Protocol]net.Addr // tests learn bound addresses here
	pprof   bool                               // serve /debug/pprof/ (debug_pprof; read when the admin listener is bound)

	srv   *proxy.Server
	certs *acme.Manager // nil until a terminated route needs certificates

	mu        sync.Mutex
	cfg       *config.Config
	listeners map[proxy.Protocol]*boundListener
	wg        sync.WaitGroup
}

type boundListener struct {
	addr string
	ln   net.Listener
}

// adminListener names the admin listener among the proxy's.
const adminListener proxy.Protocol = "admin"

func (d *daemon) run(ctx context.Context, cfg *config.Config) error {
	d.srv = &proxy.Server{Logger: d.logger, Metrics: d.metrics}
	if err := d.applyCerts(ctx, cfg, nil); err != nil {
		return err
	}
	defer func() {
		if d.certs != nil {
			d.certs.Close()
		}
	}()
	if err := d.srv.Apply(cfg); err != nil {
		return err
	}
	d.srv.SetLimits(proxyLimits(cfg.Limits))
	d.mu.Lock()
	d.pprof = cfg.DebugPprof
	d.listeners = map[proxy.Protocol]*boundListener{}
	if err := d.bind(cfg); err != nil {
		d.closeListeners()
		d.mu.Unlock()
		return err
	}
	d.cfg = cfg
	addrs := d.addrs()
	d.mu.Unlock()
	d.metrics.ConfigLoaded()
	d.logger.Info("relay46 started", zap.String("version", version), zap.String("config", d.path),
		zap.Int("routes", len(cfg.Routes)), zap.Any("listeners", addrStrings(addrs)))
	if d.ready != nil {
		d.ready <- addrs
	}

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			d.reload()
		case <-ctx.Done():
			return d.shutdown()
		}
	}
}

// bind opens the listeners cfg asks for that are not open yet at the same
// address, and closes those it no longer asks for. It binds every new one
// before closing any old one, so a failed bind changes nothing.
func (d *daemon) bind(cfg *config.Config) error {
	want := map[proxy.Protocol]string{proxy.HTTPS: cfg.Listen.HTTPS, proxy.HTTP: cfg.Listen.HTTP, adminListener: cfg.Admin,
		updatesListener: cfg.Updates.Listen}
	opened := map[proxy.Protocol]*boundListener{}
	for p, addr := range want {
		if addr == "" {
			continue
		}
		if cur := d.listeners[p]; cur != nil && cur.addr == addr {
			continue
		}
		ln, err := d.listen(string(p), "tcp", addr)
		if err != nil {
			for _, b := range opened {
				b.ln.Close()
			}
			return fmt.Errorf("listen %s on %s: %w", p, addr, err)
		}
		opened[p] = &boundListener{addr: addr, ln: ln}
	}
	for p, cur := range d.listeners {
		if want[p] != cur.addr {
			cur.ln.Close()
			delete(d.listeners, p)
		}
	}
	for p, b := range opened {
		d.listeners[p] = b
		if p == proxy.HTTPS || p == proxy.HTTP {
			d.metrics.Listening(string(p)) // the listeners whose connections are counted
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			var err error
			if p == adminListener {
				err = d.adminServer().Serve(b.ln)
			} else if p == updatesListener {
				err = d.serveUpdates(b.ln)
			} else {
				err = d.srv.Serve(b.ln, p)
			}
			if !errors.Is(err, proxy.ErrServerClosed) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
				d.logger.Error("listener stopped", zap.String("listener", string(p)), zap.Error(err))
			}
		}()
	}
	return nil
}

// addrStrings is addrs for logs.
func addrStrings(addrs map[proxy.Protocol]net.Addr) map[string]string {
	m := map[string]string{}
	for p, a := range addrs {
		m[string(p)] = a.String()
	}
	return m
}

// adminServer serves metrics, health, readiness and reload. Its limits
// keep a slow or hostile scraper from holding connections open.
func (d *daemon) adminServer() *http.Server {
	h := &admin.Server{
		Metrics: d.metrics,
		Ready:   d.readiness,
		Reload:  d.reload,
		Pprof:   d.pprof,
		Logger:  d.logger.Named("admin"),
	}
	return &http.Server{
		Handler:           h.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          zap.NewStdLog(d.logger.Named("admin")),
	}
}

// readiness says why the relay cannot serve, or nil when it can: a config
// is loaded and the public listeners it asks for are bound.
func (d *daemon) readiness() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil {
		return errors.New("no config loaded")
	}
	for p, addr := range map[proxy.Protocol]string{proxy.HTTPS: d.cfg.Listen.HTTPS, proxy.HTTP: d.cfg.Listen.HTTP} {
		if addr != "" && d.listeners[p] == nil {
			return fmt.Errorf("listener %s (%s) is not bound", p, addr)
		}
	}
	return nil
}

func proxyLimits(l config.Limits) proxy.Limits {
	return proxy.Limits{
		MaxConns: l.MaxConns, MaxHandshakes: l.MaxHandshakes, MaxConnsPerSource: l.MaxConnsPerSource,
		SourceRate: l.SourceRate, SourceBurst: l.SourceBurst,
	}
}

func (d *daemon) addrs() map[proxy.Protocol]net.Addr {
	m := map[proxy.Protocol]net.Addr{}
	for p, b := range d.listeners {
		m[p] = b.ln.Addr()
	}
	return m
}

// reload reads the config file again. A config that fails validation, or
// whose listeners cannot be bound, leaves the running one untouched.
func (d *daemon) reload() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.reloadLocked()
	d.metrics.ConfigReload(err == nil)
	if err != nil {
		d.logger.Error("reload failed; still serving the previous config", zap.Error(err))
		return err
	}
	d.logger.Info("config reloaded", zap.Int("routes", len(d.cfg.Routes)), zap.Any("listeners", addrStrings(d.addrs())))
	return nil
}

func (d *daemon) reloadLocked() error {
	cfg, err := config.Load(d.path)
	if err != nil {
		return err
	}
	prev := d.cfg
	if err := d.applyCerts(context.Background(), cfg, prev); err != nil {
		return err
	}
	if err := d.srv.Apply(cfg); err != nil {
		return err
	}
	if err := d.bind(cfg); err != nil {
		d.srv.Apply(prev)
		return err
	}
	d.srv.SetLimits(proxyLimits(cfg.Limits))
	d.cfg = cfg
	return nil
}

func (d *daemon) closeListeners() {
	for _, b := range d.listeners {
		b.ln.Close()
	}
}

func (d *daemon) shutdown() error {
	d.closeUpdates()
	d.mu.Lock()
	grace := d.cfg.ShutdownGrace
	d.mu.Unlock()
	d.logger.Info("shutting down", zap.Int("open_connections", d.srv.ActiveConns()), zap.Duration("grace", grace))
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := d.srv.Shutdown(ctx)
	d.mu.Lock()
	if b := d.listeners[adminListener]; b != nil {
		b.ln.Close()
	}
	d.mu.Unlock()
	d.wg.Wait()
	if errors.Is(err, context.DeadlineExceeded) {
		err = nil // connections past the grace period were closed: that is the design
	}
	d.logger.Info("stopped")
	return err
}

func cmdCheck(args []string, stdout io.Writer) error {
	fs := newFlags("check", stdout)
	path := fs.String("config", "", "config file (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *path == "" {
		fmt.Fprintln(stdout, "relay46 check: -config FILE is required")
		return errUsage
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	explain(stdout, cfg)
	return nil
}

// explain describes in words what a valid config will do.
func explain(w io.Writer, cfg *config.Config) {
	fmt.Fprintf(w, "%s: OK\n\n", cfg.File)
	listen := func(name, addr string) {
		if addr == "" {
			fmt.Fprintf(w, "  %-6s disabled\n", name)
		} else {
			fmt.Fprintf(w, "  %-6s listens on %s\n", name, addr)
		}
	}
	fmt.Fprintln(w, "Listeners:")
	listen("https", cfg.Listen.HTTPS)
	listen("http", cfg.Listen.HTTP)
	listen("admin", cfg.Admin)
	fmt.Fprintln(w, "\nRoutes:")
	for _, r := range cfg.Routes {
		fmt.Fprintf(w, "  %s (%s): %v\n", r.Name, r.Mode, r.Hosts)
		switch r.Mode {
		case config.Passthrough:
			fmt.Fprintf(w, "    :443 TLS passes through untouched to %s", r.Upstream)
			if r.ProxyProtocol != config.ProxyOff {
				fmt.Fprintf(w, " with PROXY protocol %s", r.ProxyProtocol)
			}
			fmt.Fprintln(w)
			if r.HTTPUpstream != "" {
				fmt.Fprintf(w, "    :80 relayed by Host to %s (the origin's own ACME HTTP-01 keeps working)\n", r.HTTPUpstream)
			} else {
				fmt.Fprintln(w, "    :80 not relayed (421 for its hosts)")
			}
		case config.Terminate:
			fmt.Fprintf(w, "    :443 TLS ends at the relay; HTTP/1.1, HTTP/2 and WebSocket proxied to %s (max body %d bytes)\n", r.Upstream, r.MaxBody)
			if r.CertFile != "" {
				fmt.Fprintf(w, "    certificate from %s (re-read when it changes)\n", r.CertFile)
			} else {
				fmt.Fprintf(w, "    certificate from ACME (%s), stored in %s\n", cfg.ACME.CA, cfg.ACME.Storage)
			}
			if r.RedirectHTTP {
				fmt.Fprintln(w, "    :80 answers ACME HTTP-01 and redirects the rest to https (308)")
			} else {
				fmt.Fprintln(w, "    :80 answers ACME HTTP-01 and proxies the rest as plain HTTP")
			}
			if len(r.TrustedProxies) > 0 {
				fmt.Fprintf(w, "    X-Forwarded-* kept from %v; replaced for everyone else\n", r.TrustedProxies)
			}
		}
		if r.AllowIPv4 {
			fmt.Fprintln(w, "    names resolve by AAAA and A (allow_ipv4)")
		}
		fmt.Fprintf(w, "    timeouts: hello %s, dial %s, idle %s\n", r.Timeouts.Hello, r.Timeouts.Dial, r.Timeouts.Idle)
	}
	if cfg.UnknownSNI == config.UnknownSNIReject {
		fmt.Fprintln(w, "\nUnknown or missing SNI: rejected with the TLS alert unrecognized_name.")
	} else {
		fmt.Fprintf(w, "\nUnknown or missing SNI: sent to route %s.\n", cfg.UnknownSNI)
	}
	fmt.Fprintln(w, "Unknown Host on :80: answered 421, never relayed.")
	if hosts, _ := terminatedHosts(cfg); len(hosts) > 0 {
		fmt.Fprintf(w, "\nACME for %v via %s:\n", hosts, cfg.ACME.CA)
		for _, c := range cfg.ACME.Challenges {
			switch {
			case c == config.ChallengeHTTP01 && cfg.Listen.HTTP == "":
				fmt.Fprintln(w, "  warning: http-01 is enabled but listen.http is disabled; only tls-alpn-01 can work")
			case c == config.ChallengeHTTP01:
				fmt.Fprintf(w, "  http-01 needs %s reachable on port 80 FROM THE INTERNET (the CA connects to it)\n", cfg.Listen.HTTP)
			case c == config.ChallengeTLSALPN01:
				fmt.Fprintf(w, "  tls-alpn-01 needs %s reachable on port 443 from the internet\n", cfg.Listen.HTTPS)
			}
		}
		if cfg.ACME.Email == "" {
			fmt.Fprintln(w, "  warning: acme.email is empty; the CA cannot warn you about problems")
		}
	}
	fmt.Fprintf(w, "Shutdown: open connections get %s to finish.\n", cfg.ShutdownGrace)
}
