//go:build !linux

package proxy

import (
	"net"
	"time"
)

// activity cannot read kernel byte counters here; it reports a new value
// every time, so the idle timeout never closes a connection on this OS.
func activity(...net.Conn) uint64 { return uint64(time.Now().UnixNano()) }
