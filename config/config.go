// Package config reads relay46's YAML configuration strictly: unknown keys,
// wrong types, duplicate hosts, bad addresses and impossible combinations
// are errors that name the file, the line and the key.
//
// Typical use:
//
//	cfg, err := config.Load("/etc/relay46/relay46.yaml")
//	if err != nil {
//		// err lists every problem, one per line: "relay46.yaml:7: routes[0].upstream: ..."
//	}
//	for _, r := range cfg.Routes { ... }
package config

import (
	"bytes"
	"fmt"
	"io"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Documented defaults. The README's configuration reference lists the same
// values; a test keeps them in step.
const (
	DefaultHTTPListen     = ":80"
	DefaultHTTPSListen    = ":443"
	DefaultAdminListen    = "127.0.0.1:9046"
	DefaultHelloTimeout   = 5 * time.Second
	DefaultDialTimeout    = 5 * time.Second
	DefaultIdleTimeout    = time.Hour
	DefaultShutdownGrace  = 30 * time.Second
	DefaultMaxBody        = 256 << 20
	DefaultMaxHeaderBytes = 32 << 10
	DefaultStorage        = "/var/lib/relay46"
	UnknownSNIReject      = "reject"
	maxConfigBytes        = 4 << 20

	// Hostname upstreams: a DNS answer is used for its TTL, but never for
	// less than the floor (to spare the resolver) nor more than the
	// ceiling (so a home behind a long TTL is still followed).
	DefaultDNSTTLFloor   = 5 * time.Second
	DefaultDNSTTLCeiling = 5 * time.Minute

	// Pushed updates: each route accepts a burst of this many, then one
	// more per refill period; more are answered "abuse" (HTTP 429).
	DefaultUpdateBurst  = 5
	DefaultUpdateRefill = time.Minute

	// Active health checks (health_check:), when a route asks for them.
	DefaultHealthInterval     = 10 * time.Second
	DefaultHealthTimeout      = 3 * time.Second
	DefaultHealthFall         = 3 // consecutive failures before an address is down
	DefaultHealthRise         = 2 // consecutive successes before it is up again
	DefaultHealthExpectStatus = 200

	// Passive ejection: after this many consecutive failed dials an
	// address is tried last, for this long.
	DefaultEjectFailures = 2
	DefaultEjectDuration = 30 * time.Second

	// Ports of upstreams whose address is pushed (address_from or
	// prefix_from): TLS (passthrough) and :80.
	DefaultUpstreamPort     = 443
	DefaultUpstreamHTTPPort = 80
	// InterfaceIDBits is how much of an address interface_id replaces:
	// the pushed address keeps its /64 prefix.
	InterfaceIDBits = 64
)

// Config is a validated relay46 configuration. All defaults are filled in:
// code using a Config never has to know them.
type Config struct {
	File   string // where it was read from, for messages
	Listen Listen
	Admin  string // admin listener address; "" disables it
	Routes []*Route
	// UnknownSNI is "reject" or the name of the route that takes
	// ClientHellos whose SNI matches no route (or that have none).
	UnknownSNI    string
	Timeouts      Timeouts
	ShutdownGrace time.Duration
	ACME          ACME
	Log           Log
	Limits        Limits
	// DebugPprof serves /debug/pprof/ on the admin listener.
	DebugPprof bool
	// Resolvers are the DNS servers (ip:port) asked for hostname
	// upstreams; empty means the system's (/etc/resolv.conf).
	Resolvers []string
	// DNSTTL bounds how long an answer is used before it is asked again.
	DNSTTL TTLBounds
	// Updates is the endpoint where homes push their address (dyndns2).
	Updates Updates
}

// Listen holds the public listener addresses; "" disables one.
type Listen struct {
	HTTP  string
	HTTPS string
}

// Timeouts bound each stage of a connection.
type Timeouts struct {
	// Hello bounds reading the TLS ClientHello on :443 and the request
	// head on :80.
	Hello time.Duration
	// Dial bounds connecting to the origin, per address tried.
	Dial time.Duration
	// Idle closes a relayed connection after this long with no bytes in
	// either direction.
	Idle time.Duration
}

// ACME configures certificates obtained by the relay for terminated routes.
type ACME struct {
	Email   string
	CA      string // directory URL (the names letsencrypt and letsencrypt-staging are mapped)
	CARoot  string // PEM file trusted for the CA's directory, "" for system roots
	Storage string
	// Challenges the relay may answer: http-01 (on :80) and tls-alpn-01
	// (on :443). Default both.
	Challenges []string
}

// ACME challenge types, as written in acme.challenges.
const (
	ChallengeHTTP01    = "http-01"
	ChallengeTLSALPN01 = "tls-alpn-01"
)

// Log configures logging.
type Log struct {
	Format string // json or console
	Level  string // debug, info, warn, error
}

// Route relays a set of hosts to one origin.
type Route struct {
	Name  string
	Hosts []string // normalized: lower-case ASCII (IDNA), no trailing dot; "*.x" wildcards
	Mode  Mode
	// Upstream is host:port for passthrough and a URL for terminate.
	Upstream string
	// HTTPUpstream is host:port where :80 traffic goes; "" when :80 is not
	// relayed for this route (terminated routes answer :80 themselves).
	HTTPUpstream  string
	ProxyProtocol ProxyProtocol
	AllowIPv4     bool
	Timeouts      Timeouts

	// Terminated routes.
	MaxBody            int64
	TrustedProxies     []string
	RedirectHTTP       bool
	CertFile, KeyFile  string
	UpstreamCA         string
	UpstreamServerName string

	// AccessLog writes a line per connection and per request for this
	// route (errors are logged regardless).
	AccessLog bool
	// MaxConns caps this route's open connections; 0 means no cap.
	MaxConns int

	// Upstreams are where the route's traffic goes, in priority order;
	// always at least one. "upstream:" is shorthand for a list of one, and
	// Upstream is the first of them as written, for messages.
	Upstreams []Upstream
	// HTTPOnlyUpstreams take the route's :80 traffic when http_upstream
	// names another host than upstream; otherwise :80 goes to each
	// upstream's HTTPPort and this is empty.
	HTTPOnlyUpstreams []Upstream
	Balance           Balance
	// AllowedPrefixes, when set, are the only networks an upstream address
	// may be in, whether it is written, resolved or pushed.
	AllowedPrefixes []netip.Prefix
	// Identity, when set, is checked on every new upstream address before
	// it is used (passthrough routes).
	Identity *Identity
	// HealthCheck, when set, probes every upstream address actively.
	HealthCheck *HealthCheck
	// Ejection sets aside an address after consecutive failed dials.
	Ejection Ejection
	// Update, when set, lets the home push its address for the route's
	// hosts to the update endpoint with these credentials.
	Update *UpdateAuth
}

// Load reads and validates the config file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes; is this the right file?", path, maxConfigBytes)
	}
	return Parse(path, data)
}

