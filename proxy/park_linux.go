package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ParkAfter is how long a direction of a relayed connection waits for
// bytes in a goroutine of its own before it is parked: handed to the
// parker's epoll set, its goroutine gone, until the kernel says it is
// readable again. Most relayed connections are idle most of the time
// (open WebSockets, keep-alive connections between requests); parked,
// one costs its sockets and a few hundred bytes instead of two goroutine
// stacks. A direction that has waited between ParkAfter and twice that
// is parked. Short, because a burst of new connections holds goroutines
// until its connections park, and Go keeps the memory of that peak; a
// park and a wake cost about as much as relaying one small request, so
// parking a connection that speaks every half second costs little.
const ParkAfter = 250 * time.Millisecond

// parker holds the parked directions of one Server's passthrough relays.
// One goroutine serves it while any relay is running: it waits on the
// epoll descriptor through Go's own poller, restarts the directions whose
// sockets become readable, and once per ParkAfter parks those that have
// waited long enough.
type parker struct {
	mu      sync.Mutex
	running bool              // the loop goroutine is alive
	epoll   *os.File          // the epoll set, while running
	epfd    int               // its descriptor (File.Fd would make it blocking)
	raw     syscall.RawConn   // epoll's
	halves  map[*half]bool    // every running or parked direction
	parked  map[uint64]*half  // by the token registered with epoll
	token   uint64            // last token given out
	kicks   []*half           // scratch for sweep
	epoch   atomic.Uint32     // ParkAfter ticks since the loop started
	parks   atomic.Int64      // directions parked so far (tests)
	events  []unix.EpollEvent // loop's scratch
}

// Direction states.
const (
	halfRunning = iota // in its goroutine, copying
	halfWaiting        // in its goroutine, waiting in Go's poller
	halfParked         // in the epoll set, no goroutine
)

// half is one direction of a parked-capable relay.
type half struct {
	p     *parker
	r     *parkedRelay
	b     *burster
	state atomic.Int32
	since atomic.Uint32 // p.epoch when the wait began

	mu      sync.Mutex // orders parking against waking and kicking
	kicked  bool       // the sweeper set a past read deadline on src
	token   uint64     // valid while parked
	inEpoll bool       // src is in the epoll set (maybe disabled, after a oneshot)
}

// asleep and awake are called by the burster around each wait in Go's
// poller, from the direction's own goroutine.
func (h *half) asleep() {
	h.since.Store(h.p.epoch.Load())
	h.state.Store(halfWaiting)
}

func (h *half) awake() { h.state.Store(halfRunning) }

// kick ends a long wait in Go's poller by moving src's read deadline into
// the past; the direction sees the timeout and parks itself.
func (h *half) kick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state.Load() == halfWaiting && !h.kicked {
		h.kicked = true
		h.b.src.SetReadDeadline(aLongTimeAgo)
	}
}

// run copies until the direction ends or parks.
func (h *half) run() {
	for {
		err := h.b.read()
		h.mu.Lock()
		kicked := h.kicked
		if kicked {
			h.kicked = false
			h.b.src.SetReadDeadline(time.Time{})
		}
		h.mu.Unlock()
		if kicked && errors.Is(err, os.ErrDeadlineExceeded) {
			if h.park() {
				return
			}
			continue
		}
		if err == nil {
			err = h.b.result()
			if err == nil && !h.b.eof {
				continue
			}
		}
		h.r.halfDone(h, err)
		return
	}
}

// park puts src in the epoll set, to be woken by its next byte (or FIN),
// and reports whether it did; the caller's goroutine then ends.
func (h *half) park() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.r.aborted.Load() {
		return false // closing: stay to see the close
	}
	p := h.p
	p.mu.Lock()
	p.token++
	h.token = p.token
	p.parked[h.token] = h
	p.mu.Unlock()
	op := unix.EPOLL_CTL_ADD
	if h.inEpoll {
		op = unix.EPOLL_CTL_MOD
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(h.token), Pad: int32(h.token >> 32)}
	var cerr error
	err := h.b.raw.Control(func(fd uintptr) { cerr = unix.EpollCtl(p.epollFD(), op, int(fd), &ev) })
	if err != nil || cerr != nil {
		p.mu.Lock()
		delete(p.parked, h.token)
		p.mu.Unlock()
		return false
	}
	h.inEpoll = true
	h.state.Store(halfParked)
	p.parks.Add(1)
	return true
}

// wake restarts a parked direction: token is the one its event carried,
// or 0 to wake it whatever it is parked under (the relay is closing).
func (h *half) wake(token uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state.Load() != halfParked || (token != 0 && token != h.token) {
		return
	}
	if token == 0 {
		p := h.p
		p.mu.Lock()
		delete(p.parked, h.token)
		p.mu.Unlock()
		// Out of the set before its socket is closed: a closed
		// descriptor's number can be reused by the next connection.
		h.b.raw.Control(func(fd uintptr) { unix.EpollCtl(p.epollFD(), unix.EPOLL_CTL_DEL, int(fd), nil) })
		h.inEpoll = false
	}
	h.state.Store(halfRunning)
	go h.run()
}

func (p *parker) epollFD() int { return p.epfd }

// add registers the relay's directions, starting the loop if needed.
func (p *parker) add(hs ...*half) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		if err := p.open(); err != nil {
			return err
		}
		p.running = true
		go p.loop(p.epoll, p.raw)
	}
	if p.halves == nil {
		p.halves, p.parked = map[*half]bool{}, map[uint64]*half{}
	}
	for _, h := range hs {
		p.halves[h] = true
	}
	return nil
}

