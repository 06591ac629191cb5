package config

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Upstream is one place a route's traffic can go: a fixed address, a
// hostname resolved by AAAA, or an address the home pushes to the update
// endpoint.
type Upstream struct {
	// Address is the upstream as written ("home.example.net:443",
	// "http://[2001:db8::2:64]:8080"); "" for pushed upstreams.
	Address string
	// Scheme is http or https for terminated routes, "" for passthrough.
	Scheme string
	// Host is an IP address (no brackets) or a hostname; "" when the
	// address is pushed (FromUpdate).
	Host string
	Port uint16
	// HTTPPort is where the route's :80 traffic goes on the same host
	// (passthrough); 0 when this upstream takes no :80 traffic.
	HTTPPort uint16
	// FromUpdate says the address comes from the route's pushed updates.
	FromUpdate bool
	// InterfaceID, when valid, replaces the low InterfaceIDBits of the
	// pushed address (prefix_from: update), so a home can push any address
	// of its /64, or be seen from one, and still be reached at its stable
	// one. When invalid, the pushed address is used whole.
	InterfaceID netip.Addr
}

// String describes u for messages and logs.
func (u Upstream) String() string {
	if u.Address != "" {
		return u.Address
	}
	host := "[pushed address]"
	if u.InterfaceID.IsValid() {
		host = fmt.Sprintf("[pushed /%d + %s]", InterfaceIDBits, u.InterfaceID)
	}
	hp := host + ":" + strconv.Itoa(int(u.Port))
	if u.Scheme != "" {
		return u.Scheme + "://" + hp
	}
	return hp
}

// TTLBounds clamp the TTL of DNS answers.
type TTLBounds struct {
	Floor, Ceiling time.Duration
}

// Updates configures the endpoint where homes push their address, speaking
// the dyndns2 protocol (GET /nic/update?hostname=…&myip=…).
type Updates struct {
	Listen string // "" disables the endpoint
	// CertFile and KeyFile, when set, make the endpoint HTTPS; without
	// them it speaks plain HTTP (keep it on a private network or behind
	// TLS, since clients send their password in every request).
	CertFile, KeyFile string
	// Burst updates are accepted per route (and requests per client
	// address), then one more per Refill.
	Burst  int
	Refill time.Duration
}

// Identity is how a passthrough route checks that a new upstream address
// is still its origin: a TLS handshake with SNI Name whose certificate
// must be valid for Name (chaining to CAFile, or the system's roots), or,
// when Pins are set, whose leaf public key has one of the pins.
type Identity struct {
	Name   string
	CAFile string
	// Pins are base64 SHA-256 hashes of SubjectPublicKeyInfo, as printed
	// by: openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64
	Pins []string
}

// HealthCheck configures active probes of every upstream address: a TCP
// connect, a TLS handshake checking the identity (passthrough routes with
// an identity check), or an HTTP GET of Path (terminated routes).
type HealthCheck struct {
	Interval     time.Duration
	Timeout      time.Duration
	Path         string // terminated routes: GET this path; "" connects only
	ExpectStatus int
	Fall, Rise   int
}

// Ejection sets aside an address that failed Failures dials in a row:
// it is tried after all others for Duration. Failures 0 never ejects.
type Ejection struct {
	Failures int
	Duration time.Duration
}

// UpdateAuth is the credential a home pushes a route's address with.
type UpdateAuth struct {
	Username     string
	PasswordHash string // bcrypt, as printed by "relay46 passwd"
}

// The raw forms of the keys above.
type rawUpstream struct {
	Address     string `yaml:"address"`
	AddressFrom string `yaml:"address_from"`
	PrefixFrom  string `yaml:"prefix_from"`
	InterfaceID string `yaml:"interface_id"`
	Scheme      string `yaml:"scheme"`
	Port        *int   `yaml:"port"`
	HTTPPort    *int   `yaml:"http_port"`
}

type rawTTL struct {
	Floor   *Duration `yaml:"floor"`
	Ceiling *Duration `yaml:"ceiling"`
}

type rawUpdates struct {
	Listen   string    `yaml:"listen"`
	CertFile string    `yaml:"cert_file"`
	KeyFile  string    `yaml:"key_file"`
	Burst    *int      `yaml:"burst"`
	Refill   *Duration `yaml:"refill"`
}

