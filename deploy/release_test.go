// Package deploy holds relay46's deployment files (Dockerfile at the repository
// root, docker-compose.yml, systemd units, release target) and their tests:
// the files are parsed and cross-checked, the Dockerfile's build stage and
// `make release` are run for real, and the systemd units are checked by
// systemd's own tools.
package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const repo = ".." // tests run in deploy/

var release struct {
	once sync.Once
	dir  string
	out  []byte
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if release.dir != "" {
		os.RemoveAll(release.dir)
	}
	os.Exit(code)
}

// releaseDir runs `make release` once per test run, into a temporary DIST.
func releaseDir(t *testing.T) string {
	t.Helper()
	release.once.Do(func() {
		release.dir, release.err = os.MkdirTemp("", "relay46-release-")
		if release.err != nil {
			return
		}
		os.Chmod(release.dir, 0o755) // the capability test runs binaries as another user
		release.out, release.err = makeCmd("release", "VERSION=deploy-test", "DIST="+release.dir).CombinedOutput()
	})
	if release.err != nil {
		t.Fatalf("make release: %v\n%s", release.err, release.out)
	}
	return release.dir
}

// makeCmd runs the repository's Makefile as a user would, even when the
// tests themselves run under make (make test).
func makeCmd(args ...string) *exec.Cmd {
	cmd := exec.Command("make", append([]string{"--no-print-directory", "-C", repo}, args...)...)
	cmd.Env = userEnv()
	return cmd
}

// userEnv is the environment without what an enclosing make adds.
func userEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MAKELEVEL" && k != "MFLAGS" {
			env = append(env, kv)
		}
	}
	return env
}

// need finds a tool the test needs: missing, the test fails in CI (.ci/run
// installs it) and is skipped elsewhere.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed; .ci/run must install %s", tool, pkg)
		}
		t.Skipf("%s is not installed (apt-get install %s)", tool, pkg)
	}
	return p
}

// --- Makefile and releases ---

// TestOneBuildCommand checks that `make build` and each `make release`
// binary run the Makefile's BUILD command, character for character.
func TestOneBuildCommand(t *testing.T) {
	mk, err := os.ReadFile(filepath.Join(repo, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	def := regexp.MustCompile(`(?m)^BUILD\s*:=\s*(.*)$`).FindSubmatch(mk)
	if def == nil {
		t.Fatal("Makefile has no BUILD := line")
	}
	for _, want := range []string{"CGO_ENABLED=0", "build -trimpath", "$(LDFLAGS)"} {
		if !bytes.Contains(def[1], []byte(want)) {
			t.Errorf("BUILD lacks %q: %s", want, def[1])
		}
	}
	dryRun := func(args ...string) []string {
		out, err := makeCmd(append([]string{"-s", "-n"}, args...)...).Output()
		if err != nil {
			t.Fatalf("make -n %v: %v", args, err)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	build := dryRun("build", "VERSION=v9", "OUT=out/relay46")
	want := `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=v9"`
	if len(build) != 1 || build[0] != want+" -o out/relay46 ./cmd/relay46" {
		t.Fatalf("make build runs %q, want %q + -o out/relay46 ./cmd/relay46", build, want)
	}
	var builds int
	for _, line := range dryRun("release", "VERSION=v9", "DIST=d") {
		if strings.Contains(line, " build ") {
			builds++
			if !strings.Contains(line, want+" -o d/relay46-linux-") {
				t.Errorf("make release builds with %q, not BUILD (%s)", line, want)
			}
		}
	}
	if builds != 3 {
		t.Errorf("make release runs %d builds, want 3", builds)
	}
}

// TestRelease builds the release binaries and checks what a user downloads:
// static binaries for the right machines, checksums that match, and an
// amd64 binary that passes the smoke test.
func TestRelease(t *testing.T) {
	dist := releaseDir(t)
	for _, tc := range []struct {
		name    string
		machine elf.Machine
		class   elf.Class
		goarch  string
		goarm   string
	}{
		{"relay46-linux-amd64", elf.EM_X86_64, elf.ELFCLASS64, "amd64", ""},
		{"relay46-linux-arm64", elf.EM_AARCH64, elf.ELFCLASS64, "arm64", ""},
		{"relay46-linux-armv7", elf.EM_ARM, elf.ELFCLASS32, "arm", "7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dist, tc.name)
			checkStatic(t, path, tc.machine, tc.class)
			bi, err := buildinfo.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			settings := map[string]string{}
			for _, s := range bi.Settings {
				settings[s.Key] = s.Value
			}
			if bi.Path != "github.com/relay46/relay46/cmd/relay46" || settings["GOOS"] != "linux" || settings["GOARCH"] != tc.goarch ||
				settings["GOARM"] != tc.goarm || settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
				t.Errorf("built as %s with %v", bi.Path, settings)
			}
			// -trimpath keeps -ldflags out of the build info; the stamped
			// version is in the data.
			if b, _ := os.ReadFile(path); !bytes.Contains(b, []byte("deploy-test")) {
				t.Error("the version (-X main.version=deploy-test) is not stamped")
			}
		})
	}

	sums, err := os.ReadFile(filepath.Join(dist, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, line := range strings.Split(strings.TrimSpace(string(sums)), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("SHA256SUMS line %q is not in sha256sum's format", line)
		}
		b, err := os.ReadFile(filepath.Join(dist, name))
		if err != nil {
			t.Fatal(err)
		}
		if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
			t.Errorf("SHA256SUMS: %s does not match", name)
		}
		listed = append(listed, name)
	}
	if want := []string{"relay46-linux-amd64", "relay46-linux-arm64", "relay46-linux-armv7"}; !slices.Equal(listed, want) {
		t.Errorf("SHA256SUMS lists %v, want %v", listed, want)
	}

	// The smoke test, on the binary a user downloads.
	bin := filepath.Join(dist, "relay46-linux-amd64")
	run := func(timeout time.Duration, args ...string) string {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("relay46 %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	if out := run(5*time.Second, "version"); !strings.HasPrefix(out, "relay46 deploy-test (") {
		t.Errorf("version: %q", out)
	}
	if out := run(5*time.Second, "check", "-config", "relay46.example.yaml"); !strings.Contains(out, "relay46.example.yaml: OK") {
		t.Errorf("check of the example config:\n%s", out)
	}
	if out := run(30*time.Second, "demo", "-once", "-https", "127.0.0.1:0", "-http", "127.0.0.1:0"); !strings.Contains(out, "learned from PROXY protocol v2") {
		t.Errorf("demo -once:\n%s", out)
	}
}

// checkStatic fails unless path is an ELF executable for machine with no
// program interpreter and no shared libraries.
func checkStatic(t *testing.T, path string, machine elf.Machine, class elf.Class) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine || f.Class != class || f.Type != elf.ET_EXEC {
		t.Errorf("%s: %s %s %s, want %s %s executable", path, f.Class, f.Machine, f.Type, class, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s has a %s segment: not static", path, p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("%s needs shared libraries %v (%v)", path, libs, err)
	}
}