func (p *parker) remove(h *half) {
	p.mu.Lock()
	delete(p.halves, h)
	p.mu.Unlock()
}

func (p *parker) open() error {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return os.NewSyscallError("fcntl", err)
	}
	// Non-blocking, so os.NewFile puts it in Go's poller: the loop
	// waits on it like on a socket, without holding a thread.
	f := os.NewFile(uintptr(fd), "relay46-park")
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	p.epoll, p.epfd, p.raw = f, fd, raw
	return nil
}

// loop serves the epoll set until no relay is left.
func (p *parker) loop(f *os.File, raw syscall.RawConn) {
	if p.events == nil {
		p.events = make([]unix.EpollEvent, 256)
	}
	tick := time.Now().Add(ParkAfter)
	for {
		f.SetReadDeadline(tick)
		var n int
		err := raw.Read(func(fd uintptr) bool {
			n = epollReady(int(fd), p.events)
			return n > 0
		})
		for _, ev := range p.events[:n] {
			p.dispatch(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
		if err == nil && time.Now().Before(tick) {
			continue
		}
		if !p.sweep() {
			return
		}
		tick = time.Now().Add(ParkAfter)
	}
}

// epollReady returns the events ready now, without waiting.
func epollReady(epfd int, events []unix.EpollEvent) int {
	for {
		n, err := unix.EpollWait(epfd, events, 0)
		if err != unix.EINTR {
			return max(n, 0)
		}
	}
}

func (p *parker) dispatch(token uint64) {
	p.mu.Lock()
	h := p.parked[token]
	delete(p.parked, token)
	p.mu.Unlock()
	if h != nil {
		h.wake(token)
	}
}

// sweep advances the epoch and kicks the directions that have waited in
// Go's poller since before the previous one. It reports false, having
// closed the epoll set, when no relay is left.
func (p *parker) sweep() bool {
	e := p.epoch.Add(1)
	p.mu.Lock()
	if len(p.halves) == 0 {
		p.running = false
		p.epoll.Close()
		p.epoll, p.raw = nil, nil
		p.mu.Unlock()
		return false
	}
	p.kicks = p.kicks[:0]
	for h := range p.halves {
		if h.state.Load() == halfWaiting && e-h.since.Load() >= 2 {
			p.kicks = append(p.kicks, h)
		}
	}
	kicks := p.kicks
	p.mu.Unlock()
	for _, h := range kicks {
		h.kick()
	}
	return true
}

// parkedRelay is relay's counterpart for two TCP connections on Linux: the
// same copying, half-closing and error rules, but it returns at once, its
// directions park when quiet, and done reports the result when both have
// finished.
type parkedRelay struct {
	p        *parker
	client   *net.TCPConn
	upstream *net.TCPConn
	halves   [2]*half // 0: client to upstream, 1: upstream to client
	left     atomic.Int32
	aborted  atomic.Bool
	oneDone  atomic.Bool
	errOnce  sync.Once
	res      relayResult
	watch    *idleWatch
	done     func(relayResult)
}

// startParked starts relaying between client and upstream: the upstream's
// bytes in a goroutine of their own, the client's once the caller calls
// copyFromClient. It reports false, having started nothing, when the
// parker cannot be used; the caller then relays the usual way.
func (p *parker) startParked(client, upstream *net.TCPConn, idle time.Duration, done func(relayResult)) (*parkedRelay, bool) {
	r := &parkedRelay{p: p, client: client, upstream: upstream, done: done}
	for i, pair := range [2][2]*net.TCPConn{{upstream, client}, {client, upstream}} {
		h := &half{p: p, r: r}
		b, err := newBurster(pair[0], pair[1], h)
		if err != nil {
			return nil, false
		}
		h.b = b
		r.halves[i] = h
	}
	if err := p.add(r.halves[0], r.halves[1]); err != nil {
		return nil, false
	}
	r.left.Store(2)
	r.watch = newIdleWatch(idle, func() { r.res.idle = true; r.Close() }, client, upstream)
	go r.halves[1].run()
	return r, true
}

// copyFromClient copies the client's bytes in the calling goroutine (the
// connection's handler, whose stack has already grown) until that
// direction ends or parks.
func (r *parkedRelay) copyFromClient() { r.halves[0].run() }

// Close aborts the relay: parked directions are woken first, so that each
// sees its socket closed and finishes.
func (r *parkedRelay) Close() error {
	if r.aborted.Swap(true) {
		return nil
	}
	for _, h := range r.halves {
		h.wake(0)
	}
	r.client.Close()
	r.upstream.Close()
	return nil
}

// halfDone ends one direction as relay's copiers do: after a clean EOF it
// half-closes the other side, after an error it aborts both. The last
// direction to finish reports.
func (r *parkedRelay) halfDone(h *half, err error) {
	dst := h.b.dst
	if err == nil {
		r.oneDone.Store(true)
	}
	finishHalf(dst, h.b.total, err, r.fail)
	if h == r.halves[0] {
		r.res.fromClient = h.b.total
	} else {
		r.res.toClient = h.b.total
	}
	r.p.remove(h)
	if r.left.Add(-1) > 0 {
		return
	}
	r.Close()
	r.watch.stop() // after this, the watcher's write of res.idle is visible
	r.done(r.res)
}

func (r *parkedRelay) fail(err error) {
	if relayFailure(err, r.oneDone.Load()) {
		r.errOnce.Do(func() { r.res.err = err })
	}
	r.Close()
}
