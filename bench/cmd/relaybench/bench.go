package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// direct is the pseudo-peer for requests straight to the origin.
const direct = "direct"

// bench holds one run: the processes and the samples taken from them.
type bench struct {
	opts   options
	spec   *Spec
	client *client
	log    io.Writer

	origin  *proc
	peers   []*proc // running peers, in spec order
	idleN   int     // connections held in the idle test, the same for every peer
	fdsPer  map[string]float64
	notes   []string // peers left out and why, caveats found while running
	samples []sample
}

// sample is one measured figure of one peer in one repetition.
type sample struct {
	Rep    int     `json:"rep"`
	Peer   string  `json:"peer"`
	Metric string  `json:"metric"`
	Value  float64 `json:"value"`
}

// The metrics, by the names used in samples and in latest.json.
const (
	mKARate      = "keepalive_rps"
	mKACPU       = "keepalive_cpu_us_per_req"
	mNCRate      = "newconn_per_s"
	mNCCPU       = "newconn_cpu_us_per_conn"
	mBulkMBps    = "bulk_mb_per_s"
	mBulkCPU     = "bulk_cpu_s_per_gb"
	mLatP50      = "latency_p50_us"
	mLatP99      = "latency_p99_us"
	mAddP50      = "added_latency_p50_us"
	mAddP99      = "added_latency_p99_us"
	mIdleKiB     = "idle_kib_per_conn"
	mIdleOpen    = "idle_conns_open"
	mIdleFDs     = "idle_fds_per_conn"
	mIdleBaseMiB = "idle_rss_before_mib"
	mIdleMiB     = "idle_rss_after_mib"
)

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(b.log, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func (b *bench) add(rep int, peer, metric string, v float64) {
	b.samples = append(b.samples, sample{Rep: rep, Peer: peer, Metric: metric, Value: v})
}

// startAll starts the origin, then each peer, and checks each answers.
// A peer that cannot start is left out with a note; only the origin is
// essential.
func (b *bench) startAll(ctx context.Context) error {
	b.notes = append(b.notes, b.spec.Notes...)
	o, err := startProc(b.spec.Origin, b.spec.PGIDFile)
	if err != nil {
		return err
	}
	b.origin = o
	if err := b.waitReady(ctx, o, 15*time.Second); err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	for _, ps := range b.spec.Peers {
		name := ps.Label + " (" + ps.Group + ")"
		if ps.Unavailable != "" {
			b.notes = append(b.notes, fmt.Sprintf("%s: %s", name, ps.Unavailable))
			continue
		}
		p, err := b.startPeer(ctx, ps)
		if err != nil {
			b.logf("%s left out: %v", ps.Name, err)
			if ps.Optional {
				b.notes = append(b.notes, fmt.Sprintf("%s: not available in this build (%v).", name, err))
			} else {
				b.notes = append(b.notes, fmt.Sprintf("%s: could not be started (%v).", name, err))
			}
			continue
		}
		b.peers = append(b.peers, p)
	}
	b.sizeIdle(ctx)
	return ctx.Err()
}

// sizeIdle picks the idle test's connection count: the requested number,
// unless a peer needs so many descriptors per connection that the open-file
// limit could not hold it; then the largest count every peer can hold, so
// that all are measured at the same load.
func (b *bench) sizeIdle(ctx context.Context) {
	const sample = 50
	b.idleN = b.opts.idleConns
	limit := fdLimit()
	worst, worstPeer := 0.0, ""
	b.fdsPer = map[string]float64{}
	for _, p := range b.peers {
		before := p.fds()
		conns, err := b.openIdle(ctx, p.spec.Addr, sample)
		time.Sleep(200 * time.Millisecond)
		per := float64(p.fds()-before) / sample
		for _, k := range conns {
			k.Close()
		}
		if err != nil {
			continue
		}
		b.fdsPer[p.spec.Name] = per
		if per > worst {
			worst, worstPeer = per, p.spec.Label+" ("+p.spec.Group+")"
		}
	}
	if worst <= 0 {
		return
	}
	fit := int(float64(limit-200)/worst) / 100 * 100
	if fit < b.idleN {
		b.notes = append(b.notes, fmt.Sprintf("The idle test holds %d connections through every peer, not %d: the open-file limit is %d and %s keeps %.0f descriptors open per idle connection.",
			fit, b.idleN, limit, worstPeer, worst))
		b.idleN = max(fit, 100)
	}
}

func fdLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1024
	}
	return int(min(lim.Cur, 1<<30))
}