type rawHealthCheck struct {
	Interval     *Duration `yaml:"interval"`
	Timeout      *Duration `yaml:"timeout"`
	Path         *string   `yaml:"path"`
	ExpectStatus *int      `yaml:"expect_status"`
	Fall         *int      `yaml:"fall"`
	Rise         *int      `yaml:"rise"`
}

type rawEjection struct {
	Failures *int      `yaml:"failures"`
	Duration *Duration `yaml:"duration"`
}

type rawUpdateAuth struct {
	Username     *string `yaml:"username"`
	PasswordHash string  `yaml:"password_hash"`
}

// sourceUpdate is the one source of pushed addresses.
const sourceUpdate = "update"

func (d *decoder) buildResolvers(cfg *Config, raw *rawConfig) {
	for i, s := range raw.Resolvers {
		key := fmt.Sprintf("resolvers[%d]", i)
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			if a, err := netip.ParseAddr(s); err == nil {
				ap = netip.AddrPortFrom(a, 53)
			} else {
				d.errAt(key, "%q is not an IP address with an optional port, like \"[2001:4860:4860::8888]:53\" or \"9.9.9.9\"", s)
				continue
			}
		}
		if ap.Port() == 0 || ap.Addr().Zone() != "" || ap.Addr().IsUnspecified() {
			d.errAt(key, "%q cannot be a resolver", s)
			continue
		}
		cfg.Resolvers = append(cfg.Resolvers, ap.String())
	}
	cfg.DNSTTL = TTLBounds{Floor: DefaultDNSTTLFloor, Ceiling: DefaultDNSTTLCeiling}
	d.positive(&cfg.DNSTTL.Floor, raw.DNSTTL.Floor, "dns_ttl.floor")
	d.positive(&cfg.DNSTTL.Ceiling, raw.DNSTTL.Ceiling, "dns_ttl.ceiling")
	if cfg.DNSTTL.Ceiling < cfg.DNSTTL.Floor {
		d.errAt("dns_ttl.ceiling", "%s is below the floor (%s)", cfg.DNSTTL.Ceiling, cfg.DNSTTL.Floor)
	}
}

// positive sets *dst from v when v is given, requiring it above zero.
func (d *decoder) positive(dst *time.Duration, v *Duration, key string) {
	if v == nil {
		return
	}
	if *v == 0 {
		d.errAt(key, "must be greater than zero")
		return
	}
	*dst = v.D()
}

// count sets *dst from v when v is given, requiring it to be at least min.
func (d *decoder) count(dst *int, v *int, min int, key string) {
	if v == nil {
		return
	}
	if *v < min {
		d.errAt(key, "must be at least %d", min)
		return
	}
	*dst = *v
}

func (d *decoder) buildUpdates(cfg *Config, raw *rawConfig) {
	u := Updates{Burst: DefaultUpdateBurst, Refill: DefaultUpdateRefill}
	if raw.Updates != nil {
		r := raw.Updates
		u.Listen, u.CertFile, u.KeyFile = r.Listen, r.CertFile, r.KeyFile
		d.checkListen("updates.listen", u.Listen)
		switch {
		case u.CertFile != "" && u.KeyFile == "":
			d.errAt("updates.cert_file", "needs key_file too: cert_file and key_file go together")
		case u.CertFile == "" && u.KeyFile != "":
			d.errAt("updates.key_file", "needs cert_file too: cert_file and key_file go together")
		}
		d.count(&u.Burst, r.Burst, 1, "updates.burst")
		d.positive(&u.Refill, r.Refill, "updates.refill")
	}
	cfg.Updates = u
	pushed := false
	for i, r := range cfg.Routes {
		if r.Update == nil {
			continue
		}
		pushed = true
		if u.Listen == "" {
			d.errAt(fmt.Sprintf("routes[%d].update", i), "needs updates.listen: the endpoint the home pushes its address to")
		}
	}
	if u.Listen != "" && !pushed {
		d.errAt("updates.listen", "no route takes pushed updates: give a route update: credentials, or remove updates")
	}
}

