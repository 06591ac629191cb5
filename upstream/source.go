package upstream

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// A source says where an upstream is: a fixed address, a name in DNS or
// the address a home pushed. Members subscribe to it and are told each
// new reading through member.process.
type source interface {
	// subscribe adds m and returns the current reading (gen 0: none yet).
	subscribe(m *member) sourceValue
	unsubscribe(m *member)
}

var (
	_ source = staticSource{}
	_ source = (*dnsSource)(nil)
	_ source = (*pushSource)(nil)
)

// sourceValue is one reading of a source. Readings are numbered so that a
// member never goes back to an older one it receives late.
type sourceValue struct {
	gen   uint64
	addrs []netip.Addr // the last good answer, even when err is set
	err   error        // why the last attempt failed; nil when fresh
}

// staticSource is an IP literal from the config.
type staticSource struct{ addr netip.Addr }

func (s staticSource) subscribe(*member) sourceValue {
	return sourceValue{gen: 1, addrs: []netip.Addr{s.addr}}
}
func (staticSource) unsubscribe(*member) {}

// subscribers is the list of members a source tells about new readings.
type subscribers struct {
	mu   sync.Mutex
	val  sourceValue
	subs []*member
}

func (s *subscribers) subscribe(m *member) sourceValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = append(s.subs, m)
	return s.val
}

func (s *subscribers) unsubscribe(m *member) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.subs = slices.DeleteFunc(s.subs, func(x *member) bool { return x == m })
}

// set records a new reading and tells every subscriber, in the caller's
// goroutine: a member may take a while (an identity check), and the
// caller is the one that should wait for it.
func (s *subscribers) set(addrs []netip.Addr, err error) {
	s.mu.Lock()
	s.val = sourceValue{gen: s.val.gen + 1, addrs: addrs, err: err}
	v, subs := s.val, slices.Clone(s.subs)
	s.mu.Unlock()
	for _, m := range subs {
		m.process(v)
	}
}

func (s *subscribers) current() sourceValue {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.val
}

func (s *subscribers) members() []*member {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.subs)
}

// dnsSource keeps a hostname resolved: it asks again shortly before each
// answer's TTL (clamped to floor and ceiling) runs out, and when the
// resolver fails it keeps the last good answer, says so in the log and
// asks again with growing pauses.
type dnsSource struct {
	subscribers
	host      string
	allowIPv4 bool
	lookup    lookuper
	floor     time.Duration
	ceiling   time.Duration
	log       *zap.Logger

	cancel context.CancelFunc
	done   chan struct{}
}

// maxRetry bounds the pause between attempts while the resolver fails.
const maxRetry = 30 * time.Second

func (s *dnsSource) start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	go s.run(ctx)
}

// stop ends resolving; a source that was never started just stays so.
func (s *dnsSource) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}

func (s *dnsSource) run(ctx context.Context) {
	defer close(s.done)
	fails := 0
	var lastGood time.Time
	for {
		wait := s.refresh(ctx, &fails, &lastGood)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// refresh asks once and returns how long to wait before asking again.
func (s *dnsSource) refresh(ctx context.Context, fails *int, lastGood *time.Time) time.Duration {
	qctx, cancel := context.WithTimeout(ctx, 2*queryTimeout+time.Second)
	ans, err := s.lookup.lookup(qctx, s.host, s.allowIPv4)
	cancel()
	if ctx.Err() != nil {
		return 0
	}
	if err == nil && len(ans.addrs) == 0 {
		err = ErrNoAddress
	}
	prev := s.current()
	if err != nil {
		*fails++
		if len(prev.addrs) > 0 {
			s.log.Warn("resolving upstream failed; keeping the last good answer",
				zap.String("host", s.host), zap.Error(err), zap.Strings("addresses", addrStrings(prev.addrs)),
				zap.Time("answered_at", *lastGood), zap.Int("failures", *fails))
		} else {
			s.log.Warn("resolving upstream failed", zap.String("host", s.host), zap.Error(err), zap.Int("failures", *fails))
		}
		s.set(prev.addrs, err)
		retry := s.floor << min(*fails-1, 16)
		return min(retry, max(s.floor, min(s.ceiling, maxRetry)))
	}
	if *fails > 0 && len(prev.addrs) > 0 {
		s.log.Info("resolver answers again", zap.String("host", s.host), zap.Int("failures", *fails))
	}
	*fails, *lastGood = 0, time.Now()
	ttl := min(max(ans.ttl, s.floor), s.ceiling)
	if !slices.Equal(prev.addrs, ans.addrs) {
		s.log.Info("upstream name resolved", zap.String("host", s.host),
			zap.Strings("old", addrStrings(prev.addrs)), zap.Strings("new", addrStrings(ans.addrs)),
			zap.Duration("ttl", ans.ttl), zap.Duration("used_for", ttl))
	}
	// Every fresh answer goes to the members, changed or not: an address
	// that failed its identity check gets another chance each TTL.
	s.set(ans.addrs, nil)
	// Ask again a little before the answer expires, so the next one is
	// there in time.
	return ttl - ttl/10
}

// pushSource is the address last pushed for a route (or restored from the
// state file after a restart).
type pushSource struct {
	subscribers
	route string
	mu    sync.Mutex // serializes pushes
	meta  atomic.Pointer[savedAddr]
}

func addrStrings(addrs []netip.Addr) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
