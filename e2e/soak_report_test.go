package e2e

// The soak's measurements and report: samples of the relay process,
// its metrics and log, the tallies of what each kind of traffic did, the
// summary table and the checks of the soak's promises.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"
)

type sample struct {
	label      string
	at         time.Duration
	fds        int // all open descriptors…
	pipes      int // …of which pipes: Go's pool of splice(2) pipes
	rss        int64
	goroutines int
}

// forceGC has relay46 collect garbage twice (pprof's heap profile with
// gc=1), which releases the splice pipes the Go runtime keeps pooled, so
// that idle descriptors can be compared exactly. It reports whether the
// admin listener serves pprof.
func (s *soak) forceGC() bool {
	for range 2 {
		resp, err := http.Get("http://" + s.adminAddr + "/debug/pprof/heap?gc=1")
		if err != nil {
			return false
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false
		}
	}
	time.Sleep(time.Second) // the pipes' finalizers close them
	return true
}

// sockets lists relay46's TCP sockets (ss), to explain a leak.
func (s *soak) sockets() string {
	out, err := exec.Command("ss", "-tanpo").Output()
	if err != nil {
		return err.Error()
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, fmt.Sprintf("pid=%d,", s.relay.pid())) {
			lines = append(lines, l)
		}
	}
	kinds := map[string]int{}
	dir := fmt.Sprintf("/proc/%d/fd", s.relay.pid())
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join(dir, e.Name()))
		k, _, _ := strings.Cut(target, ":[")
		kinds[k]++
	}
	var ks []string
	for k, n := range kinds {
		ks = append(ks, fmt.Sprintf("%s×%d", k, n))
	}
	sort.Strings(ks)
	return indent("open fds by kind: " + strings.Join(ks, " ") + "\n" + strings.Join(lines, "\n"))
}

// sample records the relay's open files, RSS and goroutines.
func (s *soak) sample(t *testing.T, label string, at time.Duration) {
	s.floodMu.Lock()
	time.Sleep(100 * time.Millisecond) // the relay closes the flood's last connections
	defer s.floodMu.Unlock()
	pid := s.relay.pid()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("relay46 is gone: %v", err)
	}
	sm := sample{label: label, at: at, fds: len(fds), rss: vmRSS(pid), goroutines: -1}
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join(dir, fd.Name())); strings.HasPrefix(target, "pipe:") {
			sm.pipes++
		}
	}
	if m, err := s.metrics(); err == nil {
		sm.goroutines = int(m.get("go_goroutines"))
	}
	s.samples = append(s.samples, sm)
	if label != "" {
		t.Logf("soak %-12s at %6s: %d open fds (%d pipes), RSS %.1f MiB, %d goroutines", label, at.Round(time.Second), sm.fds, sm.pipes, float64(sm.rss)/(1<<20), sm.goroutines)
	}
}

