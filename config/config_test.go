package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode"
)

// exampleYAML is the configuration shown in the issues that define the
// config contract (core relay and TLS termination), merged into one file.
const exampleYAML = `
listen:
  http: ":80"          # default; "" disables
  https: ":443"        # default
acme:
  email: admin@example.com
  ca: letsencrypt             # letsencrypt (default) | letsencrypt-staging | a directory URL
  ca_root: ""                 # PEM file to trust for a private or test CA's directory
  storage: /var/lib/relay46   # certificates, keys and ACME account
routes:
  - name: misskey                      # used in logs and metrics
    hosts: ["misskey.example.com", "*.misskey.example.com"]
    mode: passthrough                  # the default mode
    upstream: "[2001:db8::2:64]:443"   # IPv6 literal, or "home.example.net:443" resolved by AAAA
    http_upstream: "[2001:db8::2:64]:80"   # where :80 goes; default: upstream's host, port 80
    proxy_protocol: v2                 # off (default) | v1 | v2, applied to both
  - name: blog
    hosts: ["blog.example.org"]
    mode: terminate
    upstream: "http://[2001:db8::2:64]:8080"     # or https://home.example.net (verified), AAAA only by default
    max_body: 256MiB                              # request body limit; documented default
    trusted_proxies: []                           # clients whose X-Forwarded-* are kept
unknown_sni: reject                    # reject (TLS alert unrecognized_name) | a route name as fallback
timeouts: { hello: 5s, dial: 5s, idle: 1h }   # documented defaults; all overridable per route
`

var defaultTimeouts = Timeouts{Hello: 5 * time.Second, Dial: 5 * time.Second, Idle: time.Hour}

