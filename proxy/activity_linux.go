package proxy

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// activity sums the bytes the kernel has received on each TCP connection
// (TCP_INFO tcpi_bytes_received, Linux 4.1+). A relayed byte in either
// direction is first received on one of the two sockets, so an unchanged
// sum means nothing moved, even while splice(2) does the copying.
func activity(conns ...net.Conn) uint64 {
	var sum uint64
	for _, c := range conns {
		sc, ok := c.(syscall.Conn)
		if !ok {
			if u, ok := c.(interface{ NetConn() net.Conn }); ok {
				sc, ok = u.NetConn().(syscall.Conn)
			}
			if !ok {
				continue
			}
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			continue
		}
		raw.Control(func(fd uintptr) {
			if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
				sum += info.Bytes_received
			}
		})
	}
	return sum
}