func (b *bench) startPeer(ctx context.Context, ps PeerSpec) (*proc, error) {
	p, err := startProc(ps, b.spec.PGIDFile)
	if err != nil {
		return nil, err
	}
	wait := 15 * time.Second
	if ps.Optional {
		wait = 5 * time.Second
	}
	if err := b.waitReady(ctx, p, wait); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// stopAll stops every process; a second call does nothing.
func (b *bench) stopAll() {
	for _, p := range b.peers {
		if !p.exited() {
			p.stop()
		}
	}
	if b.origin != nil && !b.origin.exited() {
		b.origin.stop()
	}
}

// machineLoad notes how much CPU the machine spent outside this benchmark
// while it ran (other users of a shared machine, builds) and how much the
// hypervisor took: context for how noisy the figures are.
func (b *bench) machineLoad(started time.Time, cpu0 cpuTimes) {
	cpu1 := readCPUTimes()
	wall := time.Since(started).Seconds()
	if cpu1.busy == 0 || wall <= 0 {
		return
	}
	other := (cpu1.busy - cpu0.busy - selfAndChildrenCPU()).Seconds() / wall
	steal := (cpu1.steal - cpu0.steal).Seconds() / wall
	if b.spec.Machine == nil {
		b.spec.Machine = map[string]string{}
	}
	b.spec.Machine["other_cpu_cores"] = fmt.Sprintf("%.2f", max(other, 0))
	b.spec.Machine["steal_cpu_cores"] = fmt.Sprintf("%.2f", steal)
	b.notes = append(b.notes, fmt.Sprintf("While the run lasted, processes outside the benchmark used about %.2f of the %s cores on average, and the hypervisor stole %.2f.",
		max(other, 0), b.spec.Machine["nproc"], steal))
}

// target is something load is driven at: a peer, or the origin directly.
type target struct {
	name string
	addr string
	p    *proc // nil for direct
}

// measure runs every test for every peer, rep by rep. Within a repetition
// each test visits all peers before the next test starts, and the visiting
// order rotates from one repetition to the next, so slow drifts of the
// machine spread evenly over the peers.
func (b *bench) measure(ctx context.Context) error {
	for rep := 1; rep <= b.opts.reps; rep++ {
		order := b.order(rep)
		tests := []struct {
			name   string
			direct bool
			fn     func(context.Context, int, target) error
		}{
			{"keep-alive", true, b.keepAlive},
			{"new-conn", true, b.newConns},
			{"bulk", true, b.bulk},
			{"latency", false, b.latency},
			{"idle", false, b.idle},
		}
		for _, t := range tests {
			if !b.opts.runs(t.name) {
				continue
			}
			for _, tg := range order {
				if tg.p == nil && !t.direct {
					continue
				}
				if err := ctx.Err(); err != nil {
					return err
				}
				b.logf("rep %d/%d %-10s %s", rep, b.opts.reps, t.name, tg.name)
				if err := t.fn(ctx, rep, tg); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					b.logf("  %s %s failed: %v", t.name, tg.name, err)
					b.notes = append(b.notes, fmt.Sprintf("rep %d: %s test of %s failed: %v", rep, t.name, tg.name, err))
				}
			}
		}
	}
	return nil
}