// buildUpstreamList reads a route's "upstreams:" list. It returns false
// when the list is absent, and the caller reads the "upstream:" shorthand.
func (d *decoder) buildUpstreamList(r *Route, raw *rawRoute, key string) bool {
	if raw.Upstreams == nil {
		return false
	}
	if raw.Upstream != "" {
		d.errAt(key+".upstreams", "set upstream (one) or upstreams (a list), not both")
		return true
	}
	if raw.HTTPUpstream != nil && r.Mode == Passthrough {
		d.errAt(key+".http_upstream", "does not apply with upstreams: set http_port on each upstream instead")
	}
	if len(raw.Upstreams) == 0 {
		d.errAt(key+".upstreams", "an empty list: give at least one upstream")
		return true
	}
	for i := range raw.Upstreams {
		uk := fmt.Sprintf("%s.upstreams[%d]", key, i)
		u, ok := d.buildUpstream(r, &raw.Upstreams[i], uk)
		if !ok {
			continue
		}
		if r.Mode == Terminate && len(r.Upstreams) > 0 && u.Scheme != r.Upstreams[0].Scheme {
			d.errAt(uk, "scheme %s differs from the first upstream's (%s): a route speaks one protocol to its upstreams", u.Scheme, r.Upstreams[0].Scheme)
			continue
		}
		r.Upstreams = append(r.Upstreams, u)
	}
	if len(r.Upstreams) > 0 {
		r.Upstream = r.Upstreams[0].String()
		if first := r.Upstreams[0]; r.Mode == Terminate && first.FromUpdate {
			// Code that reads Upstream as a URL still can; the host is
			// one that never resolves (RFC 6761).
			r.Upstream = fmt.Sprintf("%s://pushed-address.invalid:%d", first.Scheme, first.Port)
		}
		r.HTTPUpstream = ""
		for _, u := range r.Upstreams {
			if u.HTTPPort != 0 {
				r.HTTPUpstream = u.httpString()
				break
			}
		}
	}
	return true
}

func (u Upstream) httpString() string {
	v := u
	v.Port, v.Address = u.HTTPPort, ""
	if u.Host != "" {
		return net.JoinHostPort(u.Host, strconv.Itoa(int(u.HTTPPort)))
	}
	return v.String()
}

func (d *decoder) buildUpstream(r *Route, raw *rawUpstream, key string) (Upstream, bool) {
	var u Upstream
	sources := 0
	for _, s := range []string{raw.Address, raw.AddressFrom, raw.PrefixFrom} {
		if s != "" {
			sources++
		}
	}
	if sources != 1 {
		d.fail(d.lines[key], key, "give exactly one of address, address_from: update and prefix_from: update")
		return u, false
	}
	ok := true
	if raw.Address != "" {
		for _, k := range []struct {
			name string
			set  bool
		}{{"port", raw.Port != nil}, {"scheme", raw.Scheme != ""}, {"interface_id", raw.InterfaceID != ""}} {
			if k.set {
				d.errAt(key+"."+k.name, "only applies with address_from or prefix_from (address says it all)")
				ok = false
			}
		}
		u, ok = d.upstreamAddress(r, raw.Address, key+".address", ok)
	} else {
		u, ok = d.pushedUpstream(r, raw, key)
	}
	if r.Mode == Passthrough {
		u.HTTPPort = DefaultUpstreamHTTPPort
		if raw.HTTPPort != nil {
			if p := *raw.HTTPPort; p < 0 || p > 65535 {
				d.errAt(key+".http_port", "%d is not a port from 1 to 65535 (or 0: no :80 traffic to this upstream)", p)
				ok = false
			} else {
				u.HTTPPort = uint16(p)
			}
		}
	} else if raw.HTTPPort != nil {
		d.errAt(key+".http_port", "only applies to mode: passthrough (terminated routes answer :80 themselves)")
		ok = false
	}
	return u, ok
}

// upstreamAddress reads an address: host:port for passthrough, a URL for
// terminated routes.
func (d *decoder) upstreamAddress(r *Route, s, key string, ok bool) (Upstream, bool) {
	u := Upstream{Address: s}
	if r.Mode == Terminate {
		scheme, host, port, err := d.checkURL(key, s, r.AllowIPv4)
		if err != nil {
			return u, false
		}
		u.Scheme, u.Host, u.Port = scheme, host, port
		return u, ok
	}
	host, err := d.checkHostPort(key, s, r.AllowIPv4)
	if err != nil {
		return u, false
	}
	_, ps, _ := net.SplitHostPort(s)
	p, _ := strconv.Atoi(ps)
	u.Host, u.Port = host, uint16(p)
	return u, ok
}

