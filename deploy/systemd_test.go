package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/config"
)

// unitCopy writes the units to a temporary directory with ExecStart
// pointing at bin (systemd-analyze verify checks that it exists), plus any
// extra lines appended to the service.
func unitCopy(t *testing.T, bin, extra string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"relay46.service", "relay46-https.socket", "relay46-http.socket"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "relay46.service" {
			if !bytes.Contains(b, []byte("\nExecStart=/usr/local/bin/relay46 run -config /etc/relay46/relay46.yaml\n")) {
				t.Fatal("relay46.service: ExecStart is not /usr/local/bin/relay46 run -config /etc/relay46/relay46.yaml")
			}
			b = bytes.ReplaceAll(b, []byte("/usr/local/bin/relay46"), []byte(bin))
			b = append(b, extra...)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func unitSettings(t *testing.T, name string) map[string][]string {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			m[k] = append(m[k], v)
		}
	}
	return m
}

// exposure runs systemd-analyze security and returns the overall score.
func exposure(t *testing.T, analyze, dir string) (float64, string) {
	t.Helper()
	cmd := exec.Command(analyze, "security", "--offline=true", "--no-pager", filepath.Join(dir, "relay46.service"))
	out, _ := cmd.CombinedOutput() // exits non-zero above its threshold
	m := regexp.MustCompile(`Overall exposure level for relay46\.service: (\d+\.\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	return score, string(out)
}

func verifyUnits(t *testing.T, analyze, dir string) {
	t.Helper()
	cmd := exec.Command(analyze, "verify", "relay46.service", "relay46-https.socket", "relay46-http.socket")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	var ours []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.Contains(line, "relay46") {
			ours = append(ours, line)
		} else if line != "" {
			t.Logf("systemd-analyze verify (not about our units): %s", line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
}

// TestSystemdUnits checks the units with systemd's own tools, and what
// relay46 relies on: the sockets are named for its listeners and the
// service runs without privilege.
func TestSystemdUnits(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	bin := filepath.Join(releaseDir(t), "relay46-linux-amd64")

	svc := unitSettings(t, "relay46.service")
	if !slices.Equal(svc["CapabilityBoundingSet"], []string{""}) || !slices.Equal(svc["AmbientCapabilities"], []string{""}) {
		t.Errorf("CapabilityBoundingSet %q AmbientCapabilities %q: socket-activated, the service needs none", svc["CapabilityBoundingSet"], svc["AmbientCapabilities"])
	}
	if !slices.Equal(svc["Sockets"], []string{"relay46-https.socket relay46-http.socket"}) {
		t.Errorf("Sockets=%q", svc["Sockets"])
	}
	if !slices.Equal(svc["StateDirectory"], []string{"relay46"}) || "/var/lib/relay46" != config.DefaultStorage {
		t.Errorf("StateDirectory=%q must give acme.storage's default %s", svc["StateDirectory"], config.DefaultStorage)
	}
	if !slices.Equal(svc["ExecReload"], []string{"/bin/kill -HUP $MAINPID"}) {
		t.Errorf("ExecReload=%q", svc["ExecReload"])
	}
	if stop, err := time.ParseDuration(svc["TimeoutStopSec"][0]); err != nil || stop <= config.DefaultShutdownGrace {
		t.Errorf("TimeoutStopSec=%q must exceed shutdown_grace's default %s", svc["TimeoutStopSec"], config.DefaultShutdownGrace)
	}
	for name, want := range map[string]struct{ fd, port string }{"relay46-https.socket": {"https", "443"}, "relay46-http.socket": {"http", "80"}} {
		s := unitSettings(t, name)
		if !slices.Equal(s["FileDescriptorName"], []string{want.fd}) || !slices.Equal(s["ListenStream"], []string{want.port}) ||
			!slices.Equal(s["BindIPv6Only"], []string{"both"}) || !slices.Equal(s["Service"], []string{"relay46.service"}) || s["Accept"] != nil {
			t.Errorf("%s: %v", name, s)
		}
	}

	dir := unitCopy(t, bin, "")
	verifyUnits(t, analyze, dir)
	score, out := exposure(t, analyze, dir)
	t.Logf("systemd-analyze security --offline=true relay46.service: exposure %.1f", score)
	if score > 2.0 {
		t.Errorf("exposure %.1f, want at most 2.0:\n%s", score, out)
	}

	// The documented way to run without the sockets, from the README.
	t.Run("without socket activation", func(t *testing.T) {
		dropIn := readmeBlock(t, "# /etc/systemd/system/relay46.service.d/no-sockets.conf")
		dir := unitCopy(t, bin, "\n"+dropIn)
		verifyUnits(t, analyze, dir)
		score, out := exposure(t, analyze, dir)
		t.Logf("with the no-sockets drop-in: exposure %.1f", score)
		if score > 2.0 {
			t.Errorf("exposure %.1f, want at most 2.0:\n%s", score, out)
		}
		if want := fmt.Sprintf("exposure level %.1f", score); !strings.Contains(readme(t), want) {
			t.Errorf("deploy/README.md should state the drop-in's %q", want)
		}
	})
	if want := fmt.Sprintf("exposure level %.1f", score); !strings.Contains(readme(t), want) {
		t.Errorf("deploy/README.md should state the unit's %q", want)
	}
}

func readme(t *testing.T) string {
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readmeBlock returns the fenced code block of README.md that contains
// marker.
func readmeBlock(t *testing.T, marker string) string {
	t.Helper()
	for i, block := range strings.Split(readme(t), "```") {
		if i%2 == 1 && strings.Contains(block, marker) {
			_, body, _ := strings.Cut(block, "\n")
			return body
		}
	}
	t.Fatalf("README.md has no code block with %q", marker)
	return ""
}

