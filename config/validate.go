package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// The raw structs mirror the YAML document; pointers tell "absent" from
// "set to the zero value" so defaults apply only to what was left out.
type rawConfig struct {
	Listen        *rawListen  `yaml:"listen"`
	Admin         *string     `yaml:"admin"`
	Routes        []rawRoute  `yaml:"routes"`
	UnknownSNI    *string     `yaml:"unknown_sni"`
	Timeouts      rawTimeouts `yaml:"timeouts"`
	ShutdownGrace *Duration   `yaml:"shutdown_grace"`
	ACME          rawACME     `yaml:"acme"`
	Log           rawLog      `yaml:"log"`
	Resolvers     []string    `yaml:"resolvers"`
	DNSTTL        rawTTL      `yaml:"dns_ttl"`
	Updates       *rawUpdates `yaml:"updates"`
	Limits        rawLimits   `yaml:"limits"`
	DebugPprof    bool        `yaml:"debug_pprof"`
}

type rawListen struct {
	HTTP  *string `yaml:"http"`
	HTTPS *string `yaml:"https"`
}

type rawTimeouts struct {
	Hello *Duration `yaml:"hello"`
	Dial  *Duration `yaml:"dial"`
	Idle  *Duration `yaml:"idle"`
}

type rawACME struct {
	Email      string   `yaml:"email"`
	CA         string   `yaml:"ca"`
	CARoot     string   `yaml:"ca_root"`
	Storage    string   `yaml:"storage"`
	Challenges []string `yaml:"challenges"`
}

type rawLog struct {
	Format string `yaml:"format"`
	Level  string `yaml:"level"`
}

type rawRoute struct {
	Name               string      `yaml:"name"`
	Hosts              []string    `yaml:"hosts"`
	Mode               string      `yaml:"mode"`
	Upstream           string      `yaml:"upstream"`
	HTTPUpstream       *string     `yaml:"http_upstream"`
	ProxyProtocol      string      `yaml:"proxy_protocol"`
	AllowIPv4          bool        `yaml:"allow_ipv4"`
	Timeouts           rawTimeouts `yaml:"timeouts"`
	MaxBody            *Size       `yaml:"max_body"`
	TrustedProxies     []string    `yaml:"trusted_proxies"`
	RedirectHTTP       *bool       `yaml:"redirect_http"`
	CertFile           string      `yaml:"cert_file"`
	KeyFile            string      `yaml:"key_file"`
	UpstreamCA         string      `yaml:"upstream_ca"`
	UpstreamServerName string      `yaml:"upstream_server_name"`
	AccessLog          *bool       `yaml:"access_log"`
	MaxConns           *int        `yaml:"max_conns"`

	Upstreams       []rawUpstream   `yaml:"upstreams"`
	Balance         string          `yaml:"balance"`
	AllowedPrefixes []string        `yaml:"allowed_prefixes"`
	IdentityCheck   *bool           `yaml:"identity_check"`
	IdentityCA      string          `yaml:"identity_ca"`
	PinSHA256       []string        `yaml:"pin_sha256"`
	HealthCheck     *rawHealthCheck `yaml:"health_check"`
	Ejection        rawEjection     `yaml:"ejection"`
	Update          *rawUpdateAuth  `yaml:"update"`
}

