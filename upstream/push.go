package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/config"
)

// Account is who may push the address of a route, under one hostname.
type Account struct {
	Route        string
	Username     string
	PasswordHash string // bcrypt
}

// PushResult says what a push did.
type PushResult int

// The results of an accepted push.
const (
	PushChanged   PushResult = iota + 1 // the route now uses the new address
	PushUnchanged                       // it was already the route's address
)

// ErrRefused means a pushed address was not accepted: of the wrong
// family, outside allowed_prefixes, not an address a home can have, or
// not passing the route's identity check. The route keeps its address.
var ErrRefused = errors.New("address refused")

// errNotPushed is why a pushed upstream has no address yet.
var errNotPushed = fmt.Errorf("%w: nothing pushed yet", ErrNoAddress)

// ErrNoRoute means no route takes pushed updates under that name.
var ErrNoRoute = errors.New("no route takes updates for this name")

// Lookup returns the account for an update hostname: one of the exact
// hosts of a route with update: credentials.
func (r *Registry) Lookup(hostname string) (Account, bool) {
	h, err := config.NormalizeHost(hostname)
	if err != nil || strings.HasPrefix(h, "*.") {
		return Account{}, false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	a, ok := r.accounts[h]
	return a, ok
}

// UpdateLimits returns the configured rate limit of pushed updates: a
// burst, then one more per refill.
func (r *Registry) UpdateLimits() (burst int, refill time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.updates.Burst, r.updates.Refill
}

func accounts(cfg *config.Config) map[string]Account {
	out := map[string]Account{}
	for _, rc := range cfg.Routes {
		if rc.Update == nil {
			continue
		}
		for _, h := range rc.Hosts {
			if !strings.HasPrefix(h, "*.") {
				out[h] = Account{Route: rc.Name, Username: rc.Update.Username, PasswordHash: rc.Update.PasswordHash}
			}
		}
	}
	return out
}

// Push makes addr the pushed address of route, after checking it as every
// new address is checked: family, allowed_prefixes, and the identity
// check when the route has one. It returns when new connections use the
// address (or have been refused it). from says who pushed, for the log.
// Pushes to one route are taken one at a time.
func (r *Registry) Push(ctx context.Context, route string, addr netip.Addr, from string) (PushResult, error) {
	r.mu.Lock()
	ps, rs := r.push[route], r.sets[route]
	r.mu.Unlock()
	if ps == nil || rs == nil {
		return 0, ErrNoRoute
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ip := addr.Unmap().WithZone("")
	cur := ps.current()
	if len(cur.addrs) == 1 && cur.addrs[0] == ip {
		return PushUnchanged, nil
	}
	if err := r.admitPushed(ctx, rs.main, ip); err != nil {
		r.log.Warn("pushed upstream address refused", zap.String("route", route), zap.String("address", ip.String()),
			zap.String("from", from), zap.Error(err))
		return 0, err
	}
	ps.meta.Store(&savedAddr{Address: ip.String(), At: r.now(), From: from})
	ps.set([]netip.Addr{ip}, nil)
	r.log.Info("upstream address pushed", zap.String("route", route),
		zap.Strings("old", addrStrings(cur.addrs)), zap.String("new", ip.String()), zap.String("from", from))
	if err := r.saveState(); err != nil {
		r.log.Error("saving pushed addresses failed; a restart would forget this one", zap.Error(err))
	}
	return PushChanged, nil
}

// admitPushed checks ip for every upstream of the set that takes the
// pushed address, as each would use it.
func (r *Registry) admitPushed(ctx context.Context, s *Set, ip netip.Addr) error {
	if ip.Is4() && !s.allowIPv4 {
		return fmt.Errorf("%w: %s is IPv4 and the route does not allow_ipv4", ErrRefused, ip)
	}
	for _, m := range s.members {
		if !m.spec.FromUpdate {
			continue
		}
		d, ok := m.derive(ip)
		if !ok {
			return fmt.Errorf("%w: %s has no /%d prefix to combine with interface_id %s", ErrRefused, ip, config.InterfaceIDBits, m.spec.InterfaceID)
		}
		if err := s.admissible(d); err != nil {
			return err
		}
		if s.identity != nil {
			ap := netip.AddrPortFrom(d, m.ports[kindMain])
			if err := r.verify.verify(ctx, s.identity, ap); err != nil {
				r.identityFailed(s.route, ap, err)
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
	}
	return nil
}

// admissible says whether an address learned at run time (resolved or
// pushed, not written in the config) may be used: inside allowed_prefixes
// when the route has them, and an address a remote home can have, unless
// allowed_prefixes names it explicitly. The relay must never be talked
// into connecting to itself or its own link.
func (s *Set) admissible(ip netip.Addr) error {
	if len(s.prefixes) > 0 {
		if !config.PrefixesContain(s.prefixes, ip) {
			return fmt.Errorf("%w: %s is outside allowed_prefixes", ErrRefused, ip)
		}
		return nil
	}
	if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() || ip.IsInterfaceLocalMulticast() {
		return fmt.Errorf("%w: %s is not a home's address (list it in allowed_prefixes if it is meant)", ErrRefused, ip)
	}
	return nil
}

// restorePushed gives a new push source the address saved before the
// last restart.
func (r *Registry) restorePushed(ps *pushSource) {
	if r.state == nil {
		return
	}
	saved, ok := r.state.get(ps.route)
	if !ok {
		return
	}
	ip, err := netip.ParseAddr(saved.Address)
	if err != nil {
		r.log.Warn("ignoring a saved pushed address", zap.String("route", ps.route), zap.String("address", saved.Address), zap.Error(err))
		return
	}
	ps.meta.Store(&saved)
	ps.set([]netip.Addr{ip}, nil)
	r.log.Info("restored the last pushed upstream address", zap.String("route", ps.route),
		zap.String("address", ip.String()), zap.Time("pushed_at", saved.At))
}

// saveState writes every route's pushed address to the state file.
func (r *Registry) saveState() error {
	r.mu.Lock()
	st := r.state
	pushed := map[string]savedAddr{}
	for name, ps := range r.push {
		if m := ps.meta.Load(); m != nil {
			pushed[name] = *m
		}
	}
	r.mu.Unlock()
	if st == nil {
		return nil
	}
	return st.save(pushed)
}
