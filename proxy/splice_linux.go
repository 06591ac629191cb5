package proxy

import (
	"errors"
	"io"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// copyBursts copies src to dst with splice(2), one burst of already
// received bytes at a time. io.Copy between two TCP connections splices
// too, but it holds a pipe (two file descriptors) from the first byte to
// EOF, idle or not: six descriptors per relayed connection instead of two,
// which runs a busy relay out of descriptors long before memory. Here a
// connection with nothing to read waits in the poller holding no pipe.
func copyBursts(dst, src *net.TCPConn) (int64, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var (
		total int64
		avail int
		werr  error
		lr    = &io.LimitedReader{R: src}
	)
	wait := func(fd uintptr) bool {
		avail, werr = readable(int(fd))
		return !errors.Is(werr, unix.EAGAIN)
	}
	for {
		err := raw.Read(wait)
		if err == nil && werr != nil {
			// Say which connection failed, as net's own errors do.
			err = &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("recv", werr)}
		}
		if err != nil {
			return total, err
		}
		if avail == 0 {
			return total, nil // EOF
		}
		lr.N = int64(avail)
		n, err := dst.ReadFrom(lr)
		total += n
		if err != nil {
			return total, err
		}
	}
}

// readable reports how many bytes wait in fd's receive queue: 0 at EOF,
// EAGAIN when there are none yet.
func readable(fd int) (int, error) {
	n, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
	if err != nil || n > 0 {
		return n, err
	}
	var b [1]byte
	m, _, err := unix.Recvfrom(fd, b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	if err != nil {
		return 0, err
	}
	return m, nil // 0: the peer finished sending; 1: data arrived since SIOCINQ
}
