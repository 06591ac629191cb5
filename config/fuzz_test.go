package config

import (
	"errors"
	"net"
	"net/url"
	"testing"
)

// FuzzParse checks that no input makes Parse panic, that every rejection
// is a located *Error, and that whatever Parse accepts is a config the
// proxy can use without checking again. Seeds are in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(exampleYAML))
	f.Add([]byte(upstreamsYAML))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data)
		if err != nil {
			if cfg != nil {
				t.Fatal("Parse returned a config and an error")
			}
			checkFuzzError(t, err)
			return
		}
		checkFuzzConfig(t, cfg)
	})
}

func checkFuzzError(t *testing.T, err error) {
	parts := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	}
	if len(parts) == 0 {
		t.Fatalf("empty joined error %q", err)
	}
	for _, p := range parts {
		var e *Error
		if !errors.As(p, &e) {
			t.Fatalf("error %q (%T) is not a *Error", p, p)
		}
		if e.File != "fuzz.yaml" || e.Msg == "" || e.Line < 0 {
			t.Fatalf("badly located error %+v", e)
		}
	}
}

func checkFuzzConfig(t *testing.T, cfg *Config) {
	if len(cfg.Routes) == 0 {
		t.Fatal("accepted a config without routes")
	}
	if cfg.Listen.HTTP == "" && cfg.Listen.HTTPS == "" {
		t.Fatal("accepted a config with both listeners disabled")
	}
	if ts := cfg.Timeouts; ts.Hello <= 0 || ts.Dial <= 0 || ts.Idle <= 0 {
		t.Fatalf("timeouts not positive: %+v", ts)
	}
	owner := map[string]string{}
	names := map[string]bool{}
	for _, r := range cfg.Routes {
		if !routeName.MatchString(r.Name) || names[r.Name] {
			t.Fatalf("route name %q invalid or repeated", r.Name)
		}
		names[r.Name] = true
		if r.Mode != Passthrough && r.Mode != Terminate {
			t.Fatalf("route %s: mode %q", r.Name, r.Mode)
		}
		if r.ProxyProtocol != ProxyOff && r.ProxyProtocol != ProxyV1 && r.ProxyProtocol != ProxyV2 {
			t.Fatalf("route %s: proxy_protocol %q", r.Name, r.ProxyProtocol)
		}
		if r.Timeouts.Hello <= 0 || r.Timeouts.Dial <= 0 || r.Timeouts.Idle <= 0 {
			t.Fatalf("route %s: timeouts not positive: %+v", r.Name, r.Timeouts)
		}
		if len(r.Hosts) == 0 {
			t.Fatalf("route %s has no hosts", r.Name)
		}
		for _, h := range r.Hosts {
			if n, err := NormalizeHost(h); err != nil || n != h {
				t.Fatalf("route %s: host %q not normalized (%q, %v)", r.Name, h, n, err)
			}
			if prev, dup := owner[h]; dup {
				t.Fatalf("host %q in routes %s and %s", h, prev, r.Name)
			}
			owner[h] = r.Name
		}
		if r.Upstream == "" {
			t.Fatalf("route %s has no upstream", r.Name)
		}
		if r.Mode == Passthrough {
			if _, _, err := net.SplitHostPort(r.Upstream); err != nil {
				t.Fatalf("route %s: upstream %q: %v", r.Name, r.Upstream, err)
			}
			if r.HTTPUpstream != "" {
				if _, _, err := net.SplitHostPort(r.HTTPUpstream); err != nil {
					t.Fatalf("route %s: http_upstream %q: %v", r.Name, r.HTTPUpstream, err)
				}
			}
		} else {
			if u, err := url.Parse(r.Upstream); err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
				t.Fatalf("route %s: terminate upstream %q is not an http(s) URL", r.Name, r.Upstream)
			}
			if r.HTTPUpstream != "" || r.ProxyProtocol != ProxyOff {
				t.Fatalf("route %s: passthrough settings on a terminated route: %+v", r.Name, r)
			}
		}
	}
	checkFuzzUpstreams(t, cfg)
	if cfg.UnknownSNI != UnknownSNIReject && cfg.Route(cfg.UnknownSNI) == nil {
		t.Fatalf("unknown_sni %q names no route", cfg.UnknownSNI)
	}
}