// vmRSS reads VmRSS of pid in bytes.
func vmRSS(pid int) int64 {
	for _, l := range grepLines(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}

// promSample is the relay's /metrics, series by their full text.
type promSample map[string]float64

func (s *soak) metrics() (promSample, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + s.adminAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := promSample{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// get sums the series of name whose labels contain every one of labels
// (each like `outcome="ok"`).
func (m promSample) get(name string, labels ...string) float64 {
	var sum float64
next:
	for k, v := range m {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(k, l) {
				continue next
			}
		}
		sum += v
	}
	return sum
}

// values lists the label values of label among name's series, with sums.
func (m promSample) values(name, label string, filter ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, f := range filter {
			ok = ok && strings.Contains(k, f)
		}
		_, rest, found := strings.Cut(k, label+`="`)
		if !ok || !found {
			continue
		}
		val, _, _ := strings.Cut(rest, `"`)
		out[val] += v
	}
	return out
}

// report prints the summary and checks the soak's promises.
func (s *soak) report(t *testing.T) {
	m, err := s.metrics()
	if err != nil {
		t.Fatalf("metrics at the end: %v", err)
	}
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "kind\trequests/streams\tmessages\tfailures\tlost\tbytes sent\tbytes checked back\t\n")
	kinds := s.stats.sorted()
	var lost, legitFailures int64
	for _, k := range kinds {
		st := s.stats.kinds[k]
		msgs := "-"
		if st.messages > 0 {
			msgs = strconv.FormatInt(st.messages, 10)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%d\t%d\t%d\t%d\t\n", k, st.ok+st.failed, msgs, st.failed, st.lost, st.sent, st.received)
		lost += st.lost
		if !st.hostile {
			legitFailures += st.failed
		}
	}
	w.Flush()
	hostile := s.hostileTable()
	okReloads := m.get("relay46_config_reloads_total", `result="ok"`)
	var res strings.Builder
	for _, sm := range s.samples {
		if sm.label != "" {
			fmt.Fprintf(&res, "  %-12s %6s  fds %4d (pipes %3d)  rss %6.1f MiB  goroutines %5d\n", sm.label, sm.at.Round(time.Second), sm.fds, sm.pipes, float64(sm.rss)/(1<<20), sm.goroutines)
		}
	}
	var trace []string
	for _, sm := range s.samples {
		trace = append(trace, fmt.Sprintf("%d/%d/%.0f/%d", sm.fds, sm.pipes, float64(sm.rss)/(1<<20), sm.goroutines))
	}
	bySource := s.logOutcomes(t)
	refused := m.values("relay46_connections_refused_total", "reason")
	t.Logf("soak summary (%s, %d reloads sent, %v succeeded per relay46_config_reloads_total; PROXY headers the origin saw: %s):\n%s\nhostile traffic (expected = refused or cut as documented):\n%s\nrelay46's own log, connections by client and outcome:\n%s  refused by limits (metrics): %s\nrelay46 process (pid %d):\n%s  trace fds/pipes/rssMiB/goroutines every ~%s: %s",
		s.duration, s.reloads, okReloads, s.proxyVersions(), b.String(), hostile, fmtSources(bySource), fmtCounts(refused),
		s.relay.pid(), res.String()+gcNote(s.gcForced), (s.duration / 8).Round(time.Second), strings.Join(trace, " "))

	// The promises.
	if lost != 0 {
		t.Errorf("LOST DATA: %d accepted requests or streams came back with different bytes", lost)
	}
	if legitFailures != 0 {
		t.Errorf("%d legitimate requests or streams failed (first errors: %s)", legitFailures, s.stats.firstErrors(false))
	}
	if n := s.stats.unexpectedHostile(); n != 0 {
		t.Errorf("%d hostile connections were not refused or cut as documented (first: %s)", n, s.stats.firstErrors(true))
	}
	if int(okReloads) != s.reloads {
		t.Errorf("relay46 counted %v successful reloads; %d were sent", okReloads, s.reloads)
	}
	if s.proxyCount(1) == 0 || s.proxyCount(2) == 0 {
		t.Errorf("the reloads did not take effect: PROXY versions seen %s", s.proxyVersions())
	}
	for src, oc := range bySource {
		if src == srcHostile || src == srcFlood {
			continue
		}
		for o, n := range oc {
			if o != "ok" && o != "terminated" {
				lines := grepLines(s.relay.log, `"msg":"connection"`, `"client":"`+src+`:`, `"outcome":"`+o+`"`)
				t.Errorf("relay46 logged %.0f connections from the legitimate client %s (%s) with outcome %s:\n%s", n, src, sourceNames[src], o, indent(strings.Join(lines[:min(3, len(lines))], "\n")))
			}
		}
	}
	if !s.relay.alive() {
		t.Fatal("relay46 died")
	}
	if p := grepLines(s.relay.log, "panic"); len(p) > 0 {
		t.Errorf("relay46 logged a panic: %s", p[0])
	}
	s.checkFlat(t)
	if err := s.relay.stop(40 * time.Second); err != nil {
		t.Errorf("relay46 exit after SIGTERM: %v", err)
	}
}

func gcNote(forced bool) string {
	if forced {
		return "  (idle after: sampled after two forced GCs, which release Go's pooled splice pipes)\n"
	}
	return "  (idle after: no pprof on the admin listener, so pooled splice pipes are still open)\n"
}

var sourceNames = map[string]string{
	srcPass: "passthrough https", srcTermH1: "terminated h1", srcTermH2: "terminated h2", srcHTTP80: ":80 relay",
	srcWSPass: "websocket passthrough", srcWSTerm: "websocket terminated", srcHostile: "hostile", srcFlood: "flood",
}

// logOutcomes counts relay46's "connection" log lines by client address
// and outcome.
func (s *soak) logOutcomes(t *testing.T) map[string]map[string]float64 {
	out := map[string]map[string]float64{}
	for _, l := range grepLines(s.relay.log, `"msg":"connection"`) {
		var e struct{ Client, Outcome string }
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Errorf("relay46 log line is not JSON: %v: %s", err, l)
			continue
		}
		src, _, _ := strings.Cut(e.Client, ":")
		if out[src] == nil {
			out[src] = map[string]float64{}
		}
		out[src][e.Outcome]++
	}
	return out
}

