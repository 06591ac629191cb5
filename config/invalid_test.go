package config

import (
	"errors"
	"strings"
	"testing"
)

// TestInvalidConfigs is the contract for error messages: each bad document
// must produce exactly these lines, in this order. A message that changes
// here changes what users read in `relay46 check`.
func TestInvalidConfigs(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // one line per problem, "file:line: key: message"
	}{
		// Limits, access logs and ACME challenges.
		{
			name: "negative and inconsistent limits",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    max_conns: -1
limits:
  max_conns: 10
  max_handshakes: 20
  source_rate: -5
`,
			want: []string{
				`relay46.yaml:6: routes[0].max_conns: must not be negative (0 means no per-route limit)`,
				`relay46.yaml:9: limits.max_handshakes: 20 is more than limits.max_conns (10)`,
				`relay46.yaml:10: limits.source_rate: must not be negative (0 turns the limit off)`,
			},
		},
		{
			name: "source_rate without burst",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
limits: {source_rate: 10, source_burst: 0}
`,
			want: []string{`relay46.yaml:6: limits.source_burst: must be at least 1 while source_rate is set`},
		},
		{
			name: "access_log not a bool",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    access_log: sometimes
`,
			want: []string{`relay46.yaml:6: routes[0].access_log: expected true or false, got "sometimes"`},
		},
		{
			name: "unknown ACME challenge",
			yaml: `
acme: {challenges: [dns-01]}
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: acme.challenges[0]: "dns-01" is not http-01 or tls-alpn-01`},
		},
		{
			name: "wildcard terminated host without a certificate file",
			yaml: `
routes:
  - name: a
    hosts: ["*.a.example"]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
`,
			want: []string{`relay46.yaml:4: routes[0].hosts[0]: "*.a.example": ACME over HTTP-01 or TLS-ALPN-01 cannot issue wildcard certificates; give cert_file and key_file for it`},
		},
		// Keys the schema does not know.
		{
			name: "unknown key at top level",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
unknown_host: reject
`,
			want: []string{`relay46.yaml:6: unknown_host: unknown key "unknown_host" (keys allowed here: listen, admin, routes, unknown_sni, timeouts, shutdown_grace, acme, log, resolvers, dns_ttl, updates, limits, debug_pprof)`},
		},
		{
			name: "unknown key in a route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstrem: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstrem: unknown key "upstrem" (did you mean "upstream"?)`},
		},
		{
			name: "unknown key in timeouts",
			yaml: `
timeouts:
  hello: 5s
  read: 10s
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:4: timeouts.read: unknown key "read" (keys allowed here: hello, dial, idle)`},
		},
		{
			name: "unknown key in a route's timeouts",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    timeouts: {idle: 1h, write: 1s}
`,
			want: []string{`relay46.yaml:6: routes[0].timeouts.write: unknown key "write" (keys allowed here: hello, dial, idle)`},
		},

		// Wrong types.
		{
			name: "string for bool",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "192.0.2.1:443"
    allow_ipv4: "if needed"
`,
			want: []string{`relay46.yaml:6: routes[0].allow_ipv4: expected true or false, got "if needed"`},
		},
		{
			name: "list for string",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: ["[2001:db8::1]:443", "[2001:db8::2]:443"]
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: expected a single value, got a list`},
		},
		{
			name: "mapping for list",
			yaml: `
routes:
  - name: a
    hosts:
      main: a.example
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].hosts: expected a list, got a mapping`},
		},
		{
			name: "scalar for mapping",
			yaml: `
timeouts: 5s
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: timeouts: expected a mapping of keys, got "5s"`},
		},
		{
			name: "mapping for a route list",
			yaml: `
routes:
  name: a
  hosts: [a.example]
  upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: routes: expected a list, got a mapping`},
		},
		{
			name: "list for a duration",
			yaml: `
timeouts: {idle: [1h]}
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: timeouts.idle: expected a single value, got a list`},
		},
		{
			// The error names the line where the alias is used, not the anchor.
			name: "alias of the wrong kind",
			yaml: `
