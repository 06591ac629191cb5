package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPassthroughSplicesBulk proves, with strace on the relay46 binary,
// that a passthrough relay moves bulk with splice(2): the bytes of a 64 MiB
// download through it pass through splice, and read(2)/write(2) carry only
// the small bursts (handshake flights), at most 16 KiB at a time.
func TestPassthroughSplicesBulk(t *testing.T) {
	strace := needTool(t, "strace", "strace")
	bin := buildBinaries(t, filepath.Join(t.TempDir(), "bin"), "./cmd/relay46")["./cmd/relay46"]

	const size = 64 << 20
	ca := newTestCA(t, "splice test CA")
	origin, err := tls.Listen("tcp6", "[::1]:0", &tls.Config{Certificates: []tls.Certificate{ca.tlsCert(t, "bulk.example")}})
	if err != nil {
		t.Fatal(err)
	}
	defer origin.Close()
	go func() {
		for {
			c, err := origin.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1<<20)
				for sent := 0; sent < size; sent += len(buf) {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			}()
		}
	}()

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "relay46.yaml")
	os.WriteFile(cfg, fmt.Appendf(nil, "listen: {https: %q, http: \"\"}\nadmin: \"\"\nlog: {level: warn}\nroutes:\n  - name: bulk\n    hosts: [bulk.example]\n    upstream: %q\n", addr, origin.Addr().String()), 0o644)
	relay := exec.Command(bin, "run", "-config", cfg)
	var logs strings.Builder
	relay.Stderr = &logs
	defer func() {
		if t.Failed() {
			t.Logf("relay46's log:\n%s", logs.String())
		}
	}()
	if err := relay.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		relay.Process.Signal(syscall.SIGTERM)
		relay.Wait()
	}()
	waitListening(t, addr)

	trace := filepath.Join(t.TempDir(), "trace")
	tracer := exec.Command(strace, "-f", "-qq", "-e", "trace=splice,read,write", "-o", trace, "-p", strconv.Itoa(relay.Process.Pid))
	if err := tracer.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // attached to every thread
	if tracer.ProcessState != nil {
		t.Skip("strace cannot attach here")
	}

	c, err := tls.Dial("tcp4", addr, &tls.Config{ServerName: "bulk.example", RootCAs: ca.pool()})
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(c, size))
	c.Close()
	if err != nil || n != size {
		t.Fatalf("downloaded %d bytes through the relay, %v; want %d", n, err, size)
	}
	time.Sleep(200 * time.Millisecond)
	tracer.Process.Signal(syscall.SIGINT) // detach; strace writes out and exits
	tracer.Wait()

	spliced, written, calls := traceBytes(t, trace)
	t.Logf("relay46 under strace: %d bytes spliced (each counted in and out), %d bytes written in %d write(2) calls, %d splice(2) calls", spliced, written, calls["write"], calls["splice"])
	// The relay splices socket → pipe → socket: every byte twice.
	if spliced/2 < size*9/10 {
		t.Errorf("only %d of %d bulk bytes went through splice", spliced/2, size)
	}
	if written > 2<<20 {
		t.Errorf("%d bytes went through write(2): the bulk was copied through user space", written)
	}
}

// traceBytes sums the results of splice and write calls in an strace log.
func traceBytes(t *testing.T, path string) (spliced, written int64, calls map[string]int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	calls = map[string]int{}
	// "123 splice(...) = 65536", or the resumed half of an interrupted line.
	re := regexp.MustCompile(`^\d+\s+(?:<\.\.\. )?(splice|write|read)\b.*\) += (\d+)`)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := re.FindStringSubmatch(sc.Text())
		if m == nil || strings.Contains(sc.Text(), "unfinished") {
			continue
		}
		v, _ := strconv.ParseInt(m[2], 10, 64)
		calls[m[1]]++
		switch m[1] {
		case "splice":
			spliced += v
		case "write":
			written += v
		}
	}
	return spliced, written, calls
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp4", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay46 is not listening on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
