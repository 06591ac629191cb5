package proxy

import (
	"io"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// copyBufSize is the size of the pooled buffers small bursts are copied
// through. A burst that fills one is bulk, and the rest of it is spliced.
const copyBufSize = 16 << 10

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyBursts copies src to dst until EOF, one burst of received bytes at
// a time, holding nothing while src has nothing to say: no buffer, no
// pipe.
//
// Most bursts on a relayed TLS connection are small (a request, a
// response, a handshake flight): those take one read(2) into a pooled
// buffer and one write(2), the two system calls any proxy needs. A burst
// that fills the buffer is bulk; the rest of it goes through splice(2), so
// its bytes never enter user space (io.Copy between two TCP connections
// splices too, but it holds a pipe — two descriptors — from the first byte
// to EOF, idle or not).
//
// Small bursts are copied inside the read callback, so that one
// RawConn.Read serves a whole conversation of them; only bulk, which
// splice must read itself, leaves it. A short read does not prove the
// queue empty — a FIN that came with the data is only reported by the
// next read — so every burst ends with the read that hears EAGAIN.
func copyBursts(dst, src *net.TCPConn) (int64, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var (
		total   int64
		ioErr   error // from read(2) or from writing to dst
		eof     bool
		bulk    bool // a read filled the buffer: splice the rest
	)
	copySmall := func(fd uintptr) bool {
		for {
			buf := copyBufs.Get().(*[]byte)
			n, err := readFD(int(fd), *buf)
			if err == unix.EAGAIN {
				copyBufs.Put(buf) // not held while waiting
				return false
			}
			if err != nil || n == 0 {
				copyBufs.Put(buf)
				ioErr, eof = readError(src, err), err == nil
				return true
			}
			m, err := dst.Write((*buf)[:n])
			copyBufs.Put(buf)
			total += int64(m)
			if err != nil {
				ioErr = err
				return true
			}
			if n == copyBufSize {
				bulk = true
				return true
			}
		}
	}
	for {
		bulk = false
		if err := raw.Read(copySmall); err != nil {
			return total, err
		}
		if ioErr != nil || eof {
			return total, ioErr
		}
		if bulk {
			n, err := spliceQueued(dst, src, raw)
			total += n
			if err != nil {
				return total, err
			}
		}
	}
}

func readFD(fd int, p []byte) (int, error) {
	for {
		n, err := unix.Read(fd, p)
		if err != unix.EINTR {
			return n, err
		}
	}
}

// readError says which connection failed, as net's own errors do.
func readError(src *net.TCPConn, err error) error {
	if err == nil {
		return nil
	}
	return &net.OpError{Op: "read", Net: "tcp", Source: src.LocalAddr(), Addr: src.RemoteAddr(), Err: os.NewSyscallError("read", err)}
}

// spliceQueued splices what is waiting in src's receive queue to dst, in
// as many rounds as it keeps arriving, and returns once the queue is empty.
func spliceQueued(dst, src *net.TCPConn, raw interface {
	Control(func(uintptr)) error
}) (int64, error) {
	var total int64
	lr := &io.LimitedReader{R: src}
	for {
		var avail int
		var qerr error
		if err := raw.Control(func(fd uintptr) { avail, qerr = unix.IoctlGetInt(int(fd), unix.SIOCINQ) }); err != nil {
			return total, err
		}
		if qerr != nil || avail == 0 {
			// An error here shows up again on the next read, with context.
			return total, nil
		}
		lr.N = int64(avail)
		n, err := dst.ReadFrom(lr)
		total += n
		if err != nil {
			return total, err
		}
	}
}
