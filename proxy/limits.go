package proxy

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/relay46/relay46/metrics"
)

// Limits protect the relay from floods. A connection over a limit is
// closed right after accept, before anything is read or dialed, counted in
// relay46_connections_refused_total and logged at most once a second per
// reason. A zero field means no limit.
type Limits struct {
	// MaxConns caps connections open at once, across all listeners.
	MaxConns int
	// MaxHandshakes caps connections still sending their ClientHello or
	// first request head: the stage a slow-loris flood lives in.
	MaxHandshakes int
	// MaxConnsPerSource caps connections open at once from one source: an
	// IPv4 address, or an IPv6 /64 (one subscriber's network).
	MaxConnsPerSource int
	// SourceRate and SourceBurst limit how fast one source may open
	// connections: a token bucket refilled at SourceRate per second
	// holding at most SourceBurst (at least 1).
	SourceRate  float64
	SourceBurst int
}

// limiter applies Limits. Its zero value applies none.
type limiter struct {
	limits     atomic.Pointer[Limits]
	conns      atomic.Int64
	handshakes atomic.Int64

	mu        sync.Mutex
	sources   map[netip.Prefix]*source
	lastSweep time.Time
	now       func() time.Time

	logMu   sync.Mutex
	logNext map[string]time.Time
	logDrop map[string]int
}

type source struct {
	conns  int
	tokens float64
	last   time.Time
}

// sourceKey groups IPv6 sources by /64: one home or VPS gets a /64 and can
// use every address in it.
func sourceKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

// admit decides whether a new connection from addr may proceed. When it
// may, release must be called once the connection ends.
func (l *limiter) admit(addr netip.Addr) (reason string, release func()) {
	lim := l.get()
	if lim.MaxConns > 0 && l.conns.Load() >= int64(lim.MaxConns) {
		return metrics.RefusedGlobalLimit, nil
	}
	if lim.MaxHandshakes > 0 && l.handshakes.Load() >= int64(lim.MaxHandshakes) {
		return metrics.RefusedHandshakeLimit, nil
	}
	var key netip.Prefix
	perSource := lim.MaxConnsPerSource > 0 || lim.SourceRate > 0
	if perSource && addr.IsValid() {
		key = sourceKey(addr)
		if reason := l.admitSource(key, lim); reason != "" {
			return reason, nil
		}
	}
	l.conns.Add(1)
	return "", func() {
		l.conns.Add(-1)
		if key.IsValid() {
			l.releaseSource(key)
		}
	}
}

func (l *limiter) get() *Limits {
	if p := l.limits.Load(); p != nil {
		return p
	}
	return &Limits{}
}

func (l *limiter) clock() time.Time {
	if l.now != nil {
		return l.now()
	}
	return time.Now()
}

func (l *limiter) admitSource(key netip.Prefix, lim *Limits) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	if l.sources == nil {
		l.sources = map[netip.Prefix]*source{}
	}
	l.sweep(now, lim)
	burst := float64(max(lim.SourceBurst, 1))
	s := l.sources[key]
	if s == nil {
		s = &source{tokens: burst, last: now}
		l.sources[key] = s
	}
	if lim.MaxConnsPerSource > 0 && s.conns >= lim.MaxConnsPerSource {
		return metrics.RefusedPerSource
	}
	if lim.SourceRate > 0 {
		s.tokens = min(burst, s.tokens+now.Sub(s.last).Seconds()*lim.SourceRate)
		s.last = now
		if s.tokens < 1 {
			return metrics.RefusedAcceptRate
		}
		s.tokens--
	}
	s.conns++
	return ""
}

func (l *limiter) releaseSource(key netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.sources[key]; s != nil {
		s.conns--
	}
}

// sweep forgets idle sources whose bucket has refilled, at most once every
// ten seconds, so the table holds only recent sources.
func (l *limiter) sweep(now time.Time, lim *Limits) {
	if now.Sub(l.lastSweep) < 10*time.Second {
		return
	}
	l.lastSweep = now
	full := time.Duration(min(float64(max(lim.SourceBurst, 1))/max(lim.SourceRate, 1e-3), 3600) * float64(time.Second))
	for k, s := range l.sources {
		if s.conns == 0 && now.Sub(s.last) > full {
			delete(l.sources, k)
		}
	}
}

// trackedSources reports how many sources the limiter remembers.
func (l *limiter) trackedSources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// handshaking counts a connection in its ClientHello/request-head stage
// until done is called.
func (l *limiter) handshaking() (done func()) {
	l.handshakes.Add(1)
	var once sync.Once
	return func() { once.Do(func() { l.handshakes.Add(-1) }) }
}

// refuse closes a connection turned away by a limit.
func (s *Server) refuse(c net.Conn, p Protocol, reason string) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0) // no TIME_WAIT kept for a flood
	}
	c.Close()
	s.Metrics.Refused(string(p), reason)
	s.lim.logMu.Lock()
	defer s.lim.logMu.Unlock()
	if s.lim.logNext == nil {
		s.lim.logNext, s.lim.logDrop = map[string]time.Time{}, map[string]int{}
	}
	now := s.lim.clock()
	if now.Before(s.lim.logNext[reason]) {
		s.lim.logDrop[reason]++
		return
	}
	s.lim.logNext[reason] = now.Add(time.Second)
	s.logger().Warn("connection refused by a limit", zap.String("listener", string(p)), zap.String("reason", reason),
		zap.String("client", addrPort(c.RemoteAddr()).String()), zap.Int("refused_since_last_log", s.lim.logDrop[reason]))
	s.lim.logDrop[reason] = 0
}

// acquire counts a connection against the route's max_conns and reports
// whether it may proceed; release must follow when it does.
func (r *route) acquire() bool {
	if n := r.active.Add(1); r.cfg.MaxConns > 0 && n > int64(r.cfg.MaxConns) {
		r.active.Add(-1)
		return false
	}
	return true
}

func (r *route) release() { r.active.Add(-1) }
