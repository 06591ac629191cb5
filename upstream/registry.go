package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
)

// Observer records what the registry sees. *metrics.Metrics is one; a nil
// Observer records nothing.
type Observer interface {
	UpstreamHealth(route, addr string, up bool)
	UpstreamRemoved(route, addr string)
	UpstreamAddrChanged(route string)
}

// identityCounter is an Observer that also counts failed identity checks.
type identityCounter interface {
	UpstreamIdentityFailed(route string)
}

type nopObserver struct{}

func (nopObserver) UpstreamHealth(string, string, bool) {}
func (nopObserver) UpstreamRemoved(string, string)      {}
func (nopObserver) UpstreamAddrChanged(string)          {}

// Options configure a Registry. Every field may be left zero.
type Options struct {
	// Logger receives address changes, resolver failures, health changes
	// and refused addresses. Nil means no logs.
	Logger *zap.Logger
	// Metrics records health and address changes. Nil records nothing.
	Metrics Observer
	// Resolver, when set, looks up hostnames of configs that name no
	// resolvers, instead of the servers in /etc/resolv.conf. It cannot
	// tell TTLs, so its answers are used for dns_ttl.floor.
	Resolver *net.Resolver
	// Now is the clock for ejections. Nil means time.Now.
	Now func() time.Time
	// ResolvConf and HostsFile are the system's resolver files. Empty
	// means /etc/resolv.conf and /etc/hosts.
	ResolvConf, HostsFile string
	// OnChange, when set, is called after a route's upstream addresses or
	// their health changed, so that pooled connections can be let go and
	// the next request dials and follows. It must not call back into the
	// registry.
	OnChange func(route string)
}

// Registry holds every route's upstream set, the DNS answers and pushed
// addresses they follow, and the state that must outlive a reload (and,
// for pushed addresses, a restart). Its methods are safe for concurrent
// use.
type Registry struct {
	opts   Options
	log    *zap.Logger
	obs    Observer
	now    func() time.Time
	verify *verifier

	mu       sync.Mutex // held by Apply and Close
	closed   bool
	lookKey  string // resolvers and TTL bounds the DNS sources use
	look     lookuper
	floor    time.Duration
	ceiling  time.Duration
	dns      map[dnsKey]*dnsSource
	push     map[string]*pushSource // by route
	sets     map[string]*routeSets  // by route
	state    *stateFile
	accounts map[string]Account // by update hostname
	updates  config.Updates
}

type dnsKey struct {
	host      string
	allowIPv4 bool
	lookup    string // the resolvers and TTL bounds it was made with
}

// routeSets are the sets built for one route.
type routeSets struct {
	fp       string
	main     *Set
	httpOnly *Set // http_upstream on another host; nil otherwise
	route    Route
}

// Route is what one route dials.
type Route struct {
	// Main takes passthrough :443 traffic, or a terminated route's
	// requests to its origin.
	Main *Upstream
	// HTTP takes passthrough :80 traffic; nil when the route relays none.
	HTTP *Upstream
}

