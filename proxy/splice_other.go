//go:build !linux

package proxy

import (
	"io"
	"net"
)

func copyBursts(dst, src *net.TCPConn) (int64, error) { return io.Copy(dst, src) }