func (b *bench) order(rep int) []target {
	ts := []target{{name: direct, addr: b.spec.Origin.Addr}}
	for _, p := range b.peers {
		ts = append(ts, target{name: p.spec.Name, addr: p.spec.Addr, p: p})
	}
	k := (rep - 1) % len(ts)
	return append(ts[k:], ts[:k]...)
}

// cpuOf is the peer's CPU time so far; zero for direct.
func cpuOf(tg target) time.Duration {
	if tg.p == nil {
		return 0
	}
	return tg.p.cpu()
}

// counted runs loop in n goroutines for warm+dur and returns how many
// operations completed inside the measured window, its length, and the
// peer CPU time spent in it.
func (b *bench) counted(ctx context.Context, tg target, n int, loop func(ctx context.Context, ops *atomic.Int64, errs *atomic.Int64)) (int64, time.Duration, time.Duration, int64) {
	ctx, cancel := context.WithCancel(ctx)
	var ops, errs atomic.Int64
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() { loop(ctx, &ops, &errs) })
	}
	sleep(ctx, b.opts.warm)
	o0, c0, e0, t0 := ops.Load(), cpuOf(tg), errs.Load(), time.Now()
	sleep(ctx, b.opts.dur)
	o1, c1, e1, t1 := ops.Load(), cpuOf(tg), errs.Load(), time.Now()
	cancel()
	wg.Wait()
	return o1 - o0, t1.Sub(t0), c1 - c0, e1 - e0
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// keepAlive measures requests per second over kaConns keep-alive
// connections, each sending its next request as soon as the last response
// is read. A connection the server closes is replaced.
func (b *bench) keepAlive(ctx context.Context, rep int, tg target) error {
	loop := func(ctx context.Context, ops, errs *atomic.Int64) {
		var k *conn
		defer func() {
			if k != nil {
				k.Close()
			}
		}()
		for ctx.Err() == nil {
			if k == nil {
				var err error
				if k, err = b.client.dial(ctx, tg.addr); err != nil {
					errs.Add(1)
					sleep(ctx, 10*time.Millisecond)
					continue
				}
			}
			_, err := k.do(b.client.smallReq)
			if err == nil || errors.Is(err, errClosed) {
				ops.Add(1)
			} else if ctx.Err() == nil {
				errs.Add(1)
			}
			if err != nil {
				k.Close()
				k = nil
			}
		}
	}
	n, window, cpu, errs := b.counted(ctx, tg, b.opts.kaConns, loop)
	if n == 0 {
		return fmt.Errorf("no request completed (%d errors)", errs)
	}
	b.add(rep, tg.name, mKARate, float64(n)/window.Seconds())
	if tg.p != nil {
		b.add(rep, tg.name, mKACPU, float64(cpu.Microseconds())/float64(n))
	}
	if errs > 0 {
		b.logf("  %d errors", errs)
	}
	return nil
}

// newConns measures whole connections per second: connect, full TLS
// handshake, one request, close.
func (b *bench) newConns(ctx context.Context, rep int, tg target) error {
	loop := func(ctx context.Context, ops, errs *atomic.Int64) {
		for ctx.Err() == nil {
			if err := b.client.oneShot(ctx, tg.addr); err != nil {
				if ctx.Err() == nil {
					errs.Add(1)
					sleep(ctx, 10*time.Millisecond)
				}
				continue
			}
			ops.Add(1)
		}
	}
	n, window, cpu, errs := b.counted(ctx, tg, b.opts.ncWorkers, loop)
	if n == 0 {
		return fmt.Errorf("no connection completed (%d errors)", errs)
	}
	b.add(rep, tg.name, mNCRate, float64(n)/window.Seconds())
	if tg.p != nil {
		b.add(rep, tg.name, mNCCPU, float64(cpu.Microseconds())/float64(n))
	}
	if errs > 0 {
		b.logf("  %d errors", errs)
	}
	return nil
}

