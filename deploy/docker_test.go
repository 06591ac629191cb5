package deploy

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relay46/relay46/config"
)

type instruction struct {
	cmd  string // upper case
	args string
	line int
}

type stage struct {
	from, name string
	instrs     []instruction
}

func (s *stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.instrs {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s *stage) last(cmd string) string {
	all := s.all(cmd)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1].args
}

// parseDockerfile reads instructions, joining continuation lines and
// dropping comments, and splits them into stages.
func parseDockerfile(t *testing.T, path string) []*stage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []*stage
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, `\`) {
			cur.WriteString(strings.TrimSuffix(trimmed, `\`) + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cur.Reset()
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.Join(strings.Fields(args), " "), line: start}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := &stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("Dockerfile:%d: %s before FROM", in.line, in.cmd)
			}
			continue
		}
		stages[len(stages)-1].instrs = append(stages[len(stages)-1].instrs, in)
	}
	return stages
}

// execForm parses a JSON exec-form argument list (after any --options).
func execForm(t *testing.T, args string) []string {
	t.Helper()
	i := strings.Index(args, "[")
	var v []string
	if i < 0 || json.Unmarshal([]byte(args[i:]), &v) != nil {
		t.Errorf("%q is not in exec form", args)
	}
	return v
}

func goVersion(t *testing.T) string {
	b, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// TestDockerfile checks the Dockerfile's promises, then runs its build
// stage for real: the context as .dockerignore makes it, and the stage's
// RUN commands (except the apt-get one) in it, in order.
func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, filepath.Join(repo, "Dockerfile"))
	if len(stages) != 2 {
		t.Fatalf("%d stages, want a builder and a final one", len(stages))
	}
	build, final := stages[0], stages[1]
	for _, s := range stages {
		if !regexp.MustCompile(`^[^:@]+(:[\w][\w.-]*)(@sha256:[0-9a-f]{64})?$`).MatchString(s.from) || strings.Contains(s.from, ":latest") {
			t.Errorf("FROM %s: pin base images by tag (or digest), never latest", s.from)
		}
	}
	if want := "golang:" + goVersion(t) + "-bookworm"; build.from != want || build.name != "build" {
		t.Errorf("builder FROM %s AS %s, want %s AS build (the go.mod Go version)", build.from, build.name, want)
	}
	if final.from != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final FROM %s", final.from)
	}

	var buildRun string
	for _, in := range build.all("RUN") {
		if strings.HasPrefix(in.args, "make build ") {
			buildRun = in.args
		}
	}
	if !strings.HasPrefix(buildRun, `make build VERSION="${VERSION}"`) {
		t.Errorf("the builder stage does not run the Makefile's build target (%q)", buildRun)
	}
	if build.last("WORKDIR") != "/src" || !slices.ContainsFunc(final.all("COPY"), func(in instruction) bool { return in.args == "--from=build /src/relay46 /relay46" }) {
		t.Errorf("the final stage must copy the binary make build writes (/src/relay46) to /relay46")
	}

	user := final.last("USER")
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 || user != "65532:65532" {
		t.Errorf("final stage USER %q: want the numeric non-root 65532:65532", user)
	}
	if hc := final.last("HEALTHCHECK"); !slices.Equal(execForm(t, hc[strings.Index(hc, "CMD"):]), []string{"/relay46", "health"}) {
		t.Errorf("HEALTHCHECK %s, want CMD [\"/relay46\", \"health\"]", hc)
	}
	if ep := execForm(t, final.last("ENTRYPOINT")); !slices.Equal(ep, []string{"/relay46"}) {
		t.Errorf("ENTRYPOINT %v", ep)
	}
	if cmd := execForm(t, final.last("CMD")); !slices.Equal(cmd, []string{"run", "-config", "/etc/relay46/relay46.yaml"}) {
		t.Errorf("CMD %v", cmd)
	}
	if v := final.last("VOLUME"); v != config.DefaultStorage {
		t.Errorf("VOLUME %q, want acme.storage's default %s", v, config.DefaultStorage)
	}
	labels := strings.Join(func() (l []string) {
		for _, in := range final.all("LABEL") {
			l = append(l, in.args)
		}
		return
	}(), " ")
	for _, k := range []string{"title", "description", "source", "licenses", "version"} {
		if !strings.Contains(labels, "org.opencontainers.image."+k+"=") {
			t.Errorf("no label org.opencontainers.image.%s", k)
		}
	}

	t.Run("build stage", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("the build stage runs setcap, as root")
		}
		need(t, "setcap", "libcap2-bin")
		ctxDir := dockerContext(t)
		args := map[string]string{"VERSION": "docker-test"}
		for _, in := range build.all("RUN") {
			if strings.HasPrefix(in.args, "apt-get ") {
				t.Logf("Dockerfile:%d: not run here (packages): %s", in.line, in.args)
				continue
			}
			cmd := exec.Command("sh", "-c", in.args)
			cmd.Dir = ctxDir // WORKDIR /src
			cmd.Env = userEnv()
			for k, v := range args {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("Dockerfile:%d: RUN %s: %v\n%s", in.line, in.args, err, out)
			}
			t.Logf("Dockerfile:%d: RUN %s\n%s", in.line, in.args, out)
		}
		bin := filepath.Join(ctxDir, "relay46")
		checkStatic(t, bin, elf.EM_X86_64, elf.ELFCLASS64)
		if out, err := exec.Command(bin, "version").Output(); err != nil || !strings.HasPrefix(string(out), "relay46 docker-test (") {
			t.Errorf("the image's binary says %q (%v)", out, err)
		}
		checkBindCapability(t, bin)
		t.Run("runs as 65532 with the compose file's capabilities", func(t *testing.T) {
			checkNonRootBinding(t, bin)
		})
	})
}

// dockerContext copies the repository as `docker build` would send it:
// everything but what .dockerignore excludes.
func dockerContext(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	type rule struct {
		re     *regexp.Regexp
		negate bool
	}
	var rules []rule
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		r := rule{}
		if r.negate = strings.HasPrefix(line, "!"); r.negate {
			line = line[1:]
		}
		line = strings.Trim(filepath.Clean(line), "/")
		expr := regexp.QuoteMeta(line)
		expr = strings.ReplaceAll(expr, `\*\*/`, `(.*/)?`)
		expr = strings.ReplaceAll(expr, `\*\*`, `.*`)
		expr = strings.ReplaceAll(expr, `\*`, `[^/]*`)
		expr = strings.ReplaceAll(expr, `\?`, `[^/]`)
		r.re = regexp.MustCompile("^" + expr + "$")
		rules = append(rules, r)
	}
	ignored := func(rel string) bool {
		out := false
		for _, r := range rules {
			// A pattern matching a directory excludes what is in it.
			for p := rel; p != "."; p = filepath.Dir(p) {
				if r.re.MatchString(p) {
					out = !r.negate
					break
				}
			}
		}
		return out
	}
	dir, err := os.MkdirTemp("", "relay46-docker-context-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	err = filepath.Walk(repo, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repo, path)
		if rel == "." {
			return nil
		}
		if ignored(rel) {
			if fi.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		dst := filepath.Join(dir, rel)
		switch {
		case fi.IsDir():
			return os.MkdirAll(dst, 0o755)
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{".git", "relay46", "dist", "bench"} {
		if _, err := os.Stat(filepath.Join(dir, gone)); err == nil {
			t.Errorf("the build context contains %s", gone)
		}
	}
	return dir
}

// checkBindCapability reads the file capability: exactly
// cap_net_bind_service, permitted and effective.
func checkBindCapability(t *testing.T, bin string) {
	t.Helper()
	buf := make([]byte, 64)
	n, err := syscall.Getxattr(bin, "security.capability", buf)
	if err != nil || n < 12 {
		t.Fatalf("%s has no file capability: %v", bin, err)
	}
	le := func(b []byte) uint32 { return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24 }
	const capNetBindService = 10
	magic, permitted := le(buf[0:4]), le(buf[4:8])
	if magic&1 == 0 || permitted != 1<<capNetBindService || (n >= 20 && le(buf[12:16]) != 0) {
		t.Errorf("file capability %x: want cap_net_bind_service=ep only", buf[:n])
	}
}

// checkNonRootBinding runs the image's binary the way Docker runs the
// container: as 65532, with no capabilities but the file's, the bounding
// set the compose file leaves. It binds privileged ports. Two changes to
// the compose file would break that, and the kernel says so here too.
func checkNonRootBinding(t *testing.T, bin string) {
	need(t, "setpriv", "util-linux")
	svc := loadCompose(t)
	var keep []string
	for _, c := range svc.CapAdd {
		keep = append(keep, "+"+strings.ToLower(c))
	}
	if !slices.Equal(svc.CapDrop, []string{"ALL"}) {
		t.Fatalf("cap_drop %v, want [ALL]", svc.CapDrop)
	}
	nnp := slices.ContainsFunc(svc.SecurityOpt, func(s string) bool {
		return strings.HasPrefix(s, "no-new-privileges") && !strings.HasSuffix(s, "false")
	})

	ports := privilegedPorts(t, 2)
	dir := filepath.Dir(bin)
	cfg := filepath.Join(dir, "relay46.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: {https: "127.0.0.1:%d", http: "127.0.0.1:%d"}
admin: ""
shutdown_grace: 1s
routes:
  - name: home
    hosts: [home.example]
    upstream: "[::1]:1"
`, ports[0], ports[1])), 0o644)
	run := func(bounding []string, noNewPrivs bool) string {
		// The outer setpriv becomes 65532 with the bounding set; the inner
		// one, started as 65532, holds no capability at all when it execs
		// relay46, as runc's container process does (moby gives non-root
		// containers only a bounding set).
		args := []string{"--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all",
			"--bounding-set=" + strings.Join(append([]string{"-all"}, bounding...), ","), "--", "setpriv"}
		if noNewPrivs {
			args = append(args, "--no-new-privs")
		}
		args = append(args, "--", bin, "run", "-config", cfg)
		cmd := exec.Command("setpriv", args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case <-done:
				return out.String()
			case <-deadline:
				cmd.Process.Kill()
				<-done
				t.Fatalf("no answer from relay46:\n%s", out.String())
			case <-time.After(20 * time.Millisecond):
			}
			if c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", ports[0])); err == nil {
				c.Close()
				cmd.Process.Signal(syscall.SIGTERM)
				<-done
				return "bound\n" + out.String()
			}
		}
	}
	if out := run(keep, nnp); !strings.HasPrefix(out, "bound\n") {
		t.Errorf("as 65532 with bounding set %v, no_new_privs %v (the compose file): relay46 could not bind\n%s", keep, nnp, out)
	}
	if out := run(keep, true); !strings.Contains(out, "bind: permission denied") {
		t.Errorf("with no-new-privileges the file capability should be inert:\n%s", out)
	} else {
		t.Logf("with no-new-privileges: %s", lastLine(out))
	}
	if out := run(nil, false); !strings.Contains(out, "Operation not permitted") {
		t.Errorf("without NET_BIND_SERVICE in the bounding set the kernel should refuse to run it:\n%s", out)
	} else {
		t.Logf("with cap_drop ALL and no cap_add: %s", lastLine(out))
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// privilegedPorts finds free ports below 1024 on 127.0.0.1.
func privilegedPorts(t *testing.T, n int) []int {
	var ports []int
	for p := 1000; p > 600 && len(ports) < n; p-- {
		if ln, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			ln.Close()
			ports = append(ports, p)
		}
	}
	if len(ports) < n {
		t.Skip("no free privileged ports on 127.0.0.1")
	}
	return ports
}
