package dyndns

import (
	"net/netip"
	"time"
)

// bucket is a token bucket: it holds up to burst tokens and gains one per
// refill; each counted event takes one.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) fill(now time.Time, burst int, refill time.Duration) {
	if refill > 0 {
		b.tokens += float64(now.Sub(b.last)) / float64(refill)
	}
	b.tokens = min(b.tokens, float64(burst))
	b.last = now
}

func newBucket(now time.Time, burst int) *bucket {
	return &bucket{tokens: float64(burst), last: now}
}

// routeAllowed takes a token for an authenticated update of route.
func (h *Handler) routeAllowed(route string, now time.Time, burst int, refill time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.routes == nil {
		h.routes = map[string]*bucket{}
	}
	b := h.routes[route]
	if b == nil {
		b = newBucket(now, burst)
		h.routes[route] = b
	}
	b.fill(now, burst, refill)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sourceAllowed says whether the client's network may try again: it has
// not used up its failed attempts. It takes nothing; failed does.
func (h *Handler) sourceAllowed(src netip.Prefix, now time.Time, burst int, refill time.Duration) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := h.sources[src]
	if b == nil {
		return len(h.sources) < maxSources || h.pruneSources(now, burst, refill)
	}
	b.fill(now, burst, refill)
	return b.tokens >= 1
}

// failed counts a failed attempt (bad credentials, unknown hostname)
// against the client's network.
func (h *Handler) failed(src netip.Prefix, now time.Time, burst int, refill time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sources == nil {
		h.sources = map[netip.Prefix]*bucket{}
	}
	b := h.sources[src]
	if b == nil {
		if len(h.sources) >= maxSources && !h.pruneSources(now, burst, refill) {
			return
		}
		b = newBucket(now, burst)
		h.sources[src] = b
	}
	b.fill(now, burst, refill)
	b.tokens = max(b.tokens-1, 0)
}

// pruneSources forgets networks whose buckets are full again, and reports
// whether that made room. The caller holds h.mu.
func (h *Handler) pruneSources(now time.Time, burst int, refill time.Duration) bool {
	for k, b := range h.sources {
		b.fill(now, burst, refill)
		if b.tokens >= float64(burst) {
			delete(h.sources, k)
		}
	}
	return len(h.sources) < maxSources
}