// NewRegistry returns an empty registry; Apply gives it routes.
func NewRegistry(opts Options) *Registry {
	r := &Registry{
		opts:     opts,
		log:      opts.Logger,
		obs:      opts.Metrics,
		now:      opts.Now,
		verify:   &verifier{dial: dialOnly, passed: map[verifyKey]bool{}, inflight: map[verifyKey]*verifyCall{}},
		dns:      map[dnsKey]*dnsSource{},
		push:     map[string]*pushSource{},
		sets:     map[string]*routeSets{},
		accounts: map[string]Account{},
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.obs == nil {
		r.obs = nopObserver{}
	}
	if r.now == nil {
		r.now = time.Now
	}
	return r
}

// ErrClosed is returned by Apply after Close.
var ErrClosed = errors.New("upstream: registry closed")

// Apply makes the registry follow cfg and returns what each route dials.
// Routes whose upstream settings did not change keep their set, with its
// answers and health; the sets of changed or removed routes are retired
// (dials already holding one still work, with its last addresses).
func (r *Registry) Apply(cfg *config.Config) (map[string]Route, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	r.setLookup(cfg)
	r.setState(filepath.Join(cfg.ACME.Storage, StateFileName))
	built := map[string]*routeSets{}
	var fresh []*routeSets
	for _, rc := range cfg.Routes {
		fp := r.fingerprint(rc)
		if old := r.sets[rc.Name]; old != nil && old.fp == fp {
			built[rc.Name] = old
			continue
		}
		rs, err := r.buildRoute(rc, fp)
		if err != nil {
			for _, f := range fresh {
				f.discard()
			}
			r.dropUnusedSources()
			return nil, fmt.Errorf("route %s: %w", rc.Name, err)
		}
		built[rc.Name] = rs
		fresh = append(fresh, rs)
	}
	// Retire before starting the new sets, so that a retiring set
	// forgetting its metrics cannot remove a series a new one created.
	for name, old := range r.sets {
		if built[name] != old {
			old.close()
		}
	}
	r.sets = built
	for name := range r.push {
		if rc := cfg.Route(name); rc == nil || rc.Update == nil {
			delete(r.push, name)
		}
	}
	r.dropUnusedSources()
	for _, rs := range fresh {
		rs.start()
	}
	r.accounts = accounts(cfg)
	r.updates = cfg.Updates
	out := make(map[string]Route, len(built))
	for name, rs := range built {
		out[name] = rs.route
	}
	return out, nil
}

// Close retires every set and stops resolving. It is safe to call more
// than once.
func (r *Registry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	for _, rs := range r.sets {
		rs.close()
	}
	r.sets = map[string]*routeSets{}
	r.dropUnusedSources()
	return nil
}

// setLookup picks how names are resolved. A change of resolvers or TTL
// bounds gives new DNS sources (and, through the fingerprint, new sets);
// the old ones stop once no set in use needs them.
func (r *Registry) setLookup(cfg *config.Config) {
	key := fmt.Sprint(cfg.Resolvers, cfg.DNSTTL.Floor, cfg.DNSTTL.Ceiling)
	if key == r.lookKey && r.look != nil {
		return
	}
	r.lookKey, r.floor, r.ceiling = key, cfg.DNSTTL.Floor, cfg.DNSTTL.Ceiling
	switch {
	case len(cfg.Resolvers) > 0:
		r.look = &dnsClient{servers: cfg.Resolvers}
	case r.opts.Resolver != nil:
		r.look = netResolver{r.opts.Resolver}
	default:
		r.look = systemLookuper(or(r.opts.ResolvConf, "/etc/resolv.conf"), or(r.opts.HostsFile, "/etc/hosts"))
	}
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// fingerprint is everything a route's sets are built from.
func (r *Registry) fingerprint(rc *config.Route) string {
	b, _ := json.Marshal(struct {
		Mode                       config.Mode
		Hosts                      []string
		Upstreams, HTTPOnly        []config.Upstream
		Balance                    config.Balance
		Prefixes                   []netip.Prefix
		Identity                   *config.Identity
		Health                     *config.HealthCheck
		Ejection                   config.Ejection
		Proxy                      config.ProxyProtocol
		AllowIPv4                  bool
		Dial                       time.Duration
		Lookup, UpstreamServerName string
	}{
		rc.Mode, rc.Hosts, rc.Upstreams, rc.HTTPOnlyUpstreams, rc.Balance, rc.AllowedPrefixes,
		rc.Identity, rc.HealthCheck, rc.Ejection, rc.ProxyProtocol, rc.AllowIPv4, rc.Timeouts.Dial,
		r.lookKey, rc.UpstreamServerName,
	})
	return string(b)
}

func (r *Registry) buildRoute(rc *config.Route, fp string) (*routeSets, error) {
	proxyVer := map[config.ProxyProtocol]int{config.ProxyV1: 1, config.ProxyV2: 2}[rc.ProxyProtocol]
	var id *identitySpec
	if rc.Identity != nil {
		var err error
		if id, err = newIdentitySpec(rc, proxyVer); err != nil {
			return nil, err
		}
	}
	rs := &routeSets{fp: fp}
	rs.main = r.newSet(rc, rc.Upstreams, id, proxyVer, true)
	rs.route.Main = &Upstream{set: rs.main, kind: kindMain}
	switch {
	case len(rc.HTTPOnlyUpstreams) > 0:
		rs.httpOnly = r.newSet(rc, rc.HTTPOnlyUpstreams, nil, proxyVer, false)
		rs.route.HTTP = &Upstream{set: rs.httpOnly, kind: kindMain}
	case rc.Mode == config.Passthrough:
		for _, u := range rc.Upstreams {
			if u.HTTPPort != 0 {
				rs.route.HTTP = &Upstream{set: rs.main, kind: kindHTTP}
				break
			}
		}
	}
	return rs, nil
}

func (r *Registry) newSet(rc *config.Route, ups []config.Upstream, id *identitySpec, proxyVer int, main bool) *Set {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Set{
		reg: r, route: rc.Name, balance: rc.Balance, eject: rc.Ejection,
		identity: id, prefixes: rc.AllowedPrefixes, allowIPv4: rc.AllowIPv4, proxyVer: proxyVer,
		timeout: rc.Timeouts.Dial, counts: main,
		states: map[netip.AddrPort]*addrState{}, ctx: ctx, cancel: cancel,
	}
	if main {
		s.health = rc.HealthCheck
	}
	if len(ups) > 0 {
		s.scheme = ups[0].Scheme
	}
	for _, h := range rc.Hosts {
		if !strings.HasPrefix(h, "*.") {
			s.checkHost = h
			break
		}
	}
	if s.checkHost == "" && len(rc.Hosts) > 0 {
		s.checkHost = strings.TrimPrefix(rc.Hosts[0], "*.")
	}
	for _, u := range ups {
		m := &member{set: s, spec: u, ready: make(chan struct{}), src: r.sourceFor(rc, u)}
		m.ports[kindMain] = u.Port
		if main && rc.Mode == config.Passthrough {
			m.ports[kindHTTP] = u.HTTPPort
		}
		s.members = append(s.members, m)
	}
	return s
}

// sourceFor returns the shared source of an upstream's addresses.
func (r *Registry) sourceFor(rc *config.Route, u config.Upstream) source {
	if u.FromUpdate {
		ps := r.push[rc.Name]
		if ps == nil {
			ps = &pushSource{route: rc.Name}
			ps.val = sourceValue{gen: 1, err: errNotPushed}
			r.restorePushed(ps)
			r.push[rc.Name] = ps
		}
		return ps
	}
	if ip, err := netip.ParseAddr(u.Host); err == nil {
		return staticSource{ip.Unmap()}
	}
	k := dnsKey{strings.ToLower(strings.TrimSuffix(u.Host, ".")), rc.AllowIPv4, r.lookKey}
	s := r.dns[k]
	if s == nil {
		s = &dnsSource{host: k.host, allowIPv4: k.allowIPv4, lookup: r.look, floor: r.floor, ceiling: r.ceiling, log: r.log}
		r.dns[k] = s
	}
	return s
}

// dropUnusedSources stops DNS sources no set uses and starts new ones.
func (r *Registry) dropUnusedSources() {
	used := map[source]bool{}
	for _, rs := range r.sets {
		for _, s := range []*Set{rs.main, rs.httpOnly} {
			if s == nil {
				continue
			}
			for _, m := range s.members {
				used[m.src] = true
			}
		}
	}
	for k, s := range r.dns {
		switch {
		case !used[s]:
			if s.done != nil {
				s.stop()
			}
			delete(r.dns, k)
		case s.done == nil:
			s.start()
		}
	}
}

func (rs *routeSets) start() {
	for _, s := range []*Set{rs.main, rs.httpOnly} {
		if s == nil {
			continue
		}
		for _, m := range s.members {
			m.start()
		}
		if s.health != nil {
			s.wg.Add(1)
			go s.runHealth()
		}
	}
}

func (rs *routeSets) close() {
	for _, s := range []*Set{rs.main, rs.httpOnly} {
		if s != nil {
			s.close()
		}
	}
}

// discard drops sets that were built but never started.
func (rs *routeSets) discard() {
	for _, s := range []*Set{rs.main, rs.httpOnly} {
		if s != nil {
			s.cancel()
		}
	}
}

// identityFailed logs and counts an address that failed its identity check.
func (r *Registry) identityFailed(route string, ap netip.AddrPort, err error) {
	r.log.Warn("origin identity check failed; address not used", zap.String("route", route),
		zap.String("address", ap.String()), zap.Error(err))
	if c, ok := r.obs.(identityCounter); ok {
		c.UpstreamIdentityFailed(route)
	}
}