func (d *decoder) pushedUpstream(r *Route, raw *rawUpstream, key string) (Upstream, bool) {
	u := Upstream{FromUpdate: true}
	ok := true
	srcKey, src := key+".address_from", raw.AddressFrom
	if raw.PrefixFrom != "" {
		srcKey, src = key+".prefix_from", raw.PrefixFrom
	}
	if src != sourceUpdate {
		d.errAt(srcKey, "%q is not update (the only source of pushed addresses)", src)
		ok = false
	}
	switch {
	case raw.PrefixFrom != "" && raw.InterfaceID == "":
		d.fail(d.lines[key], key+".interface_id", "prefix_from needs interface_id, the fixed low %d bits of the home's address, like \"::2:64\"", InterfaceIDBits)
		ok = false
	case raw.PrefixFrom == "" && raw.InterfaceID != "":
		d.errAt(key+".interface_id", "only applies with prefix_from: update")
		ok = false
	case raw.InterfaceID != "":
		id, err := netip.ParseAddr(raw.InterfaceID)
		if err != nil || !id.Is6() || id.Is4In6() || id.Zone() != "" || id.IsUnspecified() || !fitsInterfaceID(id) {
			d.errAt(key+".interface_id", "%q is not an interface identifier: an IPv6 address within the low %d bits, like \"::2:64\"", raw.InterfaceID, InterfaceIDBits)
			ok = false
		} else {
			u.InterfaceID = id
		}
	}
	if r.Mode == Terminate {
		u.Scheme = "http"
		if raw.Scheme != "" {
			u.Scheme = raw.Scheme
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			d.errAt(key+".scheme", "%q is not http or https", raw.Scheme)
			ok = false
		}
	} else if raw.Scheme != "" {
		d.errAt(key+".scheme", "only applies to mode: terminate (passthrough relays TLS as it is)")
		ok = false
	}
	port := DefaultUpstreamPort
	if u.Scheme == "http" {
		port = 80
	}
	if raw.Port != nil {
		port = *raw.Port
		if port < 1 || port > 65535 {
			d.errAt(key+".port", "%d is not a number from 1 to 65535", port)
			ok = false
		}
	}
	u.Port = uint16(port)
	return u, ok
}

// fitsInterfaceID reports whether id has only its low InterfaceIDBits set.
func fitsInterfaceID(id netip.Addr) bool {
	b := id.As16()
	for _, x := range b[:16-InterfaceIDBits/8] {
		if x != 0 {
			return false
		}
	}
	return true
}

// checkURL validates a terminated route's upstream URL and returns its
// scheme, host and port (the scheme's default when absent).
func (d *decoder) checkURL(key, s string, allowIPv4 bool) (scheme, host string, port uint16, err error) {
	bad := fmt.Errorf("bad")
	u, perr := url.Parse(s)
	if perr != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		d.errAt(key, "%q is not an http:// or https:// URL (mode: terminate proxies HTTP)", s)
		return "", "", 0, bad
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.User != nil {
		d.errAt(key, "%q: give only scheme, host and port; paths are passed through unchanged", s)
		err = bad
	}
	port = 80
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		n, perr := strconv.Atoi(p)
		if perr != nil || n < 1 || n > 65535 {
			d.errAt(key, "port %q is not a number from 1 to 65535", p)
			err = bad
		}
		port = uint16(n)
	}
	if herr := checkUpstreamHost(u.Hostname(), allowIPv4); herr != nil {
		d.errAt(key, "%v", herr)
		return "", "", 0, bad
	}
	return u.Scheme, u.Hostname(), port, err
}

// shorthandUpstreams turns "upstream:" and "http_upstream:" into the
// route's upstream list, once they have been checked.
func shorthandUpstreams(r *Route) {
	var u Upstream
	if r.Mode == Terminate {
		pu, err := url.Parse(r.Upstream)
		if err != nil {
			return
		}
		u = Upstream{Address: r.Upstream, Scheme: pu.Scheme, Host: pu.Hostname(), Port: 80}
		if u.Scheme == "https" {
			u.Port = 443
		}
		if p, err := strconv.Atoi(pu.Port()); err == nil {
			u.Port = uint16(p)
		}
		r.Upstreams = []Upstream{u}
		return
	}
	host, ps, err := net.SplitHostPort(r.Upstream)
	if err != nil {
		return
	}
	p, _ := strconv.Atoi(ps)
	u = Upstream{Address: r.Upstream, Host: host, Port: uint16(p)}
	if r.HTTPUpstream != "" {
		hh, hp, err := net.SplitHostPort(r.HTTPUpstream)
		if err != nil {
			return
		}
		n, _ := strconv.Atoi(hp)
		if sameHost(hh, host) {
			u.HTTPPort = uint16(n)
		} else {
			r.HTTPOnlyUpstreams = []Upstream{{Address: r.HTTPUpstream, Host: hh, Port: uint16(n)}}
		}
	}
	r.Upstreams = []Upstream{u}
}

