package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
)

// kind is the traffic a dial is for, which picks the port.
type kind int

const (
	kindMain kind = iota // passthrough :443, or a terminated route's origin
	kindHTTP             // passthrough :80
)

// Set is a route's upstreams: each member's current addresses, their
// health, and the order new connections try them in. Connections never
// move between addresses; only new dials see changes.
type Set struct {
	reg   *Registry
	route string
	fp    string // the config it was built from, to reuse it on reload

	members   []*member
	balance   config.Balance
	eject     config.Ejection
	health    *config.HealthCheck
	identity  *identitySpec // nil: addresses are not checked
	prefixes  []netip.Prefix
	allowIPv4 bool
	proxyVer  int // PROXY protocol version the origin expects, for probes
	scheme    string
	checkHost string // Host header of HTTP health checks
	timeout   time.Duration
	// counts says whether address changes are counted in metrics (the
	// route's main set; not the set of an http_upstream on another host).
	counts bool

	rr     atomic.Uint64
	mu     sync.Mutex
	states map[netip.AddrPort]*addrState

	ctx    context.Context // done when the set is retired
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// addrState is what the relay knows about one address and port.
type addrState struct {
	up           bool // the active checks' verdict; true until they say otherwise
	okRun        int  // consecutive successful checks
	failRun      int  // consecutive failed checks
	dialFails    int  // consecutive failed dials
	ejectedAt    time.Time
	ejectedUntil time.Time
	exported     int8 // relay46_upstream_up as last set: -1 never, 0, 1
}

// member is one entry of a route's upstream list.
type member struct {
	set   *Set
	spec  config.Upstream
	src   source
	ports [2]uint16 // by kind; 0: no traffic of that kind

	ready     chan struct{} // closed once the first reading is evaluated
	readyOnce sync.Once

	procMu sync.Mutex // serializes evaluations
	in     sourceValue

	pub atomic.Pointer[published]
}

type published struct {
	addrs []netip.Addr
	err   error // why addrs is empty
}

func (m *member) String() string { return m.spec.String() }

// start subscribes m to its source and evaluates the current reading. It
// runs in its own goroutine: an identity check must not hold up Apply.
func (m *member) start() {
	m.set.wg.Add(1)
	go func() {
		defer m.set.wg.Done()
		v := m.src.subscribe(m)
		if m.set.ctx.Err() != nil { // retired before it started
			m.src.unsubscribe(m)
			return
		}
		if v.gen > 0 {
			m.process(v)
		}
	}()
}

// process evaluates a new reading of the member's source.
func (m *member) process(v sourceValue) {
	m.procMu.Lock()
	defer m.procMu.Unlock()
	if v.gen < m.in.gen {
		return
	}
	m.in = v
	m.evaluate()
}

// evaluate turns the last reading into the addresses new connections may
// use: derived (prefix_from), inside allowed_prefixes, and, when the route
// checks identity, proven to be the origin. When nothing acceptable is
// left, the addresses in use stay: a bad answer never takes a working
// route down. The caller holds procMu.
func (m *member) evaluate() {
	s, v := m.set, m.in
	cur := m.pub.Load()
	keep := cur != nil && len(cur.addrs) > 0
	if len(v.addrs) == 0 {
		if !keep {
			err := v.err
			if err == nil {
				err = ErrNoAddress
			}
			m.publish(nil, err)
		}
		return
	}
	_, written := m.src.(staticSource)
	var cands []netip.Addr
	for _, ip := range v.addrs {
		ip, ok := m.derive(ip)
		if !ok || ip.Is4() && !s.allowIPv4 {
			continue
		}
		if !written {
			if err := s.admissible(ip); err != nil {
				s.reg.log.Warn("upstream address not used", zap.String("route", s.route), zap.Stringer("upstream", m), zap.Error(err))
				continue
			}
		}
		if !slices.Contains(cands, ip) {
			cands = append(cands, ip)
		}
	}
	if s.identity != nil {
		cands = m.verified(cands)
	}
	if len(cands) == 0 {
		if keep {
			s.reg.log.Warn("no acceptable new upstream address; keeping the one in use",
				zap.String("route", s.route), zap.Stringer("upstream", m),
				zap.Strings("in_use", addrStrings(cur.addrs)), zap.Strings("offered", addrStrings(v.addrs)))
			return
		}
		m.publish(nil, fmt.Errorf("%w: no address passed the checks", ErrNoAddress))
		return
	}
	m.publish(cands, nil)
}

// derive applies interface_id: the pushed address keeps its prefix and
// takes the configured low bits.
func (m *member) derive(ip netip.Addr) (netip.Addr, bool) {
	ip = ip.Unmap().WithZone("")
	id := m.spec.InterfaceID
	if !id.IsValid() {
		return ip, true
	}
	if !ip.Is6() {
		return netip.Addr{}, false
	}
	a, b := ip.As16(), id.As16()
	n := 16 - config.InterfaceIDBits/8
	copy(a[n:], b[n:])
	return netip.AddrFrom16(a), true
}

// verified returns the addresses that pass the identity check.
func (m *member) verified(cands []netip.Addr) []netip.Addr {
	s := m.set
	var ok []netip.Addr
	for _, ip := range cands {
		ap := netip.AddrPortFrom(ip, m.ports[kindMain])
		if err := s.reg.verify.verify(s.ctx, s.identity, ap); err != nil {
			if s.ctx.Err() != nil {
				return nil
			}
			s.reg.identityFailed(s.route, ap, err)
			continue
		}
		ok = append(ok, ip)
	}
	return ok
}

// retry evaluates the last reading again when it gave no usable address
// although the source offers some: an address withdrawn after a failed
// identity check is checked again each health interval, and comes back
// when the right machine answers there again.
func (m *member) retry() {
	if pub := m.pub.Load(); pub == nil || len(pub.addrs) > 0 {
		return
	}
	m.procMu.Lock()
	defer m.procMu.Unlock()
	if pub := m.pub.Load(); len(pub.addrs) == 0 && len(m.in.addrs) > 0 {
		m.evaluate()
	}
}

// revoke removes ip from use at once: it no longer passes the identity
// check, so even being the last address does not keep it.
func (m *member) revoke(ip netip.Addr, err error) {
	m.procMu.Lock()
	defer m.procMu.Unlock()
	cur := m.pub.Load()
	if cur == nil || !slices.Contains(cur.addrs, ip) {
		return
	}
	m.set.reg.log.Error("upstream address no longer passes the identity check; removed",
		zap.String("route", m.set.route), zap.String("address", ip.String()), zap.Error(err))
	rest := slices.DeleteFunc(slices.Clone(cur.addrs), func(a netip.Addr) bool { return a == ip })
	m.publish(rest, fmt.Errorf("%w: identity check failed", ErrNoAddress))
}

// publish makes addrs the member's addresses for new connections.
func (m *member) publish(addrs []netip.Addr, err error) {
	s := m.set
	old := m.pub.Swap(&published{addrs: addrs, err: err})
	m.readyOnce.Do(func() { close(m.ready) })
	var before []netip.Addr
	if old != nil {
		before = old.addrs
	}
	if slices.Equal(before, addrs) {
		return
	}
	log := s.reg.log.Info
	if len(addrs) == 0 {
		log = s.reg.log.Warn
	}
	log("upstream addresses changed", zap.String("route", s.route), zap.Stringer("upstream", m),
		zap.Strings("old", addrStrings(before)), zap.Strings("new", addrStrings(addrs)), zap.NamedError("reason", err))
	if len(before) > 0 && s.counts {
		s.reg.obs.UpstreamAddrChanged(s.route)
	}
	defer s.changed()
	for _, ip := range before {
		if !slices.Contains(addrs, ip) {
			for _, p := range m.ports {
				if p != 0 {
					s.forget(netip.AddrPortFrom(ip, p))
				}
			}
		}
	}
}

// forget drops the state and metric of an address no member offers now.
func (s *Set) forget(ap netip.AddrPort) {
	if s.allows(ap) {
		return
	}
	s.mu.Lock()
	st := s.states[ap]
	delete(s.states, ap)
	s.mu.Unlock()
	if st != nil && st.exported >= 0 {
		s.reg.obs.UpstreamRemoved(s.route, ap.String())
	}
}

// waitReady waits until every member has evaluated its first reading, or
// ctx is done.
func (s *Set) waitReady(ctx context.Context, k kind) {
	for _, m := range s.members {
		if m.ports[k] == 0 {
			continue
		}
		select {
		case <-m.ready:
		case <-ctx.Done():
			return
		}
	}
}

// candidates returns the addresses a new connection should try, in order:
// those in good health first (in priority order, or rotated for
// round_robin), then the others, so that a route whose every address
// looks down still tries them rather than refusing outright.
func (s *Set) candidates(ctx context.Context, k kind) ([]netip.AddrPort, error) {
	s.waitReady(ctx, k)
	now := s.reg.now()
	var good, bad []netip.AddrPort
	var errs []error
	s.mu.Lock()
	for _, m := range s.members {
		port := m.ports[k]
		if port == 0 {
			continue
		}
		p := m.pub.Load()
		if p == nil {
			errs = append(errs, fmt.Errorf("%s: not resolved yet", m))
			continue
		}
		if len(p.addrs) == 0 {
			errs = append(errs, fmt.Errorf("%s: %w", m, p.err))
		}
		for _, ip := range p.addrs {
			ap := netip.AddrPortFrom(ip, port)
			if st := s.states[ap]; st == nil || st.up && !now.Before(st.ejectedUntil) {
				good = append(good, ap)
			} else {
				bad = append(bad, ap)
			}
		}
	}
	s.mu.Unlock()
	if len(good)+len(bad) == 0 {
		if len(errs) == 0 {
			return nil, ErrNoAddress
		}
		return nil, errors.Join(errs...)
	}
	if s.balance == config.RoundRobin && len(good) > 1 {
		n := int(s.rr.Add(1) % uint64(len(good)))
		good = append(good[n:], good[:n]...)
	}
	return append(good, bad...), nil
}

// allows reports whether ap is an address some member currently offers.
func (s *Set) allows(ap netip.AddrPort) bool {
	for _, m := range s.members {
		for _, p := range m.ports {
			if p == 0 || p != ap.Port() {
				continue
			}
			if pub := m.pub.Load(); pub != nil && slices.Contains(pub.addrs, ap.Addr()) {
				return true
			}
		}
	}
	return false
}

// report records the outcome of a dial: consecutive failures eject the
// address for a while; a success clears them.
func (s *Set) report(ap netip.AddrPort, err error) {
	if errors.Is(err, ErrNotAllowed) {
		return // the relay refused, not the upstream
	}
	s.mu.Lock()
	st := s.state(ap)
	if err == nil {
		st.dialFails, st.ejectedUntil = 0, time.Time{}
		s.exportLocked(ap, st, st.up)
		s.mu.Unlock()
		return
	}
	st.dialFails++
	eject := s.eject.Failures > 0 && st.dialFails >= s.eject.Failures
	if eject {
		st.ejectedAt = s.reg.now()
		st.ejectedUntil = st.ejectedAt.Add(s.eject.Duration)
		s.exportLocked(ap, st, false)
	}
	n := st.dialFails
	s.mu.Unlock()
	if eject {
		s.changed()
		s.reg.log.Warn("upstream address ejected after failed dials", zap.String("route", s.route),
			zap.String("address", ap.String()), zap.Int("failures", n), zap.Duration("for", s.eject.Duration), zap.Error(err))
	}
}

// changed tells the registry's OnChange hook.
func (s *Set) changed() {
	if f := s.reg.opts.OnChange; f != nil {
		f(s.route)
	}
}

// state returns ap's state, creating it. The caller holds s.mu.
func (s *Set) state(ap netip.AddrPort) *addrState {
	st := s.states[ap]
	if st == nil {
		st = &addrState{up: true, exported: -1}
		s.states[ap] = st
	}
	return st
}

// exportLocked sets relay46_upstream_up when it changes. The caller holds s.mu.
func (s *Set) exportLocked(ap netip.AddrPort, st *addrState, up bool) {
	v := int8(0)
	if up {
		v = 1
	}
	if st.exported != v {
		st.exported = v
		s.reg.obs.UpstreamHealth(s.route, ap.String(), up)
	}
}

// close stops the set's checks and forgets its metrics series.
func (s *Set) close() {
	s.cancel()
	for _, m := range s.members {
		m.src.unsubscribe(m)
	}
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for ap, st := range s.states {
		if st.exported >= 0 {
			s.reg.obs.UpstreamRemoved(s.route, ap.String())
		}
	}
	s.states = map[netip.AddrPort]*addrState{}
}
