//go:build !linux

package proxy

import (
	"net"
	"time"
)

// parker parks quiet relays on Linux only (park_linux.go); elsewhere
// every relay keeps its goroutines.
type parker struct{}

type parkedRelay struct{}

func (p *parker) startParked(client, upstream *net.TCPConn, idle time.Duration, done func(relayResult)) (*parkedRelay, bool) {
	return nil, false
}

func (r *parkedRelay) Close() error { return nil }

func (r *parkedRelay) copyFromClient() {}
