package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
)

// testHash is a bcrypt hash (of "secret"), as "relay46 passwd" prints.
const testHash = "$2a$04$CxYMXcbBZyF/ZWnMnoOGMeP3aa/tyHipHddd0LJNMU34d9FNHsSL2"

// upstreamsYAML uses every key of issue 4 (upstreams that follow the home).
const upstreamsYAML = `
resolvers: ["[2001:4860:4860::8888]:53", "9.9.9.9"]
dns_ttl: {floor: 10s, ceiling: 2m}
updates:
  listen: ":8053"
  cert_file: /etc/relay46/updates.pem
  key_file: /etc/relay46/updates.key
  burst: 3
  refill: 10m
routes:
  - name: misskey
    hosts: ["*.misskey.example.com", misskey.example.com]
    proxy_protocol: v2
    balance: round_robin
    upstreams:
      - address: home.example.net:443
      - address: "[2001:db8:1::2:64]:8443"
        http_port: 8080
      - prefix_from: update
        interface_id: "::2:64"
      - address_from: update
        port: 4443
        http_port: 0
    allowed_prefixes: ["2001:db8::/32", "2001:db8:1::5"]
    identity_check: true
    identity_ca: /etc/relay46/home-ca.pem
    health_check: {interval: 5s, timeout: 1s, fall: 2, rise: 4}
    ejection: {failures: 5, duration: 1m}
    update:
      username: home
      password_hash: "` + testHash + `"
  - name: blog
    hosts: [blog.example.org]
    mode: terminate
    upstreams:
      - address: "https://home.example.net:8443"
      - prefix_from: update
        interface_id: "::3:64"
        scheme: https
    health_check: {path: /healthz, expect_status: 204}
    update: {password_hash: "` + testHash + `"}
`

func TestUpstreamKeys(t *testing.T) {
	cfg, err := Parse("relay46.yaml", []byte(upstreamsYAML))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if want := []string{"[2001:4860:4860::8888]:53", "9.9.9.9:53"}; !reflect.DeepEqual(cfg.Resolvers, want) {
		t.Errorf("resolvers = %q, want %q", cfg.Resolvers, want)
	}
	if want := (TTLBounds{10 * time.Second, 2 * time.Minute}); cfg.DNSTTL != want {
		t.Errorf("dns_ttl = %+v", cfg.DNSTTL)
	}
	if want := (Updates{Listen: ":8053", CertFile: "/etc/relay46/updates.pem", KeyFile: "/etc/relay46/updates.key", Burst: 3, Refill: 10 * time.Minute}); cfg.Updates != want {
		t.Errorf("updates = %+v", cfg.Updates)
	}
	m := cfg.Route("misskey")
	id := netip.MustParseAddr("::2:64")
	wantUps := []Upstream{
		{Address: "home.example.net:443", Host: "home.example.net", Port: 443, HTTPPort: 80},
		{Address: "[2001:db8:1::2:64]:8443", Host: "2001:db8:1::2:64", Port: 8443, HTTPPort: 8080},
		{FromUpdate: true, InterfaceID: id, Port: DefaultUpstreamPort, HTTPPort: DefaultUpstreamHTTPPort},
		{FromUpdate: true, Port: 4443},
	}
	if !reflect.DeepEqual(m.Upstreams, wantUps) {
		t.Errorf("upstreams:\n got %+v\nwant %+v", m.Upstreams, wantUps)
	}
	if m.Upstream != "home.example.net:443" || m.HTTPUpstream != "home.example.net:80" || m.HTTPOnlyUpstreams != nil {
		t.Errorf("upstream = %q, http_upstream = %q, http-only %v", m.Upstream, m.HTTPUpstream, m.HTTPOnlyUpstreams)
	}
	if m.Balance != RoundRobin {
		t.Errorf("balance = %q", m.Balance)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("2001:db8:1::5/128")}; !reflect.DeepEqual(m.AllowedPrefixes, want) {
		t.Errorf("allowed_prefixes = %v", m.AllowedPrefixes)
	}
	// The identity is checked against the first host without a wildcard.
	if want := (&Identity{Name: "misskey.example.com", CAFile: "/etc/relay46/home-ca.pem"}); !reflect.DeepEqual(m.Identity, want) {
		t.Errorf("identity = %+v", m.Identity)
	}
	if want := (&HealthCheck{Interval: 5 * time.Second, Timeout: time.Second, Fall: 2, Rise: 4}); !reflect.DeepEqual(m.HealthCheck, want) {
		t.Errorf("health_check = %+v", m.HealthCheck)
	}
	if want := (Ejection{Failures: 5, Duration: time.Minute}); m.Ejection != want {
		t.Errorf("ejection = %+v", m.Ejection)
	}
	if want := (&UpdateAuth{Username: "home", PasswordHash: testHash}); !reflect.DeepEqual(m.Update, want) {
		t.Errorf("update = %+v", m.Update)
	}

	b := cfg.Route("blog")
	wantUps = []Upstream{
		{Address: "https://home.example.net:8443", Scheme: "https", Host: "home.example.net", Port: 8443},
		{FromUpdate: true, InterfaceID: netip.MustParseAddr("::3:64"), Scheme: "https", Port: 443},
	}
	if !reflect.DeepEqual(b.Upstreams, wantUps) {
		t.Errorf("blog upstreams:\n got %+v\nwant %+v", b.Upstreams, wantUps)
	}
	if want := (&HealthCheck{Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout, Path: "/healthz", ExpectStatus: 204, Fall: DefaultHealthFall, Rise: DefaultHealthRise}); !reflect.DeepEqual(b.HealthCheck, want) {
		t.Errorf("blog health_check = %+v", b.HealthCheck)
	}
	// The user name defaults to the route's name.
	if b.Update == nil || b.Update.Username != "blog" || b.Balance != Priority || b.Identity != nil {
		t.Errorf("blog = %+v", b)
	}
}