func sameHost(a, b string) bool {
	if x, err := netip.ParseAddr(a); err == nil {
		y, err := netip.ParseAddr(b)
		return err == nil && x.Unmap() == y.Unmap()
	}
	return strings.EqualFold(strings.TrimSuffix(a, "."), strings.TrimSuffix(b, "."))
}

// checkRouteUpstreams reads the keys that say how a route uses its
// upstreams, once the upstream list is built.
func (d *decoder) checkRouteUpstreams(r *Route, raw *rawRoute, key string) {
	r.Balance = Priority
	if raw.Balance != "" {
		r.Balance = Balance(raw.Balance)
		if r.Balance != Priority && r.Balance != RoundRobin {
			d.errAt(key+".balance", "%q is not priority or round_robin", raw.Balance)
		}
	}
	d.allowedPrefixes(r, raw, key)
	d.identity(r, raw, key)
	d.healthCheck(r, raw, key)
	r.Ejection = Ejection{Failures: DefaultEjectFailures, Duration: DefaultEjectDuration}
	d.count(&r.Ejection.Failures, raw.Ejection.Failures, 0, key+".ejection.failures")
	d.positive(&r.Ejection.Duration, raw.Ejection.Duration, key+".ejection.duration")
	d.updateAuth(r, raw, key)
}