var routeName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func (d *decoder) build(raw *rawConfig) *Config {
	cfg := &Config{
		Listen:        Listen{HTTP: DefaultHTTPListen, HTTPS: DefaultHTTPSListen},
		Admin:         DefaultAdminListen,
		UnknownSNI:    UnknownSNIReject,
		ShutdownGrace: DefaultShutdownGrace,
		Timeouts: Timeouts{
			Hello: DefaultHelloTimeout, Dial: DefaultDialTimeout, Idle: DefaultIdleTimeout,
		},
		Log: Log{Format: "json", Level: "info"},
	}
	if raw.Listen != nil {
		if raw.Listen.HTTP != nil {
			cfg.Listen.HTTP = *raw.Listen.HTTP
		}
		if raw.Listen.HTTPS != nil {
			cfg.Listen.HTTPS = *raw.Listen.HTTPS
		}
	}
	d.checkListen("listen.http", cfg.Listen.HTTP)
	d.checkListen("listen.https", cfg.Listen.HTTPS)
	if cfg.Listen.HTTP == "" && cfg.Listen.HTTPS == "" {
		d.errAt("listen", "both listeners are disabled: nothing would be relayed")
	}
	if cfg.Listen.HTTP != "" && cfg.Listen.HTTP == cfg.Listen.HTTPS && !strings.HasSuffix(cfg.Listen.HTTP, ":0") {
		d.errAt("listen.https", "same address as listen.http (%s)", cfg.Listen.HTTP)
	}
	if raw.Admin != nil {
		cfg.Admin = *raw.Admin
	}
	d.checkListen("admin", cfg.Admin)
	cfg.Limits = d.buildLimits(raw.Limits)
	cfg.DebugPprof = raw.DebugPprof
	if raw.ShutdownGrace != nil {
		cfg.ShutdownGrace = raw.ShutdownGrace.D()
	}
	d.applyTimeouts(&cfg.Timeouts, raw.Timeouts, "timeouts")
	cfg.ACME = ACME{Email: raw.ACME.Email, CA: raw.ACME.CA, CARoot: raw.ACME.CARoot, Storage: raw.ACME.Storage, Challenges: raw.ACME.Challenges}
	if cfg.ACME.CA == "" {
		cfg.ACME.CA = "letsencrypt"
	}
	if cfg.ACME.Storage == "" {
		cfg.ACME.Storage = DefaultStorage
	}
	d.checkACME(&cfg.ACME)
	d.checkLog(&cfg.Log, raw.Log)
	d.buildResolvers(cfg, raw)

	if len(raw.Routes) == 0 {
		d.errAt("routes", "no routes: add at least one (see the README's configuration reference)")
	}
	owner := map[string]string{} // host → key path that claimed it
	for i := range raw.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		r := d.buildRoute(&raw.Routes[i], key, cfg.Timeouts)
		for j, h := range r.Hosts {
			hk := fmt.Sprintf("%s.hosts[%d]", key, j)
			if prev, dup := owner[h]; dup {
				d.errAt(hk, "host %q is already routed by %s (line %d)", h, prev, d.lines[prev])
				continue
			}
			owner[h] = hk
		}
		if prev := cfg.Route(r.Name); prev != nil && r.Name != "" {
			d.errAt(key+".name", "route name %q is used twice", r.Name)
		}
		cfg.Routes = append(cfg.Routes, r)
	}
	if raw.UnknownSNI != nil {
		cfg.UnknownSNI = *raw.UnknownSNI
		if cfg.UnknownSNI != UnknownSNIReject && cfg.Route(cfg.UnknownSNI) == nil {
			d.errAt("unknown_sni", "%q is neither %q nor the name of a route", cfg.UnknownSNI, UnknownSNIReject)
		}
	}
	d.buildUpdates(cfg, raw)
	return cfg
}

func (d *decoder) checkListen(key, addr string) {
	if addr == "" {
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		d.errAt(key, "%q is not host:port (write \":443\" for all addresses, \"[::]:443\" or \"0.0.0.0:443\")", addr)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		d.errAt(key, "port %q is not a number from 0 to 65535", port)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			d.errAt(key, "listen on an IP address, not a name: %q", host)
		}
	}
}

func (d *decoder) applyTimeouts(t *Timeouts, raw rawTimeouts, key string) {
	set := func(dst *time.Duration, v *Duration, name string) {
		if v == nil {
			return
		}
		if *v == 0 {
			d.errAt(key+"."+name, "must be greater than zero")
			return
		}
		*dst = v.D()
	}
	set(&t.Hello, raw.Hello, "hello")
	set(&t.Dial, raw.Dial, "dial")
	set(&t.Idle, raw.Idle, "idle")
}

