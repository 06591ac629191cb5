// Command relaybench is the measuring half of bench/run.sh: it starts the
// origin and the peers described by a spec file that run.sh writes, drives
// load at each of them in turn, interleaved over several repetitions, reads
// the peers' memory and CPU time from /proc, and writes a table of
// relay46-to-peer ratios.
//
//	relaybench -spec bench/.work/run/spec.json -reps 5 -out bench/results
//
// It talks only to loopback addresses named in the spec, and every loop it
// runs is bounded by a duration or a count.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func realMain(args []string, stdout, stderr io.Writer) int {
	opts, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, opts, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "relaybench: %v\n", err)
		return 1
	}
	return 0
}

// options are the knobs of one run; run.sh sets them from --quick.
type options struct {
	spec      string
	out       string
	reps      int
	warm      time.Duration // load before a measured window, not counted
	dur       time.Duration // measured window of the keep-alive and new-connection tests
	kaConns   int           // concurrent keep-alive connections
	ncWorkers int           // concurrent new-connection loops
	bulkRuns  int           // 100 MB downloads per peer per repetition
	latReqs   int           // sequential requests timed for latency
	idleConns int           // idle connections for the memory test (0: as many as the fd limit allows, at most 10,000)
	idleWait  time.Duration // how long the idle connections sit before memory is read
	tests     string        // comma-separated subset of the tests, "" for all
	render    string        // re-render this latest.json instead of measuring
}

// runs reports whether the named test is selected.
func (o options) runs(name string) bool {
	if o.tests == "" {
		return true
	}
	return slices.Contains(strings.Split(o.tests, ","), name)
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("relaybench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.spec, "spec", "", "spec file written by bench/run.sh (required)")
	fs.StringVar(&o.out, "out", "bench/results", "directory for latest.md and latest.json")
	fs.IntVar(&o.reps, "reps", 5, "repetitions; figures are medians over them")
	fs.DurationVar(&o.warm, "warm", time.Second, "unmeasured load before each measured window")
	fs.DurationVar(&o.dur, "dur", 5*time.Second, "measured window of the throughput tests")
	fs.IntVar(&o.kaConns, "ka-conns", 32, "concurrent keep-alive connections")
	fs.IntVar(&o.ncWorkers, "nc-workers", 16, "concurrent new-connection loops")
	fs.IntVar(&o.bulkRuns, "bulk-runs", 3, "bulk downloads per peer per repetition")
	fs.IntVar(&o.latReqs, "lat-reqs", 2000, "sequential requests timed for latency")
	fs.IntVar(&o.idleConns, "idle-conns", 0, "idle connections for the memory test (0: 10,000 or what the fd limit allows)")
	fs.DurationVar(&o.idleWait, "idle-wait", 3*time.Second, "how long the idle connections sit idle before memory is read")
	fs.StringVar(&o.render, "render", "", "only rewrite latest.md in -out from this results JSON (after a change to the table)")
	fs.StringVar(&o.tests, "tests", "", "run only these tests (comma-separated: keep-alive,new-conn,bulk,latency,idle)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case o.render != "":
		return o, nil
	case o.spec == "":
		fmt.Fprintln(stderr, "relaybench: -spec is required")
		return o, errors.New("usage")
	case o.reps < 1 || o.reps > 50, o.dur <= 0 || o.dur > time.Minute,
		o.kaConns < 1 || o.kaConns > 1000, o.ncWorkers < 1 || o.ncWorkers > 1000,
		o.bulkRuns < 1 || o.bulkRuns > 20, o.latReqs < 10 || o.latReqs > 100000,
		o.idleConns < 0 || o.idleConns > 10000, o.idleWait < 0 || o.idleWait > time.Minute:
		fmt.Fprintln(stderr, "relaybench: a flag is out of its bounded range (see -h)")
		return o, errors.New("usage")
	}
	return o, nil
}

func run(ctx context.Context, o options, stdout, stderr io.Writer) error {
	if o.render != "" {
		data, err := os.ReadFile(o.render)
		if err != nil {
			return err
		}
		var res Results
		if err := json.Unmarshal(data, &res); err != nil {
			return fmt.Errorf("%s: %w", o.render, err)
		}
		md := renderMarkdown(&res)
		fmt.Fprint(stdout, md)
		return os.WriteFile(filepath.Join(o.out, "latest.md"), []byte(md), 0o644)
	}
	spec, err := readSpec(o.spec)
	if err != nil {
		return err
	}
	cl, err := newClient(spec)
	if err != nil {
		return err
	}
	if o.idleConns == 0 {
		o.idleConns = idleBudget()
	}
	b := &bench{opts: o, spec: spec, client: cl, log: stderr}
	defer b.stopAll()
	started, cpu0 := time.Now(), readCPUTimes()
	if err := b.startAll(ctx); err != nil {
		return err
	}
	if err := b.measure(ctx); err != nil {
		return err
	}
	b.stopAll()
	b.machineLoad(started, cpu0)
	res := b.results(started)
	md := renderMarkdown(res)
	fmt.Fprint(stdout, md)
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "latest.md"), []byte(md), 0o644); err != nil {
		return err
	}
	raw, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(o.out, "latest.json"), append(raw, '\n'), 0o644)
}

// idleBudget is how many idle connections the memory test opens: 10,000,
// or fewer when the open-file limit cannot hold them. A passthrough peer
// needs two descriptors per relayed connection (client and origin side),
// and an unprivileged container may not raise the hard limit.
func idleBudget() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 1000
	}
	n := (int(lim.Max) - 200) / 2
	n = n / 100 * 100
	return max(100, min(10000, n))
}