func (d *decoder) allowedPrefixes(r *Route, raw *rawRoute, key string) {
	for i, s := range raw.AllowedPrefixes {
		pk := fmt.Sprintf("%s.allowed_prefixes[%d]", key, i)
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil || a.Zone() != "" {
				d.errAt(pk, "%q is not a CIDR prefix like \"2001:db8:1200::/40\"", s)
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4() && !r.AllowIPv4 {
			d.errAt(pk, "%q is an IPv4 prefix: set allow_ipv4: true on the route to relay to IPv4", s)
			continue
		}
		r.AllowedPrefixes = append(r.AllowedPrefixes, p.Masked())
	}
	if len(r.AllowedPrefixes) == 0 {
		return
	}
	check := func(u Upstream, k string) {
		if a, err := netip.ParseAddr(u.Host); err == nil && !PrefixesContain(r.AllowedPrefixes, a) {
			d.errAt(k, "%s is outside allowed_prefixes", a)
		}
	}
	for i, u := range r.Upstreams {
		k := key + ".upstream"
		if raw.Upstreams != nil {
			k = fmt.Sprintf("%s.upstreams[%d].address", key, i)
		}
		check(u, k)
	}
	for _, u := range r.HTTPOnlyUpstreams {
		check(u, key+".http_upstream")
	}
}

// PrefixesContain reports whether a (unmapped) is in one of ps.
func PrefixesContain(ps []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (d *decoder) identity(r *Route, raw *rawRoute, key string) {
	on := raw.IdentityCheck != nil && *raw.IdentityCheck
	off := raw.IdentityCheck != nil && !*raw.IdentityCheck
	if !on && len(raw.PinSHA256) == 0 && raw.IdentityCA == "" {
		return
	}
	if r.Mode == Terminate {
		for _, k := range []struct {
			name string
			set  bool
		}{{"identity_check", raw.IdentityCheck != nil}, {"pin_sha256", raw.PinSHA256 != nil}, {"identity_ca", raw.IdentityCA != ""}} {
			if k.set {
				d.errAt(key+"."+k.name, "only applies to mode: passthrough (a terminated route verifies its https upstream on every request)")
			}
		}
		return
	}
	if off {
		d.errAt(key+".identity_check", "is false, but pin_sha256 or identity_ca is set: remove them or the false")
		return
	}
	id := &Identity{CAFile: raw.IdentityCA}
	for _, h := range r.Hosts {
		if !strings.HasPrefix(h, "*.") {
			id.Name = h
			break
		}
	}
	if id.Name == "" {
		d.errAt(key+".hosts", "identity_check needs a host without a wildcard: the origin's certificate is checked for it")
	}
	for i, p := range raw.PinSHA256 {
		b, err := base64.StdEncoding.DecodeString(p)
		if err != nil || len(b) != 32 {
			d.errAt(fmt.Sprintf("%s.pin_sha256[%d]", key, i), "%q is not a base64 SHA-256 hash (44 characters ending in =)", p)
			continue
		}
		id.Pins = append(id.Pins, p)
	}
	if len(raw.PinSHA256) > 0 && raw.IdentityCA != "" {
		d.errAt(key+".identity_ca", "has no effect with pin_sha256: a pinned key is checked instead of the certificate chain")
	}
	if len(r.HTTPOnlyUpstreams) > 0 {
		d.errAt(key+".http_upstream", "names another host than upstream, which the identity check cannot verify: leave it out (port 80 of the same host) or drop the identity check")
	}
	r.Identity = id
}

func (d *decoder) healthCheck(r *Route, raw *rawRoute, key string) {
	if raw.HealthCheck == nil {
		return
	}
	key += ".health_check"
	h := &HealthCheck{
		Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout,
		Fall: DefaultHealthFall, Rise: DefaultHealthRise,
	}
	rh := raw.HealthCheck
	d.positive(&h.Interval, rh.Interval, key+".interval")
	d.positive(&h.Timeout, rh.Timeout, key+".timeout")
	if h.Timeout > h.Interval {
		d.errAt(key+".timeout", "%s is longer than the interval (%s)", h.Timeout, h.Interval)
	}
	d.count(&h.Fall, rh.Fall, 1, key+".fall")
	d.count(&h.Rise, rh.Rise, 1, key+".rise")
	if rh.Path != nil {
		switch {
		case r.Mode != Terminate:
			d.errAt(key+".path", "only applies to mode: terminate (passthrough routes check TCP, or TLS with identity_check)")
		case !strings.HasPrefix(*rh.Path, "/") || strings.ContainsAny(*rh.Path, " \r\n#"):
			d.errAt(key+".path", "%q is not a path like /healthz", *rh.Path)
		default:
			h.Path = *rh.Path
			h.ExpectStatus = DefaultHealthExpectStatus
		}
	}
	if rh.ExpectStatus != nil {
		switch {
		case rh.Path == nil:
			d.errAt(key+".expect_status", "only applies with path")
		case *rh.ExpectStatus < 100 || *rh.ExpectStatus > 599:
			d.errAt(key+".expect_status", "%d is not an HTTP status from 100 to 599", *rh.ExpectStatus)
		case h.Path != "":
			h.ExpectStatus = *rh.ExpectStatus
		}
	}
	r.HealthCheck = h
}

func (d *decoder) updateAuth(r *Route, raw *rawRoute, key string) {
	pushed := false // asked for, even if the entry has other problems
	for _, u := range raw.Upstreams {
		pushed = pushed || u.AddressFrom != "" || u.PrefixFrom != ""
	}
	if raw.Update == nil {
		if pushed {
			for i, u := range raw.Upstreams {
				if u.Address == "" && (u.AddressFrom != "" || u.PrefixFrom != "") {
					d.errAt(fmt.Sprintf("%s.upstreams[%d]", key, i), "a pushed address needs the route's update: credentials, which the home pushes it with")
				}
			}
		}
		return
	}
	key += ".update"
	a := &UpdateAuth{Username: r.Name, PasswordHash: raw.Update.PasswordHash}
	if raw.Update.Username != nil {
		a.Username = *raw.Update.Username
	}
	if a.Username == "" || strings.ContainsAny(a.Username, ":\r\n") {
		d.errAt(key+".username", "%q cannot be a user name (not empty, no ':')", a.Username)
	}
	if a.PasswordHash == "" {
		d.fail(d.lines[key], key+".password_hash", "needed: run \"relay46 passwd\" and paste the hash it prints")
	} else if _, err := bcrypt.Cost([]byte(a.PasswordHash)); err != nil {
		d.errAt(key+".password_hash", "not a bcrypt hash (%v): run \"relay46 passwd\" and paste the hash it prints", err)
	}
	if !pushed {
		d.errAt(key, "no upstream uses the pushed address: add one with address_from: update or prefix_from: update")
	}
	exact := false
	for _, h := range r.Hosts {
		exact = exact || !strings.HasPrefix(h, "*.")
	}
	if !exact && len(r.Hosts) > 0 {
		d.errAt(key, "the route needs a host without a wildcard: updates name it as their hostname")
	}
	r.Update = a
}