func (d *decoder) checkACME(a *ACME) {
	switch a.CA {
	case "letsencrypt", "letsencrypt-staging":
	default:
		u, err := url.Parse(a.CA)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			d.errAt("acme.ca", "%q is not letsencrypt, letsencrypt-staging or an https:// directory URL", a.CA)
		}
	}
	if a.Email != "" && !strings.Contains(a.Email, "@") {
		d.errAt("acme.email", "%q is not an email address", a.Email)
	}
	for i, c := range a.Challenges {
		if c != ChallengeHTTP01 && c != ChallengeTLSALPN01 {
			d.errAt(fmt.Sprintf("acme.challenges[%d]", i), "%q is not %s or %s", c, ChallengeHTTP01, ChallengeTLSALPN01)
		}
	}
	if len(a.Challenges) == 0 {
		a.Challenges = []string{ChallengeHTTP01, ChallengeTLSALPN01}
	}
}

func (d *decoder) checkLog(l *Log, raw rawLog) {
	if raw.Format != "" {
		l.Format = raw.Format
	}
	if raw.Level != "" {
		l.Level = raw.Level
	}
	if l.Format != "json" && l.Format != "console" {
		d.errAt("log.format", "%q is not json or console", l.Format)
	}
	switch l.Level {
	case "debug", "info", "warn", "error":
	default:
		d.errAt("log.level", "%q is not debug, info, warn or error", l.Level)
	}
}

func (d *decoder) buildRoute(raw *rawRoute, key string, defaults Timeouts) *Route {
	r := &Route{
		Name:               raw.Name,
		Mode:               Mode(raw.Mode),
		Upstream:           raw.Upstream,
		ProxyProtocol:      ProxyProtocol(raw.ProxyProtocol),
		AllowIPv4:          raw.AllowIPv4,
		Timeouts:           defaults,
		MaxBody:            DefaultMaxBody,
		RedirectHTTP:       true,
		CertFile:           raw.CertFile,
		KeyFile:            raw.KeyFile,
		UpstreamCA:         raw.UpstreamCA,
		UpstreamServerName: raw.UpstreamServerName,
	}
	d.routeOperate(r, raw, key)
	if !routeName.MatchString(r.Name) {
		if r.Name == "" {
			d.fail(d.lines[key], key+".name", "every route needs a name (used in logs and metrics)")
		} else {
			d.errAt(key+".name", "%q: use lower-case letters, digits, '-', '_' and '.', at most 63", r.Name)
		}
	}
	if r.Mode == "" {
		r.Mode = Passthrough
	}
	if r.Mode != Passthrough && r.Mode != Terminate {
		d.errAt(key+".mode", "%q is not passthrough or terminate", raw.Mode)
	}
	if r.ProxyProtocol == "" {
		r.ProxyProtocol = ProxyOff
	}
	switch r.ProxyProtocol {
	case ProxyOff, ProxyV1, ProxyV2:
	default:
		d.errAt(key+".proxy_protocol", "%q is not off, v1 or v2", raw.ProxyProtocol)
	}
	d.applyTimeouts(&r.Timeouts, raw.Timeouts, key+".timeouts")
	if len(raw.Hosts) == 0 {
		d.fail(d.lines[key], key+".hosts", "a route needs at least one host")
	}
	seen := map[string]bool{}
	for i, h := range raw.Hosts {
		hk := fmt.Sprintf("%s.hosts[%d]", key, i)
		n, err := NormalizeHost(h)
		if err != nil {
			d.errAt(hk, "%v", err)
			continue
		}
		if seen[n] {
			d.errAt(hk, "host %q is listed twice in this route", n)
			continue
		}
		seen[n] = true
		r.Hosts = append(r.Hosts, n)
	}
	if r.Mode == Terminate {
		d.checkTerminate(r, raw, key)
	} else {
		d.checkPassthrough(r, raw, key)
	}
	d.checkRouteUpstreams(r, raw, key)
	return r
}