// bulk downloads the bulk file bulkRuns times on fresh connections and
// records the median rate and the peer's CPU time per GB moved.
func (b *bench) bulk(ctx context.Context, rep int, tg target) error {
	var rates []float64
	var cpu time.Duration
	var bytes int64
	for range b.opts.bulkRuns {
		k, err := b.client.dial(ctx, tg.addr)
		if err != nil {
			return err
		}
		c0, t0 := cpuOf(tg), time.Now()
		n, err := k.do(b.client.bulkReq)
		el, c1 := time.Since(t0), cpuOf(tg)
		k.Close()
		if err != nil && !errors.Is(err, errClosed) {
			return err
		}
		if n != b.client.bulkBytes {
			return fmt.Errorf("bulk body %d bytes, want %d", n, b.client.bulkBytes)
		}
		rates = append(rates, float64(n)/1e6/el.Seconds())
		cpu += c1 - c0
		bytes += n
	}
	b.add(rep, tg.name, mBulkMBps, median(rates))
	if tg.p != nil {
		b.add(rep, tg.name, mBulkCPU, cpu.Seconds()/(float64(bytes)/1e9))
	}
	return nil
}

// latency times latReqs sequential requests on one warm keep-alive
// connection through the peer, alternating in blocks with as many on a
// connection straight to the origin, so that both series see the same
// machine and their difference is the cost of the extra hop. There is no
// other load. Blocks rather than single requests: a request that follows
// one on the other path finds CPUs gone idle, and on a VM waking them costs
// more than the hop itself; each block's first requests are not timed.
func (b *bench) latency(ctx context.Context, rep int, tg target) error {
	if tg.p == nil {
		return nil // measured alongside each peer
	}
	via, err := b.latencyConn(ctx, tg.addr)
	if err != nil {
		return err
	}
	defer func() { via.Close() }()
	dir, err := b.latencyConn(ctx, b.spec.Origin.Addr)
	if err != nil {
		return err
	}
	defer func() { dir.Close() }()
	dv := make([]float64, 0, b.opts.latReqs)
	pv := make([]float64, 0, b.opts.latReqs)
	for len(pv) < b.opts.latReqs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		n := min(latBlock, b.opts.latReqs-len(pv))
		var err error
		if dv, err = b.timedBlock(ctx, &dir, b.spec.Origin.Addr, n, dv); err != nil {
			return fmt.Errorf("direct: %w", err)
		}
		if pv, err = b.timedBlock(ctx, &via, tg.addr, n, pv); err != nil {
			return err
		}
	}
	slices.Sort(dv)
	slices.Sort(pv)
	dp50, dp99 := quantile(dv, 0.50), quantile(dv, 0.99)
	pp50, pp99 := quantile(pv, 0.50), quantile(pv, 0.99)
	b.add(rep, tg.name, mLatP50, pp50)
	b.add(rep, tg.name, mLatP99, pp99)
	b.add(rep, tg.name, mAddP50, pp50-dp50)
	b.add(rep, tg.name, mAddP99, pp99-dp99)
	b.add(rep, direct, mLatP50, dp50)
	b.add(rep, direct, mLatP99, dp99)
	return nil
}

// latencyConn dials addr and warms the connection with 50 requests.
func (b *bench) latencyConn(ctx context.Context, addr string) (*conn, error) {
	k, err := b.client.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	for range 50 {
		if _, err := k.do(b.client.smallReq); err != nil {
			k.Close()
			return nil, err
		}
	}
	return k, nil
}

// latBlock is the number of timed requests in a row on one path.
const latBlock = 100

// timedBlock makes a few untimed requests on *k and then n timed ones,
// appending their durations in microseconds to out.
func (b *bench) timedBlock(ctx context.Context, k **conn, addr string, n int, out []float64) ([]float64, error) {
	for i := range n + 5 {
		us, err := b.timed(ctx, k, addr)
		if err != nil {
			return out, err
		}
		if i >= 5 {
			out = append(out, us)
		}
	}
	return out, nil
}

