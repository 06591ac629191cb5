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