// Parse validates the YAML document data; name is used in error messages.
// The returned error joins every problem found, each an *Error.
func Parse(name string, data []byte) (*Config, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, yamlError(name, err)
	}
	if len(doc.Content) == 0 {
		return nil, &Error{File: name, Msg: "the file is empty: it needs at least one route"}
	}
	// A second document would be silently ignored by a plain Unmarshal,
	// and with it whatever the user wrote there. Empty ones (a trailing
	// "---") are harmless.
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, yamlError(name, err)
		}
		if len(next.Content) > 0 && next.Content[0].Tag != "!!null" {
			return nil, &Error{File: name, Line: next.Line, Msg: "a second YAML document (after ---): relay46 reads one document; merge them"}
		}
	}
	d := &decoder{file: name, lines: map[string]int{}}
	var raw rawConfig
	d.decode(doc.Content[0], reflect.ValueOf(&raw).Elem(), "")
	if len(d.errs) > 0 {
		return nil, d.joined()
	}
	cfg := d.build(&raw)
	if len(d.errs) > 0 {
		return nil, d.joined()
	}
	cfg.File = name
	return cfg, nil
}

// yamlError turns the YAML library's "yaml: line 3: did not find expected
// key" into an *Error located like every other problem.
func yamlError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, err := strconv.Atoi(n); err == nil {
				line, msg = l, after
			}
		}
	}
	// The library numbers lines from 1 in scanner errors but from 0 in
	// parser errors, which name the line where the unfinished list or
	// mapping began.
	if line > 0 && isYAMLParserProblem(msg) {
		line++
	}
	return &Error{File: name, Line: line, Msg: "not valid YAML: " + msg}
}

// isYAMLParserProblem reports whether msg comes from go.yaml.in/yaml/v3's
// parser (parserc.go) rather than its scanner.
func isYAMLParserProblem(msg string) bool {
	switch msg {
	case "did not find expected <stream-start>",
		"did not find expected <document start>",
		"found undefined tag handle",
		"did not find expected node content",
		"did not find expected '-' indicator",
		"did not find expected key",
		"did not find expected ',' or ']'",
		"did not find expected ',' or '}'",
		"found duplicate %YAML directive",
		"found incompatible YAML document",
		"found duplicate %TAG directive":
		return true
	}
	return false
}

// Route returns the route with the given name, or nil.
func (c *Config) Route(name string) *Route {
	for _, r := range c.Routes {
		if r.Name == name {
			return r
		}
	}
	return nil
}
