package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every network namespace these tests create,
// followed by the creating process's PID, so that a crashed run's leftovers
// can be told apart from a run still going.
const nsPrefix = "r46e2e-"

// netns is a network namespace the test created and removes at its end.
// Programs run in it with "ip netns exec"; the test process itself opens
// sockets in it from an OS thread that joined it (see do): a socket stays
// in the namespace it was created in, whichever thread uses it later.
type netns struct {
	name string
	file *os.File // /run/netns/<name>, kept open for setns
}

// newNetns creates the namespace <nsPrefix><pid>-<role> with its loopback
// up, and removes it (and anything still running in it) when the test ends.
func newNetns(t *testing.T, role string) *netns {
	t.Helper()
	name := fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), role)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	n := &netns{name: name}
	t.Cleanup(func() { removeNetns(name); n.file.Close() })
	f, err := os.Open(filepath.Join("/run/netns", name))
	if err != nil {
		t.Fatal(err)
	}
	n.file = f
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// canCreateNetns says whether this process may create network namespaces,
// and why not.
func canCreateNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("not root (ip netns needs CAP_SYS_ADMIN)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("no ip command (apt-get install iproute2): %w", err)
	}
	name := fmt.Sprintf("%s%d-probe", nsPrefix, os.Getpid())
	out, err := exec.Command("ip", "netns", "add", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	removeNetns(name)
	return nil
}

// removeNetns kills what still runs in the namespace, deletes it and its
// /etc/netns files. Every process in it was started by these tests.
func removeNetns(name string) {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	exec.Command("ip", "netns", "del", name).Run()
	os.RemoveAll(filepath.Join("/etc/netns", name))
}

// cleanStaleNetns removes namespaces left by runs that crashed before their
// cleanup: those with our prefix whose creating process is gone.
func cleanStaleNetns(t *testing.T) {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		name := f[0]
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, nsPrefix), "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue // a run still going
		}
		t.Logf("removing stale namespace %s from a crashed run", name)
		removeNetns(name)
	}
}

// ip runs "ip -n <ns> args…" and fails the test if it fails.
func (n *netns) ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", n.name, strings.Join(args, " "), err, out)
	}
}

// command returns a command that runs name in the namespace. "ip netns
// exec" execs it in place, so the command's PID is the program's.
func (n *netns) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// do runs fn on a fresh OS thread that has joined the namespace. The
// thread is never handed back to the Go scheduler: it exits with fn's
// goroutine, so no other goroutine ever runs in the namespace by accident.
// Sockets fn creates belong to the namespace for their whole life.
func (n *netns) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Setns(int(n.file.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", n.name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// sysctl writes a /proc/sys/net value of the namespace.
func (n *netns) sysctl(t *testing.T, key, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	if err := n.do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("%s: sysctl %s=%s: %v", n.name, key, value, err)
	}
}

// listen opens a listener inside the namespace.
func (n *netns) listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := n.do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen %s %s: %v", n.name, network, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// listenPacket opens a packet listener inside the namespace.
func (n *netns) listenPacket(t *testing.T, network, addr string) net.PacketConn {
	t.Helper()
	var pc net.PacketConn
	err := n.do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen %s %s: %v", n.name, network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc
}

// dial connects from inside the namespace. addr must be an IP literal:
// a name lookup could run on another thread, outside the namespace.
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.do(func() (err error) {
		d := net.Dialer{Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// dialTo returns a DialContext for http.Transport that sends every
// connection, whatever its URL names, to the fixed address to inside the
// namespace: like curl --resolve.
func (n *netns) dialTo(to string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, _ string) (net.Conn, error) {
		return n.dial(ctx, network, to)
	}
}