func (d *decoder) checkPassthrough(r *Route, raw *rawRoute, key string) {
	if !d.buildUpstreamList(r, raw, key) {
		d.passthroughShorthand(r, raw, key)
	}
	for _, k := range []struct {
		set  bool
		name string
	}{
		{raw.MaxBody != nil, "max_body"}, {len(raw.TrustedProxies) > 0, "trusted_proxies"},
		{raw.RedirectHTTP != nil, "redirect_http"}, {raw.CertFile != "", "cert_file"},
		{raw.KeyFile != "", "key_file"}, {raw.UpstreamCA != "", "upstream_ca"},
		{raw.UpstreamServerName != "", "upstream_server_name"},
	} {
		if k.set {
			d.errAt(key+"."+k.name, "only applies to mode: terminate (this route passes TLS through)")
		}
	}
}

// passthroughShorthand reads "upstream:" and "http_upstream:".
func (d *decoder) passthroughShorthand(r *Route, raw *rawRoute, key string) {
	if r.Upstream == "" {
		d.fail(d.lines[key], key+".upstream", "a route needs an upstream, like \"[2001:db8::2:64]:443\" or \"home.example.net:443\"")
		return
	}
	host, err := d.checkHostPort(key+".upstream", r.Upstream, r.AllowIPv4)
	if err != nil {
		return
	}
	r.HTTPUpstream = net.JoinHostPort(host, "80")
	if raw.HTTPUpstream != nil {
		r.HTTPUpstream = *raw.HTTPUpstream
		if r.HTTPUpstream != "" {
			if _, err := d.checkHostPort(key+".http_upstream", r.HTTPUpstream, r.AllowIPv4); err != nil {
				return
			}
		}
	}
	shorthandUpstreams(r)
}

// checkHostPort validates an upstream host:port and returns its host.
func (d *decoder) checkHostPort(key, hp string, allowIPv4 bool) (string, error) {
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" {
		d.errAt(key, "%q is not host:port (an IPv6 literal needs brackets: \"[2001:db8::1]:443\")", hp)
		return "", fmt.Errorf("bad")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		d.errAt(key, "port %q is not a number from 1 to 65535", port)
		return "", fmt.Errorf("bad")
	}
	if err := checkUpstreamHost(host, allowIPv4); err != nil {
		d.errAt(key, "%v", err)
		return "", err
	}
	return host, nil
}

func checkUpstreamHost(host string, allowIPv4 bool) error {
	if ip, err := netip.ParseAddr(host); err == nil {
		switch {
		case ip.Zone() != "":
			return fmt.Errorf("%q: zoned (link-local) addresses are not allowed as upstreams", host)
		case ip.Is4() || ip.Is4In6():
			if !allowIPv4 {
				return fmt.Errorf("%q is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4", host)
			}
		case ip.IsUnspecified() || ip.IsMulticast():
			return fmt.Errorf("%q cannot be an upstream", host)
		}
		return nil
	}
	if _, err := NormalizeHost(host); err != nil || strings.HasPrefix(host, "*") {
		return fmt.Errorf("%q is neither an IP address nor a hostname", host)
	}
	return nil
}

