package proxy

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/upstream"
)

// route is a config.Route made ready to serve.
type route struct {
	cfg      *config.Route
	name     string
	tls      *upstream.Upstream // passthrough :443 target; nil for terminated routes
	http     *upstream.Upstream // :80 target; nil when :80 is not relayed
	origin   *upstream.Upstream // terminated routes: where requests go; nil for passthrough
	proxyVer int                // PROXY protocol version to send, 0 for none
	timeouts config.Timeouts
	term     *termRoute   // terminated routes: the reverse proxy (terminate.go)
	active   atomic.Int64 // open connections, held to cfg.MaxConns (limits.go)
}

// table routes host names to routes. It is immutable once built and
// swapped whole on reload, so lookups take no lock.
type table struct {
	cfg        *config.Config
	exact      map[string]*route
	wild       map[string]*route // "*.example.com" stored under "example.com"
	unknownSNI *route            // nil: reject
}

// newTable builds the table for cfg. The routes' upstreams come from the
// Server's registry, which keeps DNS answers, pushed addresses and health
// across reloads for routes whose upstream settings did not change.
func (s *Server) newTable(cfg *config.Config) (*table, error) {
	ups, err := s.Upstreams().Apply(cfg)
	if err != nil {
		return nil, err
	}
	t := &table{cfg: cfg, exact: map[string]*route{}, wild: map[string]*route{}}
	for _, rc := range cfg.Routes {
		r := &route{cfg: rc, name: rc.Name, timeouts: rc.Timeouts}
		switch rc.ProxyProtocol {
		case config.ProxyV1:
			r.proxyVer = 1
		case config.ProxyV2:
			r.proxyVer = 2
		}
		up, ok := ups[rc.Name]
		if !ok {
			return nil, fmt.Errorf("route %s: no upstreams", rc.Name)
		}
		if rc.Mode == config.Passthrough {
			r.tls, r.http = up.Main, up.HTTP
		} else {
			r.origin = up.Main
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

// upstreamRegistry is the Server's upstream registry, made on first use
// from the Server's Logger, Metrics and Resolver.
type upstreamRegistry struct {
	once sync.Once
	reg  *upstream.Registry
}

// Upstreams returns the registry that tracks every route's upstream
// addresses: the update endpoint pushes addresses into it.
func (s *Server) Upstreams() *upstream.Registry {
	s.upstreams.once.Do(func() {
		s.upstreams.reg = upstream.NewRegistry(upstream.Options{
			Logger:   s.logger().Named("upstream"),
			Metrics:  s.Metrics,
			Resolver: s.Resolver,
			OnChange: s.upstreamsChanged,
		})
	})
	return s.upstreams.reg
}

// upstreamsChanged lets the idle origin connections of a terminated route
// go when its upstreams change (an address down, up again, replaced), so
// the next request dials and follows the change instead of reusing a
// pooled connection. Requests in flight finish where they are.
func (s *Server) upstreamsChanged(name string) {
	t := s.table.Load()
	if t == nil {
		return
	}
	for _, r := range t.routes() {
		if r.name == name && r.term != nil {
			r.term.transport.CloseIdleConnections()
		}
	}
}

// closeUpstreams stops resolving and health-checking.
func (s *Server) closeUpstreams() {
	s.Upstreams().Close()
}

// lookup finds the route for a host name as a client sent it in SNI or
// Host: any case, with or without a trailing dot. Wildcards match exactly
// one label. It runs for every connection, so it does not allocate: the
// parent of a wildcard is a substring of host, and an ASCII host with
// capitals is folded into a stack buffer, which map indexing by
// string(b) reads without a copy.
func (t *table) lookup(host string) *route {
	host = strings.TrimSuffix(host, ".")
	if !hasUpper(host) {
		if r, ok := t.exact[host]; ok {
			return r
		}
		if _, parent, ok := strings.Cut(host, "."); ok && parent != "" {
			return t.wild[parent]
		}
		return nil
	}
	var buf [maxHostLen]byte
	if len(host) > len(buf) || !isASCII(host) {
		// Too long to be a DNS name, or a Host header in Unicode: rare,
		// and strings.ToLower folds non-ASCII capitals too.
		return t.lookup(strings.ToLower(host))
	}
	b := buf[:len(host)]
	for i := range len(host) {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	if r, ok := t.exact[string(b)]; ok {
		return r
	}
	if i := bytes.IndexByte(b, '.'); i >= 0 && i+1 < len(b) {
		return t.wild[string(b[i+1:])]
	}
	return nil
}

// maxHostLen is the longest DNS name in text form, without the root dot
// (RFC 1035 §3.1: 255 octets on the wire).
const maxHostLen = 253

func hasUpper(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
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
