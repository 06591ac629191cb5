package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// burstBufSize is the size of the pooled buffers small bursts are copied
// through. A burst that fills one is bulk, and the rest of it is spliced.
const burstBufSize = 16 << 10

var burstBufs = sync.Pool{New: func() any { b := make([]byte, burstBufSize); return &b }}

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
	b, err := newBurster(dst, src, nil)
	if err != nil {
		return io.Copy(dst, src)
	}
	for {
		if err := b.read(); err != nil {
			return b.total, err
		}
		if err := b.result(); err != nil || b.eof {
			return b.total, err
		}
	}
}

// burster is the state of one direction of copyBursts, kept between calls
// so that a parked direction (park_linux.go) can pick up where it left.
type burster struct {
	dst, src *net.TCPConn
	raw      syscall.RawConn
	total    int64
	ioErr    error // from read(2) or from writing to dst
	eof      bool
	bulk     bool  // a read filled the buffer: splice the rest
	h        *half // nil unless the direction can be parked
	waiting  bool  // the callback last returned to wait
	cb       func(uintptr) bool
}

func newBurster(dst, src *net.TCPConn, h *half) (*burster, error) {
	raw, err := src.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &burster{dst: dst, src: src, raw: raw, h: h}
	b.cb = b.copySmall
	return b, nil
}

// read copies small bursts until EOF, an error, a bulk burst or an error
// of the wait itself (closed, deadline), which it returns.
func (b *burster) read() error {
	b.bulk = false
	return b.raw.Read(b.cb)
}

// result finishes what read started: it splices a bulk burst, and returns
// the copy's error, if any.
func (b *burster) result() error {
	if b.ioErr == nil && b.bulk {
		n, err := spliceQueued(b.dst, b.src, b.raw)
		b.total += n
		b.ioErr = err
	}
	return b.ioErr
}

func (b *burster) copySmall(fd uintptr) bool {
	if b.waiting {
		b.waiting = false
		if b.h != nil {
			b.h.awake()
		}
	}
	for {
		buf := burstBufs.Get().(*[]byte)
		n, err := readFD(int(fd), *buf)
		if err == unix.EAGAIN {
			burstBufs.Put(buf) // not held while waiting
			b.waiting = true
			if b.h != nil {
				b.h.asleep()
			}
			return false
		}
		if err != nil || n == 0 {
			burstBufs.Put(buf)
			b.ioErr, b.eof = readError(b.src, err), err == nil
			return true
		}
		m, err := b.dst.Write((*buf)[:n])
		burstBufs.Put(buf)
		b.total += int64(m)
		if err != nil {
			b.ioErr = err
			return true
		}
		if n == burstBufSize {
			b.bulk = true
			return true
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
