package config

// The defaults of the upstream keys, as every route and config without
// them gets them.
var (
	defaultEjection = Ejection{Failures: DefaultEjectFailures, Duration: DefaultEjectDuration}
	defaultDNSTTL   = TTLBounds{Floor: DefaultDNSTTLFloor, Ceiling: DefaultDNSTTLCeiling}
	defaultUpdates  = Updates{Burst: DefaultUpdateBurst, Refill: DefaultUpdateRefill}
)