func fmtSources(m map[string]map[string]float64) string {
	var srcs []string
	for src := range m {
		srcs = append(srcs, src)
	}
	sort.Strings(srcs)
	var b strings.Builder
	for _, src := range srcs {
		fmt.Fprintf(&b, "  %-11s %-22s %s\n", src, sourceNames[src], fmtCounts(m[src]))
	}
	return b.String()
}

func fmtCounts(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func (s *soak) proxyCount(v int) int64 {
	if c, ok := s.proxyVers.Load(v); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

func (s *soak) proxyVersions() string {
	return fmt.Sprintf("v1=%d v2=%d", s.proxyCount(1), s.proxyCount(2))
}

// checkFlat compares the samples within the documented tolerances.
func (s *soak) checkFlat(t *testing.T) {
	find := func(label string) sample {
		for _, sm := range s.samples {
			if sm.label == label {
				return sm
			}
		}
		t.Fatalf("no %q sample", label)
		return sample{}
	}
	idle0, start, end, idle1 := find("idle before"), find("start (warm)"), find("end (load)"), find("idle after")
	if lim := int(float64(start.fds)*(1+fdLoadSlack)) + fdLoadMin; end.fds > lim {
		t.Errorf("open fds grew under the same load: %d at the start, %d at the end (limit %d)", start.fds, end.fds, lim)
	}
	// Idle, every descriptor but the splice pipes must be back to where
	// it was. The pipes stay pooled by the Go runtime until a GC, which an
	// idle process may not run for minutes: after a forced GC they must be
	// back too; without pprof they are only held to the most the load
	// needed.
	if lim := idle0.fds - idle0.pipes + fdIdleSlack; idle1.fds-idle1.pipes > lim {
		t.Errorf("open fds leaked: %d (not counting pipes) idle before, %d idle after (limit %d); relay46's now:\n%s",
			idle0.fds-idle0.pipes, idle1.fds-idle1.pipes, lim, s.sockets())
	}
	maxPipes := 0
	for _, sm := range s.samples[:len(s.samples)-1] {
		maxPipes = max(maxPipes, sm.pipes)
	}
	switch {
	case s.gcForced && idle1.pipes > idle0.pipes+fdIdleSlack:
		t.Errorf("splice pipes leaked: %d idle before, %d idle after two GCs", idle0.pipes, idle1.pipes)
	case !s.gcForced && idle1.pipes > maxPipes+fdIdleSlack:
		t.Errorf("splice pipes leaked: %d idle after, at most %d under load", idle1.pipes, maxPipes)
	}
	if lim := int64(float64(start.rss)*rssLoadFactor) + rssLoadMin; end.rss > lim {
		t.Errorf("RSS grew under the same load: %d MiB at the start, %d MiB at the end (limit %d MiB)", start.rss>>20, end.rss>>20, lim>>20)
	}
	if start.goroutines >= 0 && end.goroutines >= 0 {
		if lim := int(float64(start.goroutines)*(1+grLoadSlack)) + grLoadMin; end.goroutines > lim {
			t.Errorf("goroutines grew under the same load: %d at the start, %d at the end (limit %d)", start.goroutines, end.goroutines, lim)
		}
		if lim := idle0.goroutines + grIdleSlack; idle1.goroutines > lim {
			t.Errorf("goroutines leaked: %d idle before, %d idle after (limit %d)", idle0.goroutines, idle1.goroutines, lim)
		}
	}
}

// tally counts what each kind of traffic did.
type tally struct {
	mu    sync.Mutex
	kinds map[string]*kindStats
}

type kindStats struct {
	hostile                bool
	ok, failed, lost       int64
	unexpected             int64 // hostile only: not refused or cut as documented
	sent, received         int64
	messages               int64
	errs                   []string
	outcomes               map[string]int64 // hostile only
	expectedOutcomeSummary string
}

func newTally() *tally { return &tally{kinds: map[string]*kindStats{}} }

func (ta *tally) kind(k string, hostile bool) *kindStats {
	st := ta.kinds[k]
	if st == nil {
		st = &kindStats{hostile: hostile, outcomes: map[string]int64{}}
		ta.kinds[k] = st
	}
	return st
}

func (ta *tally) add(k string, sent, received int64, err error) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	st := ta.kind(k, false)
	st.sent += sent
	st.received += received
	if err == nil {
		st.ok++
		return
	}
	st.failed++
	if errors.Is(err, errLost) {
		st.lost++
	}
	if len(st.errs) < 3 {
		st.errs = append(st.errs, err.Error())
	}
}

func (ta *tally) addStream(k string, messages int, sent, received int64, err error) {
	ta.add(k, sent, received, err)
	ta.mu.Lock()
	ta.kinds[k].messages += int64(messages)
	ta.mu.Unlock()
}

// addHostile records one hostile connection's outcome; expected says it
// was refused or cut as documented.
func (ta *tally) addHostile(k, outcome string, expected bool) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	st := ta.kind(k, true)
	st.outcomes[outcome]++
	if expected {
		st.ok++
		return
	}
	st.failed++
	st.unexpected++
	if len(st.errs) < 3 {
		st.errs = append(st.errs, k+": "+outcome)
	}
}

func (ta *tally) sorted() []string {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var ks []string
	for k, st := range ta.kinds {
		if !st.hostile {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}

func (ta *tally) unexpectedHostile() int64 {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var n int64
	for _, st := range ta.kinds {
		n += st.unexpected
	}
	return n
}

func (ta *tally) firstErrors(hostile bool) string {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	var out []string
	for k, st := range ta.kinds {
		if st.hostile == hostile {
			for _, e := range st.errs {
				out = append(out, k+": "+e)
			}
		}
	}
	sort.Strings(out)
	if len(out) > 6 {
		out = out[:6]
	}
	return strings.Join(out, "; ")
}

func (s *soak) hostileTable() string {
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "kind\ttried\texpected\tunexpected\toutcomes\n")
	var ks []string
	for k, st := range s.stats.kinds {
		if st.hostile {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	for _, k := range ks {
		st := s.stats.kinds[k]
		var oc []string
		for o, n := range st.outcomes {
			oc = append(oc, fmt.Sprintf("%s=%d", o, n))
		}
		sort.Strings(oc)
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%s\n", k, st.ok+st.failed, st.ok, st.unexpected, strings.Join(oc, " "))
	}
	w.Flush()
	return b.String()
}