func TestUpstreamDefaults(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "health_check: {} turns checks on with the defaults",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443", health_check: {}}
`,
			check: func(t *testing.T, c *Config) {
				want := &HealthCheck{Interval: DefaultHealthInterval, Timeout: DefaultHealthTimeout, Fall: DefaultHealthFall, Rise: DefaultHealthRise}
				if !reflect.DeepEqual(c.Routes[0].HealthCheck, want) {
					t.Errorf("health_check = %+v", c.Routes[0].HealthCheck)
				}
			},
		},
		{
			name: "without health_check there are no active checks",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443"}
`,
			check: func(t *testing.T, c *Config) {
				if r := c.Routes[0]; r.HealthCheck != nil || r.Identity != nil || r.Update != nil || r.AllowedPrefixes != nil {
					t.Errorf("route = %+v", r)
				}
			},
		},
		{
			name: "pin_sha256 alone turns the identity check on",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "home.example.net:443"
    pin_sha256: ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]
`,
			check: func(t *testing.T, c *Config) {
				want := &Identity{Name: "a.example", Pins: []string{"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="}}
				if !reflect.DeepEqual(c.Routes[0].Identity, want) {
					t.Errorf("identity = %+v", c.Routes[0].Identity)
				}
			},
		},
		{
			name: "http_upstream on the upstream's host is its port 80",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstream: "Home.Example.NET:443", http_upstream: "home.example.net:8080"}
  - {name: b, hosts: [b.example], upstream: "[2001:db8::1]:443", http_upstream: "[2001:db8::2]:80"}
  - {name: c, hosts: [c.example], upstream: "[2001:db8::1]:443", http_upstream: ""}
`,
			check: func(t *testing.T, c *Config) {
				if u := c.Routes[0].Upstreams; len(u) != 1 || u[0].HTTPPort != 8080 || c.Routes[0].HTTPOnlyUpstreams != nil {
					t.Errorf("a: %+v", c.Routes[0])
				}
				want := []Upstream{{Address: "[2001:db8::2]:80", Host: "2001:db8::2", Port: 80}}
				if b := c.Routes[1]; b.Upstreams[0].HTTPPort != 0 || !reflect.DeepEqual(b.HTTPOnlyUpstreams, want) {
					t.Errorf("b: another host takes :80 alone: %+v", b)
				}
				if r := c.Routes[2]; r.Upstreams[0].HTTPPort != 0 || r.HTTPOnlyUpstreams != nil {
					t.Errorf("c: no :80 at all: %+v", r)
				}
			},
		},
		{
			name: "a terminated route whose first upstream is pushed still has a URL in Upstream",
			yaml: `
updates: {listen: ":8053"}
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstreams: [{address_from: update, port: 8080}]
    update: {password_hash: "` + testHash + `"}
`,
			check: func(t *testing.T, c *Config) {
				r := c.Routes[0]
				if r.Upstream != "http://pushed-address.invalid:8080" || r.Upstreams[0].String() != "http://[pushed address]:8080" {
					t.Errorf("upstream = %q, %q", r.Upstream, r.Upstreams[0].String())
				}
			},
		},
		{
			name: "IPv4 with allow_ipv4",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    allow_ipv4: true
    upstreams: [{address: "192.0.2.1:443"}, {address: "[2001:db8::1]:443"}]
    allowed_prefixes: ["192.0.2.0/24", "2001:db8::/32"]
`,
			check: func(t *testing.T, c *Config) {
				if r := c.Routes[0]; len(r.Upstreams) != 2 || r.Upstream != "192.0.2.1:443" || r.HTTPUpstream != "192.0.2.1:80" {
					t.Errorf("route = %+v", r)
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

func TestUpstreamString(t *testing.T) {
	for _, tc := range []struct {
		u    Upstream
		want string
	}{
		{Upstream{Address: "home.example.net:443", Host: "home.example.net", Port: 443}, "home.example.net:443"},
		{Upstream{FromUpdate: true, Port: 443}, "[pushed address]:443"},
		{Upstream{FromUpdate: true, InterfaceID: netip.MustParseAddr("::2:64"), Port: 443}, "[pushed /64 + ::2:64]:443"},
		{Upstream{FromUpdate: true, Scheme: "https", Port: 8443}, "https://[pushed address]:8443"},
	} {
		if got := tc.u.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// TestInvalidUpstreamKeys is the error contract of the upstream keys, as
// TestInvalidConfigs is for the rest.
func TestInvalidUpstreamKeys(t *testing.T) {
	const update = `update: {password_hash: "` + testHash + `"}`
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "upstream and upstreams",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    upstreams: [{address: "[2001:db8::2]:443"}]
`,
			want: []string{`relay46.yaml:6: routes[0].upstreams: set upstream (one) or upstreams (a list), not both`},
		},
		{
			name: "empty upstreams",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstreams: []}