func (d *decoder) checkTerminate(r *Route, raw *rawRoute, key string) {
	if raw.HTTPUpstream != nil {
		d.errAt(key+".http_upstream", "does not apply to mode: terminate (:80 is answered by the relay: ACME and redirects, or proxied to upstream with redirect_http: false)")
	}
	if raw.MaxBody != nil {
		r.MaxBody = int64(*raw.MaxBody)
	}
	if raw.RedirectHTTP != nil {
		r.RedirectHTTP = *raw.RedirectHTTP
	}
	if r.ProxyProtocol != ProxyOff {
		d.errAt(key+".proxy_protocol", "only applies to mode: passthrough (terminated routes send X-Forwarded-For)")
	}
	if raw.CertFile == "" {
		for i, h := range r.Hosts {
			if strings.HasPrefix(h, "*.") {
				d.errAt(fmt.Sprintf("%s.hosts[%d]", key, i), "%q: ACME over HTTP-01 or TLS-ALPN-01 cannot issue wildcard certificates; give cert_file and key_file for it", h)
			}
		}
	}
	switch {
	case r.CertFile != "" && r.KeyFile == "":
		d.errAt(key+".cert_file", "needs key_file too: cert_file and key_file go together")
	case r.CertFile == "" && r.KeyFile != "":
		d.errAt(key+".key_file", "needs cert_file too: cert_file and key_file go together")
	}
	for i, p := range raw.TrustedProxies {
		pk := fmt.Sprintf("%s.trusted_proxies[%d]", key, i)
		if _, err := netip.ParsePrefix(p); err != nil {
			if a, err := netip.ParseAddr(p); err == nil {
				p = netip.PrefixFrom(a, a.BitLen()).String()
			} else {
				d.errAt(pk, "%q is not an address or CIDR prefix", p)
				continue
			}
		}
		r.TrustedProxies = append(r.TrustedProxies, p)
	}
	if d.buildUpstreamList(r, raw, key) {
		if len(r.Upstreams) > 0 && r.Upstreams[0].Scheme == "http" && (r.UpstreamCA != "" || r.UpstreamServerName != "") {
			d.errAt(key+".upstreams", "upstream_ca and upstream_server_name need https upstreams")
		}
		if len(r.Upstreams) > 0 && r.Upstreams[0].Scheme == "https" && r.Upstreams[0].FromUpdate && r.UpstreamServerName == "" {
			d.errAt(key+".upstreams", "the first upstream is https at a pushed address: set upstream_server_name, the name its certificate has")
		}
		return
	}
	if r.Upstream == "" {
		d.fail(d.lines[key], key+".upstream", "a terminated route needs an upstream URL, like \"http://[2001:db8::2:64]:8080\"")
		return
	}
	scheme, _, _, err := d.checkURL(key+".upstream", r.Upstream, r.AllowIPv4)
	if scheme == "http" && (r.UpstreamCA != "" || r.UpstreamServerName != "") {
		d.errAt(key+".upstream", "upstream_ca and upstream_server_name need an https:// upstream")
	}
	if err == nil {
		shorthandUpstreams(r)
	}
}

// NormalizeHost returns the form in which clients send host in SNI and
// Host: IDNA ASCII, lower case, no trailing dot. A leading "*." makes a
// wildcard matching exactly one label.
func NormalizeHost(host string) (string, error) {
	h := strings.TrimSuffix(strings.TrimSpace(host), ".")
	wild := strings.HasPrefix(h, "*.")
	if wild {
		h = h[2:]
	}
	if h == "" {
		return "", fmt.Errorf("empty host name %q", host)
	}
	if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil {
		return "", fmt.Errorf("%q is an IP address: clients send names in SNI, list the name", host)
	}
	if strings.Contains(h, "*") {
		return "", fmt.Errorf("%q: a wildcard must be the whole first label, as in *.example.com", host)
	}
	a, err := idna.Lookup.ToASCII(h)
	if err != nil {
		return "", fmt.Errorf("%q is not a valid host name: %v", host, err)
	}
	a = strings.ToLower(a)
	// idna.Lookup does not check lengths, and would let "a..b" or
	// "a.example.." through: names no client can send.
	if len(a) > 253 {
		return "", fmt.Errorf("%q is not a valid host name: longer than 253 characters", host)
	}
	for l := range strings.SplitSeq(a, ".") {
		if l == "" || len(l) > 63 {
			return "", fmt.Errorf("%q is not a valid host name: labels between dots must have 1 to 63 characters", host)
		}
	}
	if wild {
		if !strings.Contains(a, ".") {
			return "", fmt.Errorf("%q: a wildcard needs at least two labels after it", host)
		}
		a = "*." + a
	}
	return a, nil
}