routes:
  - &first
    name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
  - name: b
    hosts: *first
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:8: routes[1].hosts: expected a list, got a mapping`},
		},
		{
			name: "duplicate YAML key",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    upstream: "[2001:db8::2]:443"
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: duplicate key (first set on line 5)`},
		},
		{
			name: "duplicate top-level key",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
routes:
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:6: routes: duplicate key (first set on line 2)`},
		},

		// Hosts.
		{
			name: "duplicate host across routes, after normalization",
			yaml: `
routes:
  - name: a
    hosts: [a.example, shared.example]
    upstream: "[2001:db8::1]:443"
  - name: b
    hosts:
      - b.example
      - Shared.Example.
    upstream: "[2001:db8::2]:443"
`,
			want: []string{`relay46.yaml:9: routes[1].hosts[1]: host "shared.example" is already routed by routes[0].hosts[1] (line 4)`},
		},
		{
			name: "duplicate host within a route",
			yaml: `
routes:
  - name: a
    hosts: [a.example, A.EXAMPLE]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:4: routes[0].hosts[1]: host "a.example" is listed twice in this route`},
		},
		{
			name: "wildcard in the middle",
			yaml: `
routes:
  - name: a
    hosts: ["a.*.example"]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:4: routes[0].hosts[0]: "a.*.example": a wildcard must be the whole first label, as in *.example.com`},
		},
		{
			name: "wildcard over a top-level domain",
			yaml: `
routes:
  - name: a
    hosts: ["*.com"]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:4: routes[0].hosts[0]: "*.com": a wildcard needs at least two labels after it`},
		},
		{
			name: "IP literals as hosts",
			yaml: `
routes:
  - name: a
    hosts:
      - 192.0.2.1
      - "2001:db8::1"
      - "[2001:db8::1]"
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:5: routes[0].hosts[0]: "192.0.2.1" is an IP address: clients send names in SNI, list the name`,
				`relay46.yaml:6: routes[0].hosts[1]: "2001:db8::1" is an IP address: clients send names in SNI, list the name`,
				`relay46.yaml:7: routes[0].hosts[2]: "[2001:db8::1]" is an IP address: clients send names in SNI, list the name`,
			},
		},
		{
			name: "malformed host names",
			yaml: `
routes:
  - name: a
    hosts:
      - ""
      - "a..example"
      - "-a.example"
      - "my host.example"
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:5: routes[0].hosts[0]: empty host name ""`,
				`relay46.yaml:6: routes[0].hosts[1]: "a..example" is not a valid host name: labels between dots must have 1 to 63 characters`,
				`relay46.yaml:7: routes[0].hosts[2]: "-a.example" is not a valid host name: idna: invalid label "-a"`,
				`relay46.yaml:8: routes[0].hosts[3]: "my host.example" is not a valid host name: idna: disallowed rune U+0020`,
			},
		},

		// Routes missing what they need, or with bad values.
		{
			name: "route without a name",
			yaml: `
routes:
  - hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: routes[0].name: every route needs a name (used in logs and metrics)`},
		},
		{
			name: "route without hosts",
			yaml: `
routes:
  - name: a
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: routes[0].hosts: a route needs at least one host`},
		},
		{
			name: "route with an empty host list",
			yaml: `
routes:
  - name: a
    hosts: []
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: routes[0].hosts: a route needs at least one host`},
		},
		{
			name: "route without an upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
`,
			want: []string{`relay46.yaml:3: routes[0].upstream: a route needs an upstream, like "[2001:db8::2:64]:443" or "home.example.net:443"`},
		},
		{
			name: "empty route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
  - {}
`,
			want: []string{
				`relay46.yaml:6: routes[1].name: every route needs a name (used in logs and metrics)`,
				`relay46.yaml:6: routes[1].hosts: a route needs at least one host`,
				`relay46.yaml:6: routes[1].upstream: a route needs an upstream, like "[2001:db8::2:64]:443" or "home.example.net:443"`,
			},
		},
		{
			name: "bad route name",
			yaml: `
routes:
  - name: My Blog
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: routes[0].name: "My Blog": use lower-case letters, digits, '-', '_' and '.', at most 63`},
		},
		{
			name: "route name used twice",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
  - name: a
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:6: routes[1].name: route name "a" is used twice`},
		},
		{
			name: "no routes",
			yaml: `
listen: {http: ":80"}
`,
			want: []string{`relay46.yaml: routes: no routes: add at least one (see the README's configuration reference)`},
		},
		{
			name: "empty route list",
			yaml: `
routes: []
`,
			want: []string{`relay46.yaml:2: routes: no routes: add at least one (see the README's configuration reference)`},
		},
		{
			name: "bad mode",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: tcp
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].mode: "tcp" is not passthrough or terminate`},
		},
		{
			name: "bad proxy_protocol",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    proxy_protocol: "2"
`,
			want: []string{`relay46.yaml:6: routes[0].proxy_protocol: "2" is not off, v1 or v2`},
		},

		// Passthrough upstreams.
		{
			name: "IPv4 upstream without allow_ipv4",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "192.0.2.10:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "192.0.2.10" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`},
		},
		{
			name: "IPv4-mapped IPv6 upstream without allow_ipv4",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[::ffff:192.0.2.10]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "::ffff:192.0.2.10" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`},
		},
		{
			name: "upstream without a port",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: home.example.net
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "home.example.net" is not host:port (an IPv6 literal needs brackets: "[2001:db8::1]:443")`},
		},
		{
			name: "upstream with bad ports",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "home.example.net:https"
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:0"
  - name: c
    hosts: [c.example]
    upstream: "[2001:db8::1]:65536"
`,
			want: []string{
				`relay46.yaml:5: routes[0].upstream: port "https" is not a number from 1 to 65535`,
				`relay46.yaml:8: routes[1].upstream: port "0" is not a number from 1 to 65535`,
				`relay46.yaml:11: routes[2].upstream: port "65536" is not a number from 1 to 65535`,
			},
		},
		{
			name: "unbracketed IPv6 upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "2001:db8::2:64:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "2001:db8::2:64:443" is not host:port (an IPv6 literal needs brackets: "[2001:db8::1]:443")`},
		},
		{
			name: "zoned IPv6 upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[fe80::1%eth0]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "fe80::1%eth0": zoned (link-local) addresses are not allowed as upstreams`},
		},
		{
			name: "unspecified address as upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[::]:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "::" cannot be an upstream`},
		},
		{
			name: "wildcard as upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "*.example.net:443"
`,
			want: []string{`relay46.yaml:5: routes[0].upstream: "*.example.net" is neither an IP address nor a hostname`},
		},
		{
			name: "bad http_upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    http_upstream: "[2001:db8::1]"
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
    http_upstream: "192.0.2.1:80"
`,
			want: []string{
				`relay46.yaml:6: routes[0].http_upstream: "[2001:db8::1]" is not host:port (an IPv6 literal needs brackets: "[2001:db8::1]:443")`,
				`relay46.yaml:10: routes[1].http_upstream: "192.0.2.1" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`,
			},
		},

		// Top-level settings.
		{
			name: "unknown_sni names a missing route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
unknown_sni: fallback
`,
			want: []string{`relay46.yaml:6: unknown_sni: "fallback" is neither "reject" nor the name of a route`},
		},
		{
			name: "both listeners disabled",
			yaml: `
listen:
  http: ""
  https: ""
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: listen: both listeners are disabled: nothing would be relayed`},
		},
		{
			name: "bad listen addresses",
			yaml: `
listen:
  http: "80"
  https: "relay.example.net:443"
admin: "127.0.0.1:90460"
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:3: listen.http: "80" is not host:port (write ":443" for all addresses, "[::]:443" or "0.0.0.0:443")`,
				`relay46.yaml:4: listen.https: listen on an IP address, not a name: "relay.example.net"`,
				`relay46.yaml:5: admin: port "90460" is not a number from 0 to 65535`,
			},
		},
		{
			name: "both listeners on one address",
			yaml: `
listen: {http: "[::]:8443", https: "[::]:8443"}
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: listen.https: same address as listen.http ([::]:8443)`},
		},

		// Durations and sizes.
		{
			name: "zero durations",
			yaml: `
timeouts: {hello: 0s}
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    timeouts:
      dial: 0
`,
			want: []string{
				`relay46.yaml:2: timeouts.hello: must be greater than zero`,
				`relay46.yaml:8: routes[0].timeouts.dial: must be greater than zero`,
			},
		},
		{
			name: "negative duration",
			yaml: `
timeouts:
  idle: -1h
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: timeouts.idle: duration "-1h" must not be negative`},
		},
		{
			name: "garbage durations",
			yaml: `
timeouts:
  hello: 5
  dial: soon
  idle: 1d
shutdown_grace: half a minute
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:3: timeouts.hello: invalid duration "5" (write it like 5s, 250ms or 1h)`,
				`relay46.yaml:4: timeouts.dial: invalid duration "soon" (write it like 5s, 250ms or 1h)`,
				`relay46.yaml:5: timeouts.idle: invalid duration "1d" (write it like 5s, 250ms or 1h)`,
				`relay46.yaml:6: shutdown_grace: invalid duration "half a minute" (write it like 5s, 250ms or 1h)`,
			},
		},
		{
			name: "bad sizes for max_body",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    max_body: 256 megabytes
  - name: b
    hosts: [b.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    max_body: -1MiB
  - name: c
    hosts: [c.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    max_body: 1.5GiB
`,
			want: []string{
				`relay46.yaml:7: routes[0].max_body: invalid size "256 megabytes" (write it like 512KiB, 250MB or 1GiB)`,
				`relay46.yaml:12: routes[1].max_body: invalid size "-1MiB" (write it like 512KiB, 250MB or 1GiB)`,
				`relay46.yaml:17: routes[2].max_body: invalid size "1.5GiB" (write it like 512KiB, 250MB or 1GiB)`,
			},
		},

		// Keys that belong to the other mode.
		{
			name: "terminate-only keys on a passthrough route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
    max_body: 1GiB
    trusted_proxies: ["2001:db8::/32"]
    redirect_http: false
    cert_file: /etc/relay46/a.pem
    key_file: /etc/relay46/a.key
    upstream_ca: /etc/relay46/ca.pem
    upstream_server_name: home.example.net
`,
			want: []string{
				`relay46.yaml:6: routes[0].max_body: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:7: routes[0].trusted_proxies: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:8: routes[0].redirect_http: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:9: routes[0].cert_file: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:10: routes[0].key_file: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:11: routes[0].upstream_ca: only applies to mode: terminate (this route passes TLS through)`,
				`relay46.yaml:12: routes[0].upstream_server_name: only applies to mode: terminate (this route passes TLS through)`,
			},
		},
		{
			name: "passthrough-only keys on a terminate route",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    http_upstream: "[2001:db8::1]:80"
    proxy_protocol: v2
`,
			want: []string{
				`relay46.yaml:7: routes[0].http_upstream: does not apply to mode: terminate (:80 is answered by the relay: ACME and redirects, or proxied to upstream with redirect_http: false)`,
				`relay46.yaml:8: routes[0].proxy_protocol: only applies to mode: passthrough (terminated routes send X-Forwarded-For)`,
			},
		},

		// Terminate upstreams.
		{
			name: "terminate upstream that is host:port",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "[2001:db8::1]:8080"
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: "[2001:db8::1]:8080" is not an http:// or https:// URL (mode: terminate proxies HTTP)`},
		},
		{
			name: "terminate upstream with another scheme",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "ws://[2001:db8::1]:8080"
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: "ws://[2001:db8::1]:8080" is not an http:// or https:// URL (mode: terminate proxies HTTP)`},
		},
		{
			name: "terminate upstream with a path, query or fragment",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080/app"
  - name: b
    hosts: [b.example]
    mode: terminate
    upstream: "https://home.example.net?x=1"
  - name: c
    hosts: [c.example]
    mode: terminate
    upstream: "https://home.example.net#top"
`,
			want: []string{
				`relay46.yaml:6: routes[0].upstream: "http://[2001:db8::1]:8080/app": give only scheme, host and port; paths are passed through unchanged`,
				`relay46.yaml:10: routes[1].upstream: "https://home.example.net?x=1": give only scheme, host and port; paths are passed through unchanged`,
				`relay46.yaml:14: routes[2].upstream: "https://home.example.net#top": give only scheme, host and port; paths are passed through unchanged`,
			},
		},
		{
			name: "terminate upstream with a bad port",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:80800"
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: port "80800" is not a number from 1 to 65535`},
		},
		{
			name: "terminate upstream on IPv4 without allow_ipv4",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://192.0.2.10:8080"
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: "192.0.2.10" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`},
		},
		{
			name: "terminate route without an upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
`,
			want: []string{`relay46.yaml:3: routes[0].upstream: a terminated route needs an upstream URL, like "http://[2001:db8::2:64]:8080"`},
		},
		{
			name: "upstream TLS settings on a plain http upstream",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    upstream_server_name: home.example.net
`,
			want: []string{`relay46.yaml:6: routes[0].upstream: upstream_ca and upstream_server_name need an https:// upstream`},
		},
		{
			name: "cert_file without key_file",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    cert_file: /etc/relay46/a.pem
`,
			want: []string{`relay46.yaml:7: routes[0].cert_file: needs key_file too: cert_file and key_file go together`},
		},
		{
			name: "key_file without cert_file",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    key_file: /etc/relay46/a.key
`,
			want: []string{`relay46.yaml:7: routes[0].key_file: needs cert_file too: cert_file and key_file go together`},
		},
		{
			name: "bad trusted_proxies entries",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    mode: terminate
    upstream: "http://[2001:db8::1]:8080"
    trusted_proxies:
      - 10.0.0.0/8
      - 10.0.0.0/33
      - cloudflare
`,
			want: []string{
				`relay46.yaml:9: routes[0].trusted_proxies[1]: "10.0.0.0/33" is not an address or CIDR prefix`,
				`relay46.yaml:10: routes[0].trusted_proxies[2]: "cloudflare" is not an address or CIDR prefix`,
			},
		},

		// ACME and logging.
		{
			name: "bad acme.ca",
			yaml: `
acme:
  ca: http://acme.internal/directory
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: acme.ca: "http://acme.internal/directory" is not letsencrypt, letsencrypt-staging or an https:// directory URL`},
		},
		{
			name: "unknown acme.ca name",
			yaml: `
acme: {ca: zerossl, email: admin.example.com}
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:2: acme.ca: "zerossl" is not letsencrypt, letsencrypt-staging or an https:// directory URL`,
				`relay46.yaml:2: acme.email: "admin.example.com" is not an email address`,
			},
		},
		{
			name: "bad log settings",
			yaml: `
log:
  format: text
  level: verbose
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
`,
			want: []string{
				`relay46.yaml:3: log.format: "text" is not json or console`,
				`relay46.yaml:4: log.level: "verbose" is not debug, info, warn or error`,
			},
		},

		// Files that are not a config at all.
		{
			name: "empty file",
			yaml: ``,
			want: []string{`relay46.yaml: the file is empty: it needs at least one route`},
		},
		{
			name: "only comments",
			yaml: "# relay46\n\n# TODO\n",
			want: []string{`relay46.yaml: the file is empty: it needs at least one route`},
		},
		{
			// The parser names the line where the unclosed mapping began.
			name: "not YAML",
			yaml: "routes: [\n  {name: a\n",
			want: []string{`relay46.yaml:2: not valid YAML: did not find expected ',' or '}'`},
		},
		{
			name: "bad indentation",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
   upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:3: not valid YAML: did not find expected '-' indicator`},
		},
		{
			name: "unterminated quote",
			yaml: `
routes:
  - name: a
    hosts: ["a.example]
`,
			want: []string{`relay46.yaml:4: not valid YAML: found unexpected end of stream`},
		},
		{
			name: "mapping value on one line",
			yaml: "\nroutes: name: a\n",
			want: []string{`relay46.yaml:2: not valid YAML: mapping values are not allowed in this context`},
		},
		{
			name: "tab indentation",
			yaml: "routes:\n\t- name: a\n",
			want: []string{`relay46.yaml:2: not valid YAML: found character that cannot start any token`},
		},
		{
			name: "a plain string",
			yaml: "relay everything to my home\n",
			want: []string{`relay46.yaml:1: expected a mapping of keys, got "relay everything to my home"`},
		},
		{
			name: "a list at the top",
			yaml: `
- name: a
  hosts: [a.example]
  upstream: "[2001:db8::1]:443"
`,
			want: []string{`relay46.yaml:2: expected a mapping of keys, got a list`},
		},
		{
			name: "two YAML documents",
			yaml: `
routes:
  - name: a
    hosts: [a.example]
    upstream: "[2001:db8::1]:443"
---
routes:
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::2]:443"
`,
			want: []string{`relay46.yaml:6: a second YAML document (after ---): relay46 reads one document; merge them`},
		},

		// Everything wrong is reported at once, in line order.
		{
			name: "several errors",
			yaml: `
listen:
  http: ""
  https: ""
routes:
  - name: misskey
    hosts: ["misskey.example.com", "192.0.2.1"]
    upstream: "192.0.2.10:443"
    proxy_protocol: v3
  - name: Blog
    hosts: ["Misskey.Example.COM"]
    mode: terminate
    upstream: "[2001:db8::2:64]:8080"
    cert_file: blog.pem
unknown_sni: fallback
`,
			want: []string{
				`relay46.yaml:2: listen: both listeners are disabled: nothing would be relayed`,
				`relay46.yaml:7: routes[0].hosts[1]: "192.0.2.1" is an IP address: clients send names in SNI, list the name`,
				`relay46.yaml:8: routes[0].upstream: "192.0.2.10" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4`,
				`relay46.yaml:9: routes[0].proxy_protocol: "v3" is not off, v1 or v2`,
				`relay46.yaml:10: routes[1].name: "Blog": use lower-case letters, digits, '-', '_' and '.', at most 63`,
				`relay46.yaml:11: routes[1].hosts[0]: host "misskey.example.com" is already routed by routes[0].hosts[0] (line 7)`,
				`relay46.yaml:13: routes[1].upstream: "[2001:db8::2:64]:8080" is not an http:// or https:// URL (mode: terminate proxies HTTP)`,
				`relay46.yaml:14: routes[1].cert_file: needs key_file too: cert_file and key_file go together`,
				`relay46.yaml:15: unknown_sni: "fallback" is neither "reject" nor the name of a route`,
			},
		},
		{
			name: "several decoding errors",
			yaml: `
routes:
  - name: a
    hosts: a.example
    upstream: "[2001:db8::1]:443"
    allow_ipv4: maybe
    timeouts: {idle: forever}
  - name: b
    hosts: [b.example]
    upstream: "[2001:db8::1]:443"
    proxy: v2
`,
			want: []string{
				`relay46.yaml:4: routes[0].hosts: expected a list, got "a.example"`,
				`relay46.yaml:6: routes[0].allow_ipv4: expected true or false, got "maybe"`,
				`relay46.yaml:7: routes[0].timeouts.idle: invalid duration "forever" (write it like 5s, 250ms or 1h)`,
				`relay46.yaml:11: routes[1].proxy: unknown key "proxy" (keys allowed here: name, hosts, mode, upstream, http_upstream, proxy_protocol, allow_ipv4, timeouts, max_body, trusted_proxies, redirect_http, cert_file, key_file, upstream_ca, upstream_server_name, access_log, max_conns, upstreams, balance, allowed_prefixes, identity_check, identity_ca, pin_sha256, health_check, ejection, update)`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The literals above start with a newline, so their first key is
			// on line 2, as the expectations say.
			cfg, err := Parse("relay46.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the config; got %d routes", len(cfg.Routes))
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tt.want, "\n      "))
			}
			checkErrorParts(t, err, len(tt.want))
		})
	}
}

// checkErrorParts checks that err is made of n *Error values, so callers
// can locate each problem with errors.As rather than parsing text.
func checkErrorParts(t *testing.T, err error, n int) {
	t.Helper()
	parts := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	}
	if len(parts) != n {
		t.Errorf("error has %d parts, want %d", len(parts), n)
	}
	for _, p := range parts {
		var e *Error
		if !errors.As(p, &e) {
			t.Errorf("error part %q (%T) is not a *Error", p, p)
			continue
		}
		if e.File != "relay46.yaml" || e.Msg == "" {
			t.Errorf("error part %+v: want File relay46.yaml and a message", e)
		}
	}
}
