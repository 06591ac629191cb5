package proxy

import (
	"fmt"
	"net"
	"strings"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/upstream"
)

// route is a config.Route made ready to serve.
type route struct {
	cfg      *config.Route
	name     string
	tls      *upstream.Upstream // passthrough :443 target; nil for terminated routes
	http     *upstream.Upstream // :80 target; nil when :80 is not relayed
	proxyVer int                // PROXY protocol version to send, 0 for none
	timeouts config.Timeouts
	term     *termRoute // terminated routes: the reverse proxy (terminate.go)
}

// table routes host names to routes. It is immutable once built and
// swapped whole on reload, so lookups take no lock.
type table struct {
	cfg        *config.Config
	exact      map[string]*route
	wild       map[string]*route // "*.example.com" stored under "example.com"
	unknownSNI *route            // nil: reject
}

func newTable(cfg *config.Config, resolver *net.Resolver) (*table, error) {
	t := &table{cfg: cfg, exact: map[string]*route{}, wild: map[string]*route{}}
	for _, rc := range cfg.Routes {
		r := &route{cfg: rc, name: rc.Name, timeouts: rc.Timeouts}
		switch rc.ProxyProtocol {
		case config.ProxyV1:
			r.proxyVer = 1
		case config.ProxyV2:
			r.proxyVer = 2
		}
		var err error
		if rc.Mode == config.Passthrough {
			if r.tls, err = upstream.Parse(rc.Upstream, rc.AllowIPv4, resolver); err != nil {
				return nil, fmt.Errorf("route %s: upstream: %w", rc.Name, err)
			}
			if rc.HTTPUpstream != "" {
				if r.http, err = upstream.Parse(rc.HTTPUpstream, rc.AllowIPv4, resolver); err != nil {
					return nil, fmt.Errorf("route %s: http_upstream: %w", rc.Name, err)
				}
			}
		}
		for _, h := range rc.Hosts {
			if parent, ok := strings.CutPrefix(h, "*."); ok {
				t.wild[parent] = r
			} else {
				t.exact[h] = r
			}
		}
		if cfg.UnknownSNI == rc.Name {
			t.unknownSNI = r
		}
	}
	return t, nil
}

// lookup finds the route for a host name as a client sent it in SNI or
// Host: any case, with or without a trailing dot. Wildcards match exactly
// one label.
func (t *table) lookup(host string) *route {
	host = strings.TrimSuffix(host, ".")
	if hasUpper(host) {
		host = strings.ToLower(host)
	}
	if r, ok := t.exact[host]; ok {
		return r
	}
	if _, parent, ok := strings.Cut(host, "."); ok && parent != "" {
		return t.wild[parent]
	}
	return nil
}

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// routes returns every distinct route in the table.
func (t *table) routes() []*route {
	seen := map[*route]bool{}
	var out []*route
	for _, m := range []map[string]*route{t.exact, t.wild} {
		for _, r := range m {
			if !seen[r] {
				seen[r] = true
				out = append(out, r)
			}
		}
	}
	return out
}
