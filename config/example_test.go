package config_test

import (
	"errors"
	"fmt"

	"github.com/relay46/relay46/config"
)

func ExampleParse() {
	cfg, err := config.Parse("relay46.yaml", []byte(`
routes:
  - name: misskey
    hosts: ["Misskey.Example.COM", "*.misskey.example.com", "例え.jp"]
    upstream: "[2001:db8::2:64]:443"
    proxy_protocol: v2
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	r := cfg.Routes[0]
	fmt.Println(r.Name, r.Mode, r.Hosts)
	fmt.Println("443 →", r.Upstream, "| 80 →", r.HTTPUpstream, "| PROXY", r.ProxyProtocol)
	fmt.Println("idle timeout:", r.Timeouts.Idle, "| unknown SNI:", cfg.UnknownSNI)

	// A bad file reports every problem with its line and key.
	_, err = config.Parse("relay46.yaml", []byte(`
routes:
  - name: misskey
    hosts: ["misskey.example.com"]
    upstream: "192.0.2.10:443"
    proxy_protocol: v3
`))
	fmt.Println(err)
	// Output:
	// misskey passthrough [misskey.example.com *.misskey.example.com xn--r8jz45g.jp]
	// 443 → [2001:db8::2:64]:443 | 80 → [2001:db8::2:64]:80 | PROXY v2
	// idle timeout: 1h0m0s | unknown SNI: reject
	// relay46.yaml:5: routes[0].upstream: "192.0.2.10" is an IPv4 address: set allow_ipv4: true on the route to relay to IPv4
	// relay46.yaml:6: routes[0].proxy_protocol: "v3" is not off, v1 or v2
}

// Each problem is an *Error, for tools that point at the line themselves.
func ExampleError() {
	_, err := config.Parse("relay46.yaml", []byte("routes:\n  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://[2001:db8::2:64]:8080/blog\"\n"))
	var e *config.Error
	if errors.As(err, &e) {
		fmt.Printf("line %d, key %s: %s\n", e.Line, e.Key, e.Msg)
	}
	// Output:
	// line 5, key routes[0].upstream: "http://[2001:db8::2:64]:8080/blog": give only scheme, host and port; paths are passed through unchanged
}

func ExampleNormalizeHost() {
	for _, h := range []string{"Misskey.Example.COM.", "例え.jp", "*.Example.org", "a.*.example.org"} {
		n, err := config.NormalizeHost(h)
		fmt.Printf("%q → %q %v\n", h, n, err)
	}
	// Output:
	// "Misskey.Example.COM." → "misskey.example.com" <nil>
	// "例え.jp" → "xn--r8jz45g.jp" <nil>
	// "*.Example.org" → "*.example.org" <nil>
	// "a.*.example.org" → "" "a.*.example.org": a wildcard must be the whole first label, as in *.example.com
}
