package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Spec is what bench/run.sh hands over: the certificate, the origin, the
// peers and how to start each one, and facts about the machine.
type Spec struct {
	ServerName string `json:"server_name"` // SNI and Host of every request
	CAFile     string `json:"ca_file"`     // the self-signed certificate, trusted by the client
	SmallPath  string `json:"small_path"`  // small static body
	BulkPath   string `json:"bulk_path"`   // the 100 MB file
	BulkBytes  int64  `json:"bulk_bytes"`
	// PGIDFile collects the process group of everything started, so that
	// run.sh's exit trap can end them even if relaybench dies.
	PGIDFile string            `json:"pgid_file"`
	Origin   PeerSpec          `json:"origin"`
	Peers    []PeerSpec        `json:"peers"`
	Notes    []string          `json:"notes"`   // e.g. a peer that could not be installed
	Machine  map[string]string `json:"machine"` // nproc, CPU model, kernel, versions
}

// PeerSpec describes one process under test (or the origin).
type PeerSpec struct {
	Name    string   `json:"name"`  // short id: relay46-pt, haproxy, ...
	Label   string   `json:"label"` // column heading
	Group   string   `json:"group"` // passthrough or terminate
	Addr    string   `json:"addr"`  // TLS listener, host:port
	Cmd     []string `json:"cmd"`
	Env     []string `json:"env"` // added to the environment
	Log     string   `json:"log"` // stdout and stderr go here
	Version string   `json:"version"`
	// Unavailable, when set by run.sh, keeps the peer out of the run and
	// says why in the table's notes.
	Unavailable string `json:"unavailable,omitempty"`
	// Optional peers that fail their first probe are dropped with a note
	// instead of failing the run (relay46 termination before it lands).
	Optional bool `json:"optional,omitempty"`
}

func readSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.ServerName == "" || s.Origin.Addr == "" || len(s.Origin.Cmd) == 0 {
		return nil, fmt.Errorf("%s: server_name, origin.addr and origin.cmd are required", path)
	}
	return &s, nil
}

// proc is a running peer: the process run.sh described, started in its
// own process group so that it and its workers stop together.
type proc struct {
	spec PeerSpec
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(ps PeerSpec, pgidFile string) (*proc, error) {
	logf, err := os.OpenFile(ps.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s start %v\n", time.Now().Format(time.RFC3339), ps.Cmd)
	cmd := exec.Command(ps.Cmd[0], ps.Cmd[1:]...)
	cmd.Env = append(os.Environ(), ps.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", ps.Name, err)
	}
	if pgidFile != "" {
		if f, err := os.OpenFile(pgidFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintln(f, cmd.Process.Pid)
			f.Close()
		}
	}
	p := &proc{spec: ps, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process group to terminate and kills it if it has not
// within a few seconds; workers that outlive their master go too.
func (p *proc) stop() {
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

// logTail is the end of the peer's log, for error messages.
func (p *proc) logTail() string {
	data, err := os.ReadFile(p.spec.Log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	lines = lines[max(0, len(lines)-3):]
	return strings.Join(lines, " / ")
}

// pids is the peer's process and all its descendants (nginx and sniproxy
// fork workers; the others are single processes).
func (p *proc) pids() []int {
	root := p.cmd.Process.Pid
	children := map[int][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// rss sums VmRSS over the peer's processes, in bytes.
func (p *proc) rss() int64 {
	var total int64
	for _, pid := range p.pids() {
		total += vmRSS(pid)
	}
	return total
}

// fds counts the open file descriptors of the peer's processes.
func (p *proc) fds() int {
	n := 0
	for _, pid := range p.pids() {
		ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
		if err == nil {
			n += len(ents)
		}
	}
	return n
}

// cpu sums user and system time over the peer's processes.
func (p *proc) cpu() time.Duration {
	var total time.Duration
	for _, pid := range p.pids() {
		if st, err := readStat(pid); err == nil {
			total += st.cpu
		}
	}
	return total
}

type procStat struct {
	ppid int
	cpu  time.Duration // utime + stime
}

// clockTick is USER_HZ, which is 100 on every Linux architecture Go supports.
const clockTick = 100

func readStat(pid int) (procStat, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may contain spaces.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, errors.New("short stat")
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return procStat{ppid: ppid, cpu: time.Duration(ut+stime) * time.Second / clockTick}, nil
}

func vmRSS(pid int) int64 {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// established counts ESTABLISHED TCP sockets whose local port is port:
// the server side of the connections a peer holds on its listener.
func established(port int) int {
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "01" {
				continue
			}
			_, hexPort, ok := strings.Cut(fs[1], ":")
			if !ok {
				continue
			}
			if v, err := strconv.ParseUint(hexPort, 16, 16); err == nil && int(v) == port {
				n++
			}
		}
		f.Close()
	}
	return n
}

// waitReady probes the peer with one request until it answers, the
// process exits, or the deadline passes.
func (b *bench) waitReady(ctx context.Context, p *proc, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var last error
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited at start: %s", p.spec.Name, p.logTail())
		}
		if last = b.client.probe(ctx, p.spec.Addr); last == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer on %s: %w", p.spec.Name, p.spec.Addr, last)
}

// cpuTimes are the machine's busy and stolen CPU time from /proc/stat.
type cpuTimes struct{ busy, steal time.Duration }

func readCPUTimes() cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal
	if len(f) < 9 || f[0] != "cpu" {
		return cpuTimes{}
	}
	tick := func(i int) time.Duration {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		return time.Duration(v) * time.Second / clockTick
	}
	return cpuTimes{busy: tick(1) + tick(2) + tick(3), steal: tick(8)}
}

// selfAndChildrenCPU is the CPU time of relaybench and of every process it
// started and waited for (each nginx master has waited for its workers).
func selfAndChildrenCPU() time.Duration {
	var total time.Duration
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}
