package config

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written in Go syntax ("5s", "1h30m").
type Duration time.Duration

func (d *Duration) parseScalar(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("invalid duration %q (write it like 5s, 250ms or 1h)", s)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Size is a byte count written as a number with an optional unit
// (B, KB, MB, GB, KiB, MiB, GiB).
type Size int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

func (z *Size) parseScalar(s string) error {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return fmt.Errorf("invalid size %q (write it like 512KiB, 250MB or 1GiB)", s)
	}
	*z = Size(n * mult)
	return nil
}

// Mode says what the relay does with a route's TLS connections.
type Mode string

// The modes a route can have.
const (
	// Passthrough relays TLS untouched, routed by SNI; the origin holds the certificate.
	Passthrough Mode = "passthrough"
	// Terminate ends TLS at the relay and proxies HTTP to the origin.
	Terminate Mode = "terminate"
)

// ProxyProtocol selects the PROXY protocol header sent to the origin.
type ProxyProtocol string

// The PROXY protocol settings.
const (
	ProxyOff ProxyProtocol = "off"
	ProxyV1  ProxyProtocol = "v1"
	ProxyV2  ProxyProtocol = "v2"
)

// Balance says how a route with several upstreams spreads new connections.
type Balance string

// The balance settings.
const (
	// Priority sends every connection to the first healthy upstream in the
	// order written; the others are standbys.
	Priority Balance = "priority"
	// RoundRobin takes turns among the healthy upstreams.
	RoundRobin Balance = "round_robin"
)
