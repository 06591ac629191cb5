package metrics

import "time"

// Listening creates a listener's connection series at zero when it starts
// serving, so "no traffic since restart" is a flat series rather than a
// missing one (which alerts cannot see).
func (m *Metrics) Listening(listener string) {
	if m == nil {
		return
	}
	listener = named(listener)
	m.connAccepted.WithLabelValues(listener)
	m.connInFlight.WithLabelValues(listener)
}

// ConnStarted records an accepted TCP connection on a listener. Every call
// must be paired with one ConnFinished for the same listener.
func (m *Metrics) ConnStarted(listener string) {
	if m == nil {
		return
	}
	listener = named(listener)
	m.connAccepted.WithLabelValues(listener).Inc()
	m.connInFlight.WithLabelValues(listener).Inc()
}

// ConnFinished records a closed connection: route is the route name or "none"
// when it was never routed, mode one of the Mode constants, outcome one of the
// Outcome constants, d the time since accept, and the byte counts what was
// relayed in each direction (including replayed peeked bytes).
func (m *Metrics) ConnFinished(listener, route, mode, outcome string, d time.Duration, bytesFromClient, bytesToClient int64) {
	if m == nil {
		return
	}
	listener, route, mode = named(listener), named(route), modes.fold(mode)
	m.connInFlight.WithLabelValues(listener).Dec()
	m.connFinished.WithLabelValues(listener, route, mode, outcomes.fold(outcome)).Inc()
	m.connDuration.WithLabelValues(listener, mode).Observe(seconds(d))
	// Unrouted connections relay nothing; don't create byte series for them.
	if bytesFromClient > 0 {
		m.relayedBytes.WithLabelValues(route, dirClientToUpstream).Add(float64(bytesFromClient))
	}
	if bytesToClient > 0 {
		m.relayedBytes.WithLabelValues(route, dirUpstreamToClient).Add(float64(bytesToClient))
	}
}

// PeekFailed records a connection whose ClientHello (or HTTP request head)
// could not be read; reason is one of the Peek constants.
func (m *Metrics) PeekFailed(listener, reason string) {
	if m == nil {
		return
	}
	m.peekFailures.WithLabelValues(named(listener), peekReasons.fold(reason)).Inc()
}

// UnknownHost records a connection whose SNI (https) or Host (http) matched
// no route, including a missing SNI. The name itself is deliberately not
// recorded: it comes from the client.
func (m *Metrics) UnknownHost(listener string) {
	if m == nil {
		return
	}
	m.unknownHost.WithLabelValues(named(listener)).Inc()
}

// Refused records a connection refused by a limit; reason is one of the
// Refused constants.
func (m *Metrics) Refused(listener, reason string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(named(listener), refusedReasons.fold(reason)).Inc()
}

// DialDone records one upstream dial attempt of a route, failed if err != nil.
func (m *Metrics) DialDone(route string, d time.Duration, err error) {
	if m == nil {
		return
	}
	route = named(route)
	m.dialDuration.WithLabelValues(route).Observe(seconds(d))
	if err != nil {
		m.dialFailures.WithLabelValues(route).Inc()
	}
}

// UpstreamHealth records whether a route's upstream address answers. addr
// must come from the config or from resolving/pushing the configured upstream;
// call UpstreamRemoved when an address is no longer used so a stale
// relay46_upstream_up series does not keep an alert firing.
func (m *Metrics) UpstreamHealth(route, addr string, up bool) {
	if m == nil {
		return
	}
	v := 0.0
	if up {
		v = 1
	}
	m.upstreamUp.WithLabelValues(named(route), named(addr)).Set(v)
}

// UpstreamRemoved deletes the relay46_upstream_up series of an address that a
// route no longer uses (after a prefix change or a config reload).
func (m *Metrics) UpstreamRemoved(route, addr string) {
	if m == nil {
		return
	}
	m.upstreamUp.DeleteLabelValues(named(route), named(addr))
}

// UpstreamAddrChanged records that a route's upstream address changed, by
// re-resolution or by an authenticated push from home.
func (m *Metrics) UpstreamAddrChanged(route string) {
	if m == nil {
		return
	}
	m.addrChanges.WithLabelValues(named(route)).Inc()
}

// UpstreamIdentityFailed records an address refused by the origin
// identity check: a stale prefix handed to someone else, or a wrong pin.
func (m *Metrics) UpstreamIdentityFailed(route string) {
	if m == nil {
		return
	}
	m.identityFails.WithLabelValues(named(route)).Inc()
}

// HTTPRequest records a request proxied on a terminated route. The method is
// folded to the common methods or "other" and the status to its class.
func (m *Metrics) HTTPRequest(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	route = named(route)
	m.httpRequests.WithLabelValues(route, httpMethods.fold(method), statusClass(status)).Inc()
	m.httpDuration.WithLabelValues(route).Observe(seconds(d))
}

// CertExpiry records the NotAfter of the certificate served for a terminated
// host (a host from the config). A zero notAfter removes the series, as
// CertRemoved does.
func (m *Metrics) CertExpiry(host string, notAfter time.Time) {
	if m == nil {
		return
	}
	if notAfter.IsZero() {
		m.CertRemoved(host)
		return
	}
	m.certExpiry.WithLabelValues(named(host)).Set(float64(notAfter.Unix()))
}

// CertRemoved deletes the expiry series of a host that is no longer
// terminated, so the expiry alert does not fire for it.
func (m *Metrics) CertRemoved(host string) {
	if m == nil {
		return
	}
	m.certExpiry.DeleteLabelValues(named(host))
}

// ACMEAttempt records one ACME attempt: kind is ACMEObtain or ACMERenew,
// result ResultOK or ResultErr.
func (m *Metrics) ACMEAttempt(kind, result string) {
	if m == nil {
		return
	}
	m.acmeAttempts.WithLabelValues(acmeKinds.fold(kind), results.fold(result)).Inc()
}

// ConfigReload records a config reload. A successful one also sets the last
// success time; a failed one sets relay46_config_last_reload_successful to 0
// until the next success.
func (m *Metrics) ConfigReload(ok bool) {
	if m == nil {
		return
	}
	m.reloads.WithLabelValues(boolResult(ok)).Inc()
	if !ok {
		m.reloadOK.Set(0)
		return
	}
	m.configOK()
}

// ConfigLoaded records the config loaded at startup: it is not a reload, but
// it is the last successful load.
func (m *Metrics) ConfigLoaded() {
	if m == nil {
		return
	}
	m.configOK()
}

func (m *Metrics) configOK() {
	m.reloadOK.Set(1)
	m.reloadSuccess.Set(float64(m.now().UnixNano()) / 1e9)
}