// timed makes one request on *k and returns its duration in microseconds,
// redialing (untimed) if the server closed the connection.
func (b *bench) timed(ctx context.Context, k **conn, addr string) (float64, error) {
	t0 := time.Now()
	_, err := (*k).do(b.client.smallReq)
	us := float64(time.Since(t0).Nanoseconds()) / 1e3
	if errors.Is(err, errClosed) {
		(*k).Close()
		*k, err = b.client.dial(ctx, addr)
	}
	return us, err
}

// idle measures resident memory per idle connection. The peer is
// restarted first: memory freed by earlier tests stays in the allocators
// of C and Go programs alike and would hide the cost of new connections.
// After a short warm-up, RSS is read, idleConns connections are opened
// through the peer — each completes a handshake and one request, as a
// browser's idle keep-alive connection has — and RSS is read again once
// they have sat idle for -idle-wait.
func (b *bench) idle(ctx context.Context, rep int, tg target) error {
	p, err := b.restart(ctx, tg.p)
	if err != nil {
		return err
	}
	for range 20 {
		if err := b.client.probe(ctx, tg.addr); err != nil {
			return err
		}
	}
	time.Sleep(500 * time.Millisecond)
	before, fdsBefore := p.rss(), p.fds()
	conns, err := b.openIdle(ctx, tg.addr, b.idleN)
	defer func() {
		for _, k := range conns {
			k.Close()
		}
	}()
	if err != nil {
		return err
	}
	// Idle means idle for a while: an open WebSocket or a browser's
	// keep-alive connection waits seconds to minutes. A few seconds let a
	// peer that parks quiet connections (relay46 does, after 0.25-0.5 s) do so.
	time.Sleep(b.opts.idleWait)
	after, fdsAfter := p.rss(), p.fds()
	port := 0
	if _, ps, err := net.SplitHostPort(tg.addr); err == nil {
		port, _ = strconv.Atoi(ps)
	}
	open := established(port)
	n := float64(len(conns))
	b.add(rep, tg.name, mIdleKiB, float64(after-before)/1024/n)
	b.add(rep, tg.name, mIdleOpen, float64(open))
	b.add(rep, tg.name, mIdleFDs, float64(fdsAfter-fdsBefore)/n)
	b.add(rep, tg.name, mIdleBaseMiB, float64(before)/(1<<20))
	b.add(rep, tg.name, mIdleMiB, float64(after)/(1<<20))
	if open < len(conns)*99/100 {
		b.notes = append(b.notes, fmt.Sprintf("rep %d: %s held only %d of %d idle connections when its memory was read.", rep, tg.name, open, len(conns)))
	}
	return nil
}

// restart replaces a running peer with a fresh process.
func (b *bench) restart(ctx context.Context, old *proc) (*proc, error) {
	old.stop()
	p, err := b.startPeer(ctx, old.spec)
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	for i, q := range b.peers {
		if q == old {
			b.peers[i] = p
		}
	}
	return p, nil
}

// idleDialers bounds the concurrent handshakes while opening idle
// connections.
const idleDialers = 64

// openIdle opens n connections with idleDialers dialers, each completing a
// handshake and one keep-alive request, and keeps them open.
func (b *bench) openIdle(ctx context.Context, addr string, n int) ([]*conn, error) {
	var (
		mu    sync.Mutex
		conns = make([]*conn, 0, n)
		next  atomic.Int64
		first error
		wg    sync.WaitGroup
	)
	for range idleDialers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) && ctx.Err() == nil {
				k, err := b.client.dial(ctx, addr)
				if err == nil {
					if _, err = k.do(b.client.smallReq); err != nil {
						k.Close()
					}
				}
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
				} else {
					conns = append(conns, k)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return conns, fmt.Errorf("opened %d of %d idle connections: %w", len(conns), n, first)
	}
	return conns, nil
}