func TestValidConfig(t *testing.T) {
	cfg, err := Parse("relay46.yaml", []byte(exampleYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		File:   "relay46.yaml",
		Listen: Listen{HTTP: ":80", HTTPS: ":443"},
		Admin:  "127.0.0.1:9046",
		Routes: []*Route{
			{
				Name:          "misskey",
				Hosts:         []string{"misskey.example.com", "*.misskey.example.com"},
				Mode:          Passthrough,
				Upstream:      "[2001:db8::2:64]:443",
				HTTPUpstream:  "[2001:db8::2:64]:80",
				ProxyProtocol: ProxyV2,
				Timeouts:      defaultTimeouts,
				MaxBody:       256 << 20,
				RedirectHTTP:  true,
				AccessLog:     true,
				Upstreams:     []Upstream{{Address: "[2001:db8::2:64]:443", Host: "2001:db8::2:64", Port: 443, HTTPPort: 80}},
				Balance:       Priority,
				Ejection:      defaultEjection,
			},
			{
				Name:          "blog",
				Hosts:         []string{"blog.example.org"},
				Mode:          Terminate,
				Upstream:      "http://[2001:db8::2:64]:8080",
				ProxyProtocol: ProxyOff,
				Timeouts:      defaultTimeouts,
				MaxBody:       256 << 20,
				RedirectHTTP:  true,
				AccessLog:     true,
				Upstreams:     []Upstream{{Address: "http://[2001:db8::2:64]:8080", Scheme: "http", Host: "2001:db8::2:64", Port: 8080}},
				Balance:       Priority,
				Ejection:      defaultEjection,
			},
		},
		UnknownSNI:    "reject",
		Timeouts:      defaultTimeouts,
		ShutdownGrace: 30 * time.Second,
		ACME:          ACME{Email: "admin@example.com", CA: "letsencrypt", Storage: "/var/lib/relay46", Challenges: []string{ChallengeHTTP01, ChallengeTLSALPN01}},
		Log:           Log{Format: "json", Level: "info"},
		Limits:        defaultLimits,
		DNSTTL:        defaultDNSTTL,
		Updates:       defaultUpdates,
	}
	checkConfig(t, cfg, want)
}

// TestMinimalConfig checks every default on the smallest useful file.
func TestMinimalConfig(t *testing.T) {
	cfg, err := Parse("min.yaml", []byte(`
routes:
  - name: home
    hosts: [home.example]
    upstream: "[2001:db8::1]:443"
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := &Config{
		File:   "min.yaml",
		Listen: Listen{HTTP: DefaultHTTPListen, HTTPS: DefaultHTTPSListen},
		Admin:  DefaultAdminListen,
		Routes: []*Route{{
			Name:          "home",
			Hosts:         []string{"home.example"},
			Mode:          Passthrough,
			Upstream:      "[2001:db8::1]:443",
			HTTPUpstream:  "[2001:db8::1]:80",
			ProxyProtocol: ProxyOff,
			Timeouts:      Timeouts{Hello: DefaultHelloTimeout, Dial: DefaultDialTimeout, Idle: DefaultIdleTimeout},
			MaxBody:       DefaultMaxBody,
			RedirectHTTP:  true,
			AccessLog:     true,
			Upstreams:     []Upstream{{Address: "[2001:db8::1]:443", Host: "2001:db8::1", Port: 443, HTTPPort: DefaultUpstreamHTTPPort}},
			Balance:       Priority,
			Ejection:      defaultEjection,
		}},
		UnknownSNI:    UnknownSNIReject,
		Timeouts:      Timeouts{Hello: DefaultHelloTimeout, Dial: DefaultDialTimeout, Idle: DefaultIdleTimeout},
		ShutdownGrace: DefaultShutdownGrace,
		ACME:          ACME{CA: "letsencrypt", Storage: DefaultStorage, Challenges: []string{ChallengeHTTP01, ChallengeTLSALPN01}},
		Log:           Log{Format: "json", Level: "info"},
		Limits:        defaultLimits,
		DNSTTL:        defaultDNSTTL,
		Updates:       defaultUpdates,
	}
	checkConfig(t, cfg, want)
}

func TestNormalizationAndInheritance(t *testing.T) {
	cfg, err := Parse("relay46.yaml", []byte(`
timeouts: {idle: 10m}
routes:
  - name: jp
    hosts: ["例え.jp", "Misskey.Example.COM.", "*.X.Example"]
    upstream: "home.example.net:8443"
    timeouts: {dial: 2s}
  - name: v6
    hosts: ["ＦＵＬＬＷＩＤＴＨ.example"]
    upstream: "[2001:db8::2:64]:8443"
unknown_sni: v6
`))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	jp, v6 := cfg.Route("jp"), cfg.Route("v6")
	if jp == nil || v6 == nil {
		t.Fatalf("routes: %+v", cfg.Routes)
	}
	if want := []string{"xn--r8jz45g.jp", "misskey.example.com", "*.x.example"}; !reflect.DeepEqual(jp.Hosts, want) {
		t.Errorf("jp hosts = %q, want %q", jp.Hosts, want)
	}
	if want := []string{"fullwidth.example"}; !reflect.DeepEqual(v6.Hosts, want) {
		t.Errorf("v6 hosts = %q, want %q", v6.Hosts, want)
	}
	// http_upstream defaults to the upstream's host on port 80, for a
	// hostname and for an IPv6 literal (which keeps its brackets).
	if jp.HTTPUpstream != "home.example.net:80" {
		t.Errorf("jp http_upstream = %q", jp.HTTPUpstream)
	}
	if v6.HTTPUpstream != "[2001:db8::2:64]:80" {
		t.Errorf("v6 http_upstream = %q", v6.HTTPUpstream)
	}
	// A route overriding one timeout inherits the others from the file's
	// timeouts, which themselves override the defaults.
	if want := (Timeouts{Hello: DefaultHelloTimeout, Dial: 2 * time.Second, Idle: 10 * time.Minute}); jp.Timeouts != want {
		t.Errorf("jp timeouts = %+v, want %+v", jp.Timeouts, want)
	}
	if want := (Timeouts{Hello: DefaultHelloTimeout, Dial: DefaultDialTimeout, Idle: 10 * time.Minute}); v6.Timeouts != want || cfg.Timeouts != want {
		t.Errorf("v6 timeouts = %+v, config timeouts = %+v, want %+v", v6.Timeouts, cfg.Timeouts, want)
	}
	if cfg.UnknownSNI != "v6" {
		t.Errorf("unknown_sni = %q, want the fallback route v6", cfg.UnknownSNI)
	}
}

func TestValidVariants(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "allow_ipv4 permits an IPv4 upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "192.0.2.10:443"
    allow_ipv4: true
`,
			check: func(t *testing.T, c *Config) {
				if r := c.Routes[0]; !r.AllowIPv4 || r.HTTPUpstream != "192.0.2.10:80" {
					t.Errorf("route = %+v", r)
				}
			},
		},
		{
			name: "empty http_upstream disables :80 for the route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    http_upstream: ""
`,
			check: func(t *testing.T, c *Config) {
				if got := c.Routes[0].HTTPUpstream; got != "" {
					t.Errorf("http_upstream = %q, want empty", got)
				}
			},
		},
		{
			name: "listeners and admin can be disabled one at a time",
			yaml: `
listen: {http: ""}
admin: ""
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			check: func(t *testing.T, c *Config) {
				if c.Listen != (Listen{HTTP: "", HTTPS: ":443"}) || c.Admin != "" {
					t.Errorf("listen = %+v, admin = %q", c.Listen, c.Admin)
				}
			},
		},
		{
			name: "terminate route with every option",
			yaml: `
acme: {ca: "https://localhost:14000/dir", ca_root: pebble.pem, storage: /tmp/relay46}
log: {format: console, level: debug}
shutdown_grace: 0s
routes:
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstream: "https://home.example.net:8443/"
    max_body: 512KiB
    trusted_proxies: ["192.0.2.1", "2001:db8::/32"]
    redirect_http: false
    cert_file: blog.pem
    key_file: blog.key
    upstream_ca: home-ca.pem
    upstream_server_name: home.internal
    timeouts: {idle: 5m}
`,
			check: func(t *testing.T, c *Config) {
				want := &Route{
					Name:               "blog",
					Hosts:              []string{"blog.example.org"},
					Mode:               Terminate,
					Upstream:           "https://home.example.net:8443/",
					ProxyProtocol:      ProxyOff,
					Timeouts:           Timeouts{Hello: DefaultHelloTimeout, Dial: DefaultDialTimeout, Idle: 5 * time.Minute},
					MaxBody:            512 << 10,
					TrustedProxies:     []string{"192.0.2.1/32", "2001:db8::/32"},
					CertFile:           "blog.pem",
					KeyFile:            "blog.key",
					UpstreamCA:         "home-ca.pem",
					UpstreamServerName: "home.internal",
					AccessLog:          true,
					Upstreams:          []Upstream{{Address: "https://home.example.net:8443/", Scheme: "https", Host: "home.example.net", Port: 8443}},
					Balance:            Priority,
					Ejection:           defaultEjection,
				}
				if !reflect.DeepEqual(c.Routes[0], want) {
					t.Errorf("route:\n got %+v\nwant %+v", c.Routes[0], want)
				}
				if want := (ACME{CA: "https://localhost:14000/dir", CARoot: "pebble.pem", Storage: "/tmp/relay46", Challenges: []string{ChallengeHTTP01, ChallengeTLSALPN01}}); !reflect.DeepEqual(c.ACME, want) {
					t.Errorf("acme = %+v, want %+v", c.ACME, want)
				}
				if c.Log != (Log{Format: "console", Level: "debug"}) || c.ShutdownGrace != 0 {
					t.Errorf("log = %+v, shutdown_grace = %v", c.Log, c.ShutdownGrace)
				}
			},
		},
		{
			name: "sizes in every unit",
			yaml: `
routes:
  - {name: a, hosts: [a.example], mode: terminate, upstream: "http://[2001:db8::1]", max_body: 1000}
  - {name: b, hosts: [b.example], mode: terminate, upstream: "http://[2001:db8::1]", max_body: 250MB}
  - {name: c, hosts: [c.example], mode: terminate, upstream: "http://[2001:db8::1]", max_body: 1GiB}
  - {name: d, hosts: [d.example], mode: terminate, upstream: "http://[2001:db8::1]", max_body: 10 KB}
`,
			check: func(t *testing.T, c *Config) {
				want := []int64{1000, 250_000_000, 1 << 30, 10_000}
				for i, r := range c.Routes {
					if r.MaxBody != want[i] {
						t.Errorf("%s: max_body = %d, want %d", r.Name, r.MaxBody, want[i])
					}
				}
			},
		},
		{
			name: "a trailing document marker",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
---
`,
			check: func(t *testing.T, c *Config) {
				if len(c.Routes) != 1 {
					t.Errorf("routes = %+v", c.Routes)
				}
			},
		},
		{
			name: "reused settings through an alias",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    timeouts: &slow {idle: 24h}
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
    timeouts: *slow
`,
			check: func(t *testing.T, c *Config) {
				for _, r := range c.Routes {
					if r.Timeouts.Idle != 24*time.Hour {
						t.Errorf("%s: idle = %v", r.Name, r.Timeouts.Idle)
					}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("relay46.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, c)
		})
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "Example.COM", want: "example.com"},
		{in: "example.com.", want: "example.com"},
		{in: " example.com ", want: "example.com"},
		{in: "例え.jp", want: "xn--r8jz45g.jp"},
		{in: "xn--r8jz45g.jp", want: "xn--r8jz45g.jp"},
		{in: "*.例え.jp", want: "*.xn--r8jz45g.jp"},
		{in: "*.Example.com.", want: "*.example.com"},
		{in: "", err: `empty host name ""`},
		{in: ".", err: `empty host name "."`},
		{in: "*", err: `"*": a wildcard must be the whole first label, as in *.example.com`},
		{in: "*.*.example.com", err: `"*.*.example.com": a wildcard must be the whole first label, as in *.example.com`},
		{in: "a*.example.com", err: `"a*.example.com": a wildcard must be the whole first label, as in *.example.com`},
		{in: "a.example..", err: `"a.example.." is not a valid host name: labels between dots must have 1 to 63 characters`},
		{in: strings.Repeat("a", 64) + ".example", err: `"` + strings.Repeat("a", 64) + `.example" is not a valid host name: labels between dots must have 1 to 63 characters`},
		{in: strings.Repeat("abcdefghi.", 26) + "example", err: `"` + strings.Repeat("abcdefghi.", 26) + `example" is not a valid host name: longer than 253 characters`},
		{in: "::1", err: `"::1" is an IP address: clients send names in SNI, list the name`},
	}
	for _, tt := range tests {
		got, err := NormalizeHost(tt.in)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("NormalizeHost(%q) = %q, %v; want error %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("NormalizeHost(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
		// Normalizing is idempotent: the proxy may normalize an SNI that
		// came from a normalized config.
		if again, err := NormalizeHost(got); err != nil || again != got {
			t.Errorf("NormalizeHost(%q) = %q, %v; not idempotent", got, again, err)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "relay46.yaml")
	if err := os.WriteFile(path, []byte(exampleYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.File != path || len(cfg.Routes) != 2 {
		t.Errorf("Load = %+v", cfg)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("routes:\n  - name: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if want := bad + ":2: routes[0].hosts: a route needs at least one host"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Load(bad) = %v, want it to start with %q", err, want)
	}

	if _, err := Load(filepath.Join(dir, "missing.yaml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want fs.ErrNotExist", err)
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, maxConfigBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(big)
	if want := fmt.Sprintf("%s: larger than %d bytes; is this the right file?", big, maxConfigBytes); err == nil || err.Error() != want {
		t.Errorf("Load(big) = %v, want %q", err, want)
	}
}

// TestDefaultsDocumented keeps the README's configuration reference in step
// with the constants: each default must appear on a line that also names
// its key.
func TestDefaultsDocumented(t *testing.T) {
	checkDocumentedValues(t)
	readme, err := os.ReadFile("../README.md")
	if errors.Is(err, fs.ErrNotExist) {
		t.Skip("README.md does not exist yet")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range undocumentedDefaults(string(readme)) {
		t.Errorf("README.md does not document the default %s (no line names both)", m)
	}
}

func TestUndocumentedDefaults(t *testing.T) {
	complete := []string{
		"```yaml\n" +
			"admin: \"127.0.0.1:9046\"   # metrics\n" +
			"timeouts: { hello: 5s, dial: 5s, idle: 1h }\n" +
			"shutdown_grace: 30s\n" +
			"    max_body: 256MiB\n```\n",
		"| key | default |\n|---|---|\n" +
			"| `timeouts.hello` | `5s` |\n| `timeouts.dial` | `5s` |\n| `timeouts.idle` | `1h` |\n" +
			"| `shutdown_grace` | `30s` |\n| `max_body` | `256MiB` |\n" +
			"| `admin` | `127.0.0.1:9046` (set \"\" to disable) |\n",
		"The idle timeout defaults to 1h. hello defaults to 5s and dial to 5s; " +
			"shutdown_grace defaults to 30s.\nmax_body (terminate only) defaults to 256MiB.\n" +
			"The admin listener is on 127.0.0.1:9046.\n",
	}
	for _, readme := range complete {
		if m := undocumentedDefaults(readme); len(m) != 0 {
			t.Errorf("complete reference reported as missing %q:\n%s", m, readme)
		}
	}
	m := undocumentedDefaults("timeouts: { hello: 15s, dial: 5s }\nidle: 1h30m\n")
	want := []string{"hello: 5s", "idle: 1h", "shutdown_grace: 30s", "max_body: 256MiB", "admin: 127.0.0.1:9046"}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("missing = %q, want %q", m, want)
	}
}

// documentedDefaults are the defaults as the README spells them.
var documentedDefaults = []struct{ key, doc string }{
	{"hello", "5s"},
	{"dial", "5s"},
	{"idle", "1h"},
	{"shutdown_grace", "30s"},
	{"max_body", "256MiB"},
	{"admin", "127.0.0.1:9046"},
}

// checkDocumentedValues checks that the README's spellings mean the
// constants' values, so that changing a constant fails here until the
// README (and documentedDefaults) follow.
func checkDocumentedValues(t *testing.T) {
	t.Helper()
	want := map[string]any{
		"hello": DefaultHelloTimeout, "dial": DefaultDialTimeout, "idle": DefaultIdleTimeout,
		"shutdown_grace": DefaultShutdownGrace, "max_body": int64(DefaultMaxBody), "admin": DefaultAdminListen,
	}
	for _, d := range documentedDefaults {
		var got any = d.doc
		switch d.key {
		case "max_body":
			var z Size
			if err := z.parseScalar(d.doc); err != nil {
				t.Fatal(err)
			}
			got = int64(z)
		case "admin":
		default:
			var v Duration
			if err := v.parseScalar(d.doc); err != nil {
				t.Fatal(err)
			}
			got = v.D()
		}
		if got != want[d.key] {
			t.Errorf("%s: README spelling %q means %v, but the default is %v", d.key, d.doc, got, want[d.key])
		}
	}
}

// undocumentedDefaults returns "key: value" for each default that no line
// of readme mentions together with its key.
func undocumentedDefaults(readme string) []string {
	lines := strings.Split(readme, "\n")
	var missing []string
	for _, d := range documentedDefaults {
		found := false
		for _, l := range lines {
			if documents(l, d.key, d.doc) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, d.key+": "+d.doc)
		}
	}
	return missing
}

// documents reports whether line gives value for key: the first value
// after some mention of key (a token starting with a digit, as in
// "hello: 5s", "| `timeouts.hello` | `5s` |" or "hello defaults to 5s")
// must be value, so that "hello: 15s, dial: 5s" does not document hello.
func documents(line, key, value string) bool {
	for i := 0; ; i++ {
		j := strings.Index(line[i:], key)
		if j < 0 {
			return false
		}
		i += j
		end := i + len(key)
		if end < len(line) && (line[end] == '_' || unicode.IsLetter(rune(line[end]))) {
			continue // a longer key, such as idle_timeout
		}
		rest := line[end:]
		k := strings.IndexFunc(rest, unicode.IsDigit)
		if k < 0 {
			continue
		}
		tok := rest[k:]
		if e := strings.IndexAny(tok, " \t\"'`,|)}]#;"); e >= 0 {
			tok = tok[:e]
		}
		if strings.TrimRight(tok, ".") == value {
			return true
		}
	}
}

// checkConfig compares whole configs, naming the first differing route
// so that a failure is readable without a diff library.
func checkConfig(t *testing.T, got, want *Config) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	if len(got.Routes) == len(want.Routes) {
		for i := range got.Routes {
			if !reflect.DeepEqual(got.Routes[i], want.Routes[i]) {
				t.Errorf("routes[%d]:\n got %+v\nwant %+v", i, got.Routes[i], want.Routes[i])
			}
		}
	}
	g, w := *got, *want
	g.Routes, w.Routes = nil, nil
	if !reflect.DeepEqual(g, w) {
		t.Errorf("config:\n got %+v\nwant %+v", g, w)
	}
	if len(got.Routes) != len(want.Routes) {
		t.Errorf("got %d routes, want %d", len(got.Routes), len(want.Routes))
	}
}

var defaultLimits = Limits{
	MaxConns: DefaultMaxConns, MaxHandshakes: DefaultMaxHandshakes, MaxConnsPerSource: DefaultMaxConnsPerSource,
	SourceRate: DefaultSourceRate, SourceBurst: DefaultSourceBurst,
}