// TestSyscallFilter runs relay46's demo (listeners, TLS passthrough,
// termination, PROXY headers, :80 relay, shutdown) under strace and checks
// every system call it makes is one the unit's SystemCallFilter= allows,
// as `systemd-analyze syscall-filter` defines the groups.
func TestSyscallFilter(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	strace := need(t, "strace", "strace")
	bin := filepath.Join(releaseDir(t), "relay46-linux-amd64")

	groups := syscallGroups(t, analyze)
	allowed := map[string]bool{}
	var expand func(name string, into func(string))
	expand = func(name string, into func(string)) {
		if strings.HasPrefix(name, "@") {
			for _, m := range groups[name] {
				expand(m, into)
			}
			return
		}
		into(name)
	}
	for _, v := range unitSettings(t, "relay46.service")["SystemCallFilter"] {
		deny := strings.HasPrefix(v, "~")
		for _, name := range strings.Fields(strings.TrimPrefix(v, "~")) {
			expand(name, func(s string) { allowed[s] = !deny })
		}
	}

	trace := filepath.Join(t.TempDir(), "trace")
	cmd := exec.Command(strace, "-f", "-qq", "-o", trace, bin, "demo", "-once", "-https", "127.0.0.1:0", "-http", "127.0.0.1:0")
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "ptrace") {
			t.Skipf("strace cannot trace here: %s", out)
		}
		t.Fatalf("relay46 demo under strace: %v\n%s", err, out)
	}
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	used := map[string]int{}
	re := regexp.MustCompile(`^\d+\s+([a-z0-9_]+)\(`)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if m := re.FindStringSubmatch(sc.Text()); m != nil {
			used[m[1]]++
		}
	}
	var denied []string
	for name := range used {
		if !allowed[name] {
			denied = append(denied, name)
		}
	}
	slices.Sort(denied)
	t.Logf("relay46 made %d distinct system calls", len(used))
	if len(used) < 20 || len(denied) > 0 {
		t.Errorf("system calls SystemCallFilter= would refuse: %v (of %d used)", denied, len(used))
	}
}

// syscallGroups parses `systemd-analyze syscall-filter`: each @group and
// its members (system calls and other @groups).
func syscallGroups(t *testing.T, analyze string) map[string][]string {
	out, err := exec.Command(analyze, "syscall-filter", "--no-pager").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	groups := map[string][]string{}
	var cur string
	for _, line := range strings.Split(string(out), "\n") {
		switch trimmed := strings.TrimSpace(line); {
		case strings.HasPrefix(line, "@"):
			cur = trimmed
		case trimmed == "" || strings.HasPrefix(trimmed, "#"):
		case cur != "" && strings.HasPrefix(line, " "):
			groups[cur] = append(groups[cur], trimmed)
		}
	}
	if len(groups["@system-service"]) == 0 {
		t.Fatalf("no @system-service in:\n%s", out)
	}
	return groups
}