`,
			want: []string{`relay46.yaml:3: routes[0].upstreams: an empty list: give at least one upstream`},
		},
		{
			name: "an entry with no source, or two",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstreams:
      - {port: 443}
      - {address: "[2001:db8::1]:443", address_from: update}
`,
			want: []string{
				`relay46.yaml:6: routes[0].upstreams[0]: give exactly one of address, address_from: update and prefix_from: update`,
				`relay46.yaml:7: routes[0].upstreams[1]: give exactly one of address, address_from: update and prefix_from: update`,
			},
		},
		{
			name: "bad addresses in the list",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstreams:
      - address: "192.0.2.1:443"
      - address: home.example.net
      - address: "[2001:db8::1]:443"
        port: 443
`,
			want: []string{
				`relay46.yaml:6: routes[0].upstreams[0].address: "192.0.2.1" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`,
				`relay46.yaml:7: routes[0].upstreams[1].address: "home.example.net" is not host:port (an IPv6 literal needs brackets: "[2001:db8::1]:443")`,
				`relay46.yaml:9: routes[0].upstreams[2].port: only applies with address_from or prefix_from (address says it all)`,
			},
		},
		{
			name: "pushed upstreams: source, interface_id, ports, scheme",
			yaml: `
updates: {listen: ":8053"}
routes:
  - name: a
    hosts: [a.example]
    upstreams:
      - address_from: dns
      - prefix_from: update
      - address_from: update
        interface_id: "::1"
      - prefix_from: update
        interface_id: "2001:db8::2:64"
      - prefix_from: update
        interface_id: "::"
      - address_from: update
        port: 0
        http_port: 70000
      - address_from: update
        scheme: https
    ` + update + `
`,
			want: []string{
				`relay46.yaml:7: routes[0].upstreams[0].address_from: "dns" is not update (the only source of pushed addresses)`,
				`relay46.yaml:8: routes[0].upstreams[1].interface_id: prefix_from needs interface_id, the fixed low 64 bits of the home's address, like "::2:64"`,
				`relay46.yaml:10: routes[0].upstreams[2].interface_id: only applies with prefix_from: update`,
				`relay46.yaml:12: routes[0].upstreams[3].interface_id: "2001:db8::2:64" is not an interface identifier: an IPv6 address within the low 64 bits, like "::2:64"`,
				`relay46.yaml:14: routes[0].upstreams[4].interface_id: "::" is not an interface identifier: an IPv6 address within the low 64 bits, like "::2:64"`,
				`relay46.yaml:16: routes[0].upstreams[5].port: 0 is not a number from 1 to 65535`,
				`relay46.yaml:17: routes[0].upstreams[5].http_port: 70000 is not a port from 1 to 65535 (or 0: no :80 traffic to this upstream)`,
				`relay46.yaml:19: routes[0].upstreams[6].scheme: only applies to mode: terminate (passthrough relays TLS as it is)`,
			},
		},
		{
			name: "terminated upstream lists",
			yaml: `
updates: {listen: ":8053"}
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstreams:
      - address: "http://[2001:db8::1]:8080"
      - address: "https://[2001:db8::2]:8443"
      - address: "[2001:db8::3]:8080"
      - prefix_from: update
        interface_id: "::2:64"
        scheme: ftp
        http_port: 80
    ` + update + `
`,
			want: []string{
				`relay46.yaml:9: routes[0].upstreams[1]: scheme https differs from the first upstream's (http): a route speaks one protocol to its upstreams`,
				`relay46.yaml:10: routes[0].upstreams[2].address: "[2001:db8::3]:8080" is not an http:// or https:// URL (mode: terminate proxies HTTP)`,
				`relay46.yaml:13: routes[0].upstreams[3].scheme: "ftp" is not http or https`,
				`relay46.yaml:14: routes[0].upstreams[3].http_port: only applies to mode: passthrough (terminated routes answer :80 themselves)`,
			},
		},
		{
			name: "https at a pushed address without a name to verify",
			yaml: `
updates: {listen: ":8053"}
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstreams: [{address_from: update, scheme: https}]
    ` + update + `
`,
			want: []string{`relay46.yaml:7: routes[0].upstreams: the first upstream is https at a pushed address: set upstream_server_name, the name its certificate has`},
		},
		{
			name: "http_upstream beside upstreams",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstreams: [{address: "[2001:db8::1]:443"}]
    http_upstream: "[2001:db8::1]:80"
`,
			want: []string{`relay46.yaml:6: routes[0].http_upstream: does not apply with upstreams: set http_port on each upstream instead`},
		},
		{
			name: "bad balance",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443", balance: random}
`,
			want: []string{`relay46.yaml:3: routes[0].balance: "random" is not priority or round_robin`},
		},
		{
			name: "allowed_prefixes",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db9::1]:443"
    allowed_prefixes:
      - 2001:db8::/32
      - 2001:db8::/129
      - 192.0.2.0/24
      - home
  - name: b
    hosts: [b.example]
    upstreams: [{address: "[2001:db8::1]:443"}, {address: "[2001:db9::1]:443"}]
    http_upstream: ~
    allowed_prefixes: ["2001:db8::/32"]
