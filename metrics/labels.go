package metrics

import "time"

// Label values that are not route, listener, host or address names come from
// the small fixed sets below. Anything else a caller passes is recorded as
// [Other], so a bug in a caller can add at most one series per family, never
// one per client.

// Other is the value recorded for a fixed-set label when the caller passed a
// value outside the set.
const Other = "other"

// None is the route (or listener) value for a connection that was never
// routed, and the value recorded when a caller passes an empty name.
const None = "none"

// Modes of a route (the mode label).
const (
	ModePassthrough = "passthrough"
	ModeTerminate   = "terminate"
	ModeNone        = "none" // not routed: unknown host, peek failure, refused
)

// Outcomes of a layer-4 connection (the outcome label of
// relay46_connections_finished_total).
const (
	OutcomeOK              = "ok"               // relayed, both sides closed normally
	OutcomePeekFailed      = "peek_failed"      // no usable ClientHello or request head
	OutcomeUnknownHost     = "unknown_host"     // unknown or missing SNI / Host, no fallback
	OutcomeRefused         = "refused"          // a connection limit said no
	OutcomeDialFailed      = "dial_failed"      // the upstream could not be reached
	OutcomeHandshakeFailed = "handshake_failed" // terminating TLS handshake failed
	OutcomeTimeout         = "timeout"          // idle or deadline timeout while relaying
	OutcomeClientError     = "client_error"     // client reset or broke the stream
	OutcomeUpstreamError   = "upstream_error"   // upstream reset or broke the stream
	OutcomeShutdown        = "shutdown"         // closed by shutdown or reload drain
	OutcomeError           = "error"            // any other failure
)

// Reasons a ClientHello / request-head peek fails (relay46_peek_failures_total).
const (
	PeekTimeout   = "timeout"
	PeekNotTLS    = "not_tls"
	PeekTooLarge  = "too_large"
	PeekMalformed = "malformed"
	PeekEOF       = "eof"
)

// Reasons a connection is refused by a limit (relay46_connections_refused_total).
const (
	RefusedGlobalLimit    = "global_limit"
	RefusedPerSource      = "per_source"
	RefusedAcceptRate     = "accept_rate"
	RefusedHandshakeLimit = "handshake_limit"
	RefusedRouteLimit     = "route_limit"
)

// ACME attempt kinds and results (relay46_acme_attempts_total).
const (
	ACMEObtain = "obtain"
	ACMERenew  = "renew"
	ResultOK   = "ok"
	ResultErr  = "error"
)

// Directions of relayed bytes (relay46_relayed_bytes_total).
const (
	dirClientToUpstream = "client_to_upstream"
	dirUpstreamToClient = "upstream_to_client"
)

var (
	modes    = set(ModePassthrough, ModeTerminate, ModeNone)
	outcomes = set(OutcomeOK, OutcomePeekFailed, OutcomeUnknownHost, OutcomeRefused,
		OutcomeDialFailed, OutcomeHandshakeFailed, OutcomeTimeout, OutcomeClientError,
		OutcomeUpstreamError, OutcomeShutdown, OutcomeError)
	peekReasons    = set(PeekTimeout, PeekNotTLS, PeekTooLarge, PeekMalformed, PeekEOF)
	refusedReasons = set(RefusedGlobalLimit, RefusedPerSource, RefusedAcceptRate,
		RefusedHandshakeLimit, RefusedRouteLimit)
	acmeKinds   = set(ACMEObtain, ACMERenew)
	results     = set(ResultOK, ResultErr)
	httpMethods = set("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT")
	statusCodes = [...]string{"1xx", "2xx", "3xx", "4xx", "5xx"}
)

// These sets are read-only after package initialisation.
type fixedSet map[string]struct{}

func set(values ...string) fixedSet {
	s := make(fixedSet, len(values))
	for _, v := range values {
		s[v] = struct{}{}
	}
	return s
}

// fold returns v if it is in the set, else [Other].
func (s fixedSet) fold(v string) string {
	if _, ok := s[v]; ok {
		return v
	}
	return Other
}

// named returns a config-derived name, with "" recorded as [None] so an
// unset name never turns into a missing label.
func named(v string) string {
	if v == "" {
		return None
	}
	return v
}

// statusClass folds an HTTP status code to "1xx".."5xx", or [Other].
func statusClass(code int) string {
	if code < 100 || code > 599 {
		return Other
	}
	return statusCodes[code/100-1]
}

// boolResult maps ok to [ResultOK] or [ResultErr].
func boolResult(ok bool) string {
	if ok {
		return ResultOK
	}
	return ResultErr
}

// seconds converts d for a histogram; negative durations (clock steps) count
// as zero rather than landing below every bucket.
func seconds(d time.Duration) float64 {
	if d < 0 {
		return 0
	}
	return d.Seconds()
}
