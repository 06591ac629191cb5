package config

// Documented defaults of the flood limits (see the README). They are
// generous on purpose: many subscribers of a 4o6 line or a mobile carrier
// share one IPv4 address, and all of them must get through.
const (
	DefaultMaxConns          = 20000
	DefaultMaxHandshakes     = 2000
	DefaultMaxConnsPerSource = 256
	DefaultSourceRate        = 100 // new connections per second per source
	DefaultSourceBurst       = 400
)

// Limits are the relay's flood limits; 0 turns one off.
type Limits struct {
	MaxConns          int     // connections open at once
	MaxHandshakes     int     // connections still sending ClientHello / request head
	MaxConnsPerSource int     // per IPv4 address or IPv6 /64
	SourceRate        float64 // new connections per second per source
	SourceBurst       int     // bucket size for SourceRate
}

type rawLimits struct {
	MaxConns          *int     `yaml:"max_conns"`
	MaxHandshakes     *int     `yaml:"max_handshakes"`
	MaxConnsPerSource *int     `yaml:"max_conns_per_source"`
	SourceRate        *float64 `yaml:"source_rate"`
	SourceBurst       *int     `yaml:"source_burst"`
}

func (d *decoder) buildLimits(raw rawLimits) Limits {
	l := Limits{
		MaxConns: DefaultMaxConns, MaxHandshakes: DefaultMaxHandshakes,
		MaxConnsPerSource: DefaultMaxConnsPerSource, SourceRate: DefaultSourceRate, SourceBurst: DefaultSourceBurst,
	}
	setInt := func(dst *int, v *int, key string) {
		if v == nil {
			return
		}
		if *v < 0 {
			d.errAt(key, "must not be negative (0 turns the limit off)")
			return
		}
		*dst = *v
	}
	setInt(&l.MaxConns, raw.MaxConns, "limits.max_conns")
	setInt(&l.MaxHandshakes, raw.MaxHandshakes, "limits.max_handshakes")
	setInt(&l.MaxConnsPerSource, raw.MaxConnsPerSource, "limits.max_conns_per_source")
	setInt(&l.SourceBurst, raw.SourceBurst, "limits.source_burst")
	if raw.SourceRate != nil {
		if *raw.SourceRate < 0 {
			d.errAt("limits.source_rate", "must not be negative (0 turns the limit off)")
		} else {
			l.SourceRate = *raw.SourceRate
		}
	}
	if l.SourceRate > 0 && l.SourceBurst < 1 {
		d.errAt("limits.source_burst", "must be at least 1 while source_rate is set")
	}
	if l.MaxConns > 0 && l.MaxHandshakes > l.MaxConns {
		d.errAt("limits.max_handshakes", "%d is more than limits.max_conns (%d)", l.MaxHandshakes, l.MaxConns)
	}
	return l
}

func (d *decoder) routeOperate(r *Route, raw *rawRoute, key string) {
	r.AccessLog = true
	if raw.AccessLog != nil {
		r.AccessLog = *raw.AccessLog
	}
	if raw.MaxConns != nil {
		if *raw.MaxConns < 0 {
			d.errAt(key+".max_conns", "must not be negative (0 means no per-route limit)")
		} else {
			r.MaxConns = *raw.MaxConns
		}
	}
}