`,
			want: []string{
				`relay46.yaml:5: routes[0].upstream: 2001:db9::1 is outside allowed_prefixes`,
				`relay46.yaml:8: routes[0].allowed_prefixes[1]: "2001:db8::/129" is not a CIDR prefix like "2001:db8:1200::/40"`,
				`relay46.yaml:9: routes[0].allowed_prefixes[2]: "192.0.2.0/24" is an IPv4 prefix: set allow_ipv4: true on the route to relay to IPv4`,
				`relay46.yaml:10: routes[0].allowed_prefixes[3]: "home" is not a CIDR prefix like "2001:db8:1200::/40"`,
				`relay46.yaml:13: routes[1].upstreams[1].address: 2001:db9::1 is outside allowed_prefixes`,
			},
		},
		{
			name: "identity check settings",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "https://[2001:db8::1]:8443"
    identity_check: true
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
    identity_check: false
    pin_sha256: ["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]
  - name: c
    hosts: [c.example]
    upstream: "[2001:db8::1]:443"
    pin_sha256: ["abc", "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="]
    identity_ca: ca.pem
  - name: d
    hosts: ["*.d.example"]
    upstream: "[2001:db8::1]:443"
    identity_check: true
  - name: e
    hosts: [e.example]
    upstream: "[2001:db8::1]:443"
    http_upstream: "[2001:db8::2]:80"
    identity_check: true
`,
			want: []string{
				`relay46.yaml:7: routes[0].identity_check: only applies to mode: passthrough (a terminated route verifies its https upstream on every request)`,
				`relay46.yaml:11: routes[1].identity_check: is false, but pin_sha256 or identity_ca is set: remove them or the false`,
				`relay46.yaml:16: routes[2].pin_sha256[0]: "abc" is not a base64 SHA-256 hash (44 characters ending in =)`,
				`relay46.yaml:17: routes[2].identity_ca: has no effect with pin_sha256: a pinned key is checked instead of the certificate chain`,
				`relay46.yaml:19: routes[3].hosts: identity_check needs a host without a wildcard: the origin's certificate is checked for it`,
				`relay46.yaml:25: routes[4].http_upstream: names another host than upstream, which the identity check cannot verify: leave it out (port 80 of the same host) or drop the identity check`,
			},
		},
		{
			name: "health_check settings",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    health_check:
      interval: 0s
      fall: 0
      rise: -1
      path: /health
      expect_status: 200
  - name: b
    hosts: [b.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    health_check: {interval: 1s, timeout: 2s, path: "health check", expect_status: 600}
  - name: c
    hosts: [c.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    health_check: {path: /ok, expect_status: 99}
`,
			want: []string{
				`relay46.yaml:7: routes[0].health_check.interval: must be greater than zero`,
				`relay46.yaml:8: routes[0].health_check.fall: must be at least 1`,
				`relay46.yaml:9: routes[0].health_check.rise: must be at least 1`,
				`relay46.yaml:10: routes[0].health_check.path: only applies to mode: terminate (passthrough routes check TCP, or TLS with identity_check)`,
				`relay46.yaml:16: routes[1].health_check.timeout: 2s is longer than the interval (1s)`,
				`relay46.yaml:16: routes[1].health_check.path: "health check" is not a path like /healthz`,
				`relay46.yaml:16: routes[1].health_check.expect_status: 600 is not an HTTP status from 100 to 599`,
				`relay46.yaml:21: routes[2].health_check.expect_status: 99 is not an HTTP status from 100 to 599`,
			},
		},
		{
			name: "ejection settings",
			yaml: `
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443", ejection: {failures: -1, duration: 0s}}
`,
			want: []string{
				`relay46.yaml:3: routes[0].ejection.failures: must be at least 0`,
				`relay46.yaml:3: routes[0].ejection.duration: must be greater than zero`,
			},
		},
		{
			name: "update credentials",
			yaml: `
updates: {listen: ":8053"}
routes:
  - name: a
    hosts: [a.example]
    upstreams: [{address_from: update}]
    update: {username: "a:b"}
  - name: b
    hosts: [b.example]
    upstreams: [{address_from: update}]
    update: {password_hash: "secret"}
  - name: c
    hosts: [c.example]
    upstream: "[2001:db8::1]:443"
    ` + update + `
  - name: d
    hosts: [d.example]
    upstreams: [{prefix_from: update, interface_id: "::1"}]
  - name: e
    hosts: ["*.e.example"]
    upstreams: [{address_from: update}]
    ` + update + `
`,
			want: []string{
				`relay46.yaml:7: routes[0].update.username: "a:b" cannot be a user name (not empty, no ':')`,
				`relay46.yaml:7: routes[0].update.password_hash: needed: run "relay46 passwd" and paste the hash it prints`,
				`relay46.yaml:11: routes[1].update.password_hash: not a bcrypt hash (crypto/bcrypt: hashedSecret too short to be a bcrypted password): run "relay46 passwd" and paste the hash it prints`,
				`relay46.yaml:15: routes[2].update: no upstream uses the pushed address: add one with address_from: update or prefix_from: update`,
				`relay46.yaml:18: routes[3].upstreams[0]: a pushed address needs the route's update: credentials, which the home pushes it with`,
				`relay46.yaml:22: routes[4].update: the route needs a host without a wildcard: updates name it as their hostname`,
			},
		},
		{
			name: "updates without a listener, and a listener without updates",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstreams: [{address_from: update}]
    ` + update + `
`,
			want: []string{`relay46.yaml:6: routes[0].update: needs updates.listen: the endpoint the home pushes its address to`},
		},
		{
			name: "updates settings",
			yaml: `
updates:
  listen: "8053"
  cert_file: u.pem
  burst: 0
  refill: 0s
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443"}
`,
			want: []string{
				`relay46.yaml:3: updates.listen: "8053" is not host:port (write ":443" for all addresses, "[::]:443" or "0.0.0.0:443")`,
				`relay46.yaml:3: updates.listen: no route takes pushed updates: give a route update: credentials, or remove updates`,
				`relay46.yaml:4: updates.cert_file: needs key_file too: cert_file and key_file go together`,
				`relay46.yaml:5: updates.burst: must be at least 1`,
				`relay46.yaml:6: updates.refill: must be greater than zero`,
			},
		},
		{
			name: "resolvers and TTL bounds",
			yaml: `
resolvers: [dns.google, "[2001:4860:4860::8888]:0", "0.0.0.0", "[fe80::1%eth0]:53"]
dns_ttl: {floor: 10m, ceiling: 1m}
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443"}
`,
			want: []string{
				`relay46.yaml:2: resolvers[0]: "dns.google" is not an IP address with an optional port, like "[2001:4860:4860::8888]:53" or "9.9.9.9"`,
				`relay46.yaml:2: resolvers[1]: "[2001:4860:4860::8888]:0" cannot be a resolver`,
				`relay46.yaml:2: resolvers[2]: "0.0.0.0" cannot be a resolver`,
				`relay46.yaml:2: resolvers[3]: "[fe80::1%eth0]:53" cannot be a resolver`,
				`relay46.yaml:3: dns_ttl.ceiling: 1m0s is below the floor (10m0s)`,
			},
		},
		{
			name: "a zero TTL floor",
			yaml: `
dns_ttl: {floor: 0s}
routes:
  - {name: a, hosts: [a.example], upstream: "[2001:db8::1]:443"}
`,
			want: []string{`relay46.yaml:2: dns_ttl.floor: must be greater than zero`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse("relay46.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the config; got %d routes", len(cfg.Routes))
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tt.want, "\n      "))
			}
			checkErrorParts(t, err, len(tt.want))
		})
	}
}

// checkFuzzUpstreams checks what the upstream package relies on in any
// config Parse accepts.
func checkFuzzUpstreams(t *testing.T, cfg *Config) {
	if cfg.DNSTTL.Floor <= 0 || cfg.DNSTTL.Ceiling < cfg.DNSTTL.Floor {
		t.Fatalf("dns_ttl %+v", cfg.DNSTTL)
	}
	if cfg.Updates.Burst < 1 || cfg.Updates.Refill <= 0 {
		t.Fatalf("updates %+v", cfg.Updates)
	}
	for _, r := range cfg.Routes {
		if len(r.Upstreams) == 0 {
			t.Fatalf("route %s has no upstreams", r.Name)
		}
		pushed := false
		for _, u := range append(r.Upstreams, r.HTTPOnlyUpstreams...) {
			if u.Port == 0 || u.FromUpdate == (u.Host != "") || u.InterfaceID.IsValid() && !u.FromUpdate {
				t.Fatalf("route %s: upstream %+v", r.Name, u)
			}
			if (r.Mode == Terminate) != (u.Scheme != "") || r.Mode == Terminate && u.Scheme != r.Upstreams[0].Scheme {
				t.Fatalf("route %s (%s): upstream scheme %q", r.Name, r.Mode, u.Scheme)
			}
			if ip, err := netip.ParseAddr(u.Host); err == nil && len(r.AllowedPrefixes) > 0 && !PrefixesContain(r.AllowedPrefixes, ip) {
				t.Fatalf("route %s: %s outside allowed_prefixes", r.Name, ip)
			}
			pushed = pushed || u.FromUpdate
		}
		if pushed != (r.Update != nil) || r.Update != nil && cfg.Updates.Listen == "" {
			t.Fatalf("route %s: pushed upstreams %v, update %+v, updates.listen %q", r.Name, pushed, r.Update, cfg.Updates.Listen)
		}
		if h := r.HealthCheck; h != nil && (h.Interval <= 0 || h.Timeout <= 0 || h.Timeout > h.Interval || h.Fall < 1 || h.Rise < 1) {
			t.Fatalf("route %s: health_check %+v", r.Name, h)
		}
		if id := r.Identity; id != nil && (r.Mode != Passthrough || id.Name == "" || strings.HasPrefix(id.Name, "*")) {
			t.Fatalf("route %s: identity %+v", r.Name, id)
		}
		if r.Ejection.Failures < 0 || r.Ejection.Duration <= 0 {
			t.Fatalf("route %s: ejection %+v", r.Name, r.Ejection)
		}
	}
}
