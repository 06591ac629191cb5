package proxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// relayResult says how a relayed connection ended.
type relayResult struct {
	fromClient, toClient int64 // bytes copied each way
	idle                 bool  // closed by the idle timeout
	err                  error // first error that was not a clean EOF
}

// relay copies both directions between client and upstream until both
// have finished, then closes both. Each direction is its own named copier;
// at EOF it half-closes the other side so a client that shuts down writing
// still gets the whole response. An error in either direction aborts
// both. client and upstream are the raw *net.TCPConn whenever possible,
// so io.Copy can use splice(2) and the bytes never enter user space.
//
// The idle timeout watches kernel byte counters (see activity) instead of
// wrapping reads in deadlines, which would defeat splice.
func relay(client, upstream net.Conn, fromClient copier, idle time.Duration) relayResult {
	var (
		res     relayResult
		abort   sync.Once
		errOnce sync.Once
	)
	closeBoth := func() {
		abort.Do(func() {
			client.Close()
			upstream.Close()
		})
	}
	var oneDone atomic.Bool // one side finished sending cleanly
	fail := func(err error) {
		if relayFailure(err, oneDone.Load()) {
			errOnce.Do(func() { res.err = err })
		}
		closeBoth()
	}
	watch := newIdleWatch(idle, func() { res.idle = true; closeBoth() }, client, upstream)

	done := make(chan struct{})
	go func() {
		defer close(done)
		res.toClient = copyUpstreamToClient(client, upstream, fail, &oneDone)
	}()
	res.fromClient = copyClientToUpstream(upstream, fromClient, fail, &oneDone)
	<-done
	closeBoth()
	watch.stop() // after this, the watcher's write of res.idle is visible
	return res
}

// copier moves the client's bytes to dst and reports how many it moved.
// A nil error means the client finished cleanly.
type copier func(dst net.Conn) (int64, error)

// rawCopier copies src byte for byte.
func rawCopier(src io.Reader) copier {
	return func(dst net.Conn) (int64, error) { return copyRaw(dst, src) }
}

// copyRaw copies with splice(2) in bursts between TCP connections (see
// copyBursts), and with io.Copy otherwise.
func copyRaw(dst net.Conn, src io.Reader) (int64, error) {
	d, ok1 := dst.(*net.TCPConn)
	s, ok2 := src.(*net.TCPConn)
	if ok1 && ok2 {
		return copyBursts(d, s)
	}
	return io.Copy(dst, src)
}

func copyClientToUpstream(upstream net.Conn, fromClient copier, fail func(error), done *atomic.Bool) int64 {
	n, err := fromClient(upstream)
	if err == nil {
		done.Store(true)
	}
	return finishHalf(upstream, n, err, fail)
}

func copyUpstreamToClient(client, upstream net.Conn, fail func(error), done *atomic.Bool) int64 {
	n, err := copyRaw(client, upstream)
	if err == nil {
		done.Store(true)
	}
	return finishHalf(client, n, err, fail)
}

// finishHalf half-closes dst after a clean end of its source, and aborts
// the whole relay after an error.
func finishHalf(dst net.Conn, n int64, err error, fail func(error)) int64 {
	if err != nil {
		// Even a connection closed under us (shutdown, the idle timeout)
		// must end the other direction, which may be waiting on a peer
		// that will never speak again.
		fail(err)
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		// All n bytes reached the kernel; a peer that is already gone
		// (ENOTCONN, reset) has no use for our FIN either.
		if err := cw.CloseWrite(); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
			fail(err)
		}
	} else {
		fail(errors.New("cannot half-close"))
	}
	return n
}

// relayFailure reports whether err, which ended a direction of a relay,
// is a failure worth reporting. Once one side has said all it had to say
// (oneDone), its peer may close without reading the rest: a client that
// does not wait for the origin's TLS close_notify, an origin that ends a
// keep-alive connection while the client's next request is on its way.
// The reset that follows is how TCP says so, not a failure of the relay.
// Nor is the error of a connection the relay closed itself.
func relayFailure(err error, oneDone bool) bool {
	return !(oneDone && isReset(err)) && !errors.Is(err, net.ErrClosed)
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ENOTCONN)
}

// idleWatch closes a relayed connection once no byte has moved in either
// direction for the idle duration. It checks rarely (once per idle period
// at most) and costs nothing per byte.
type idleWatch struct {
	timer   *time.Timer
	mu      sync.Mutex
	last    uint64
	stopped bool
}

func newIdleWatch(idle time.Duration, onIdle func(), conns ...net.Conn) *idleWatch {
	w := &idleWatch{}
	if idle <= 0 {
		return w
	}
	w.last = activity(conns...)
	w.timer = time.AfterFunc(idle, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.stopped {
			return
		}
		now := activity(conns...)
		if now != w.last {
			w.last = now
			w.timer.Reset(idle)
			return
		}
		onIdle()
	})
	return w
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
}
