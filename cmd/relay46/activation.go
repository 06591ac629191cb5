package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/relay46/relay46/proxy"
)

// Socket activation: systemd (or anything speaking the sd_listen_fds(3)
// protocol) binds :80 and :443 itself and passes the listening sockets to
// relay46 as file descriptors 3, 4, …. The service then needs no privilege
// to bind, and the sockets outlive the process: connections made while
// relay46 restarts wait in the kernel's accept queue instead of being
// refused.

// listenFDsStart is the first file descriptor passed (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// The sd_listen_fds(3) environment.
const (
	envListenPID     = "LISTEN_PID"
	envListenFDs     = "LISTEN_FDS"
	envListenFDNames = "LISTEN_FDNAMES"
)

// listenFDs reads the sd_listen_fds(3) variables and unsets them, so that no
// child process takes the sockets for its own. It returns how many
// descriptors were passed to the process with id pid, starting at
// listenFDsStart, and their names ("" when unnamed). It returns 0 when none
// were passed or when they were meant for another process.
func listenFDs(pid int, getenv func(string) string, unsetenv func(string) error) (int, []string, error) {
	pidText, fdsText, namesText := getenv(envListenPID), getenv(envListenFDs), getenv(envListenFDNames)
	for _, k := range []string{envListenPID, envListenFDs, envListenFDNames} {
		unsetenv(k)
	}
	if pidText == "" || fdsText == "" {
		return 0, nil, nil
	}
	p, err := strconv.Atoi(pidText)
	if err != nil {
		return 0, nil, fmt.Errorf("socket activation: %s=%q is not a process id", envListenPID, pidText)
	}
	if p != pid {
		return 0, nil, nil // inherited from a parent that was the one activated
	}
	n, err := strconv.Atoi(fdsText)
	if err != nil || n < 0 {
		return 0, nil, fmt.Errorf("socket activation: %s=%q is not a count", envListenFDs, fdsText)
	}
	names := make([]string, n)
	if namesText != "" {
		split := strings.Split(namesText, ":")
		if len(split) != n {
			return 0, nil, fmt.Errorf("socket activation: %s names %d sockets but %s=%d", envListenFDNames, len(split), envListenFDs, n)
		}
		copy(names, split)
	}
	return n, names, nil
}

// activationFromEnv takes the sockets passed to this process, if any.
func activationFromEnv(logger *zap.Logger) (*activation, error) {
	n, names, err := listenFDs(os.Getpid(), os.Getenv, os.Unsetenv)
	if err != nil || n == 0 {
		return nil, err
	}
	files := make([]*os.File, n)
	for i := range files {
		fd := listenFDsStart + i
		files[i] = os.NewFile(uintptr(fd), "LISTEN_FD_"+strconv.Itoa(fd))
	}
	return newActivation(files, names, logger)
}

// activation holds the listening sockets passed in by the service manager
// and hands them to the daemon's listeners. Its listen method is the
// daemon's listen function. A nil *activation binds every listener itself.
type activation struct {
	sockets []*inheritedSocket
	logger  *zap.Logger
}

// inheritedSocket is one passed socket. Its file stays open until the
// process exits: a listener made from it is a duplicate descriptor, so
// closing that listener (a reload that drops the address) leaves the
// socket bound, and a later reload back to it gets it again. The socket
// belongs to the service manager's socket unit; only stopping that unit
// closes the port.
type inheritedSocket struct {
	name   string   // its LISTEN_FDNAMES entry: a listener role, or anything else
	file   *os.File // a close-on-exec duplicate of the passed descriptor
	addr   net.Addr
	passed string // the passed descriptor, for messages
}

func (s *inheritedSocket) String() string {
	return fmt.Sprintf("%s (%q, %s)", s.passed, s.name, s.addr)
}

// newActivation checks that each file is a listening stream socket and
// remembers its address. It takes ownership of the files and closes them:
// passed descriptors are not close-on-exec, and no child process should
// inherit the sockets. It keeps close-on-exec duplicates instead.
func newActivation(files []*os.File, names []string, logger *zap.Logger) (*activation, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	a := &activation{logger: logger}
	for i, f := range files {
		s, err := inherit(f, names[i])
		if err != nil {
			a.close()
			for _, f := range files[i+1:] {
				f.Close()
			}
			return nil, err
		}
		a.sockets = append(a.sockets, s)
		logger.Info("socket passed by the service manager", zap.String("fd_name", s.name), zap.Stringer("address", s.addr))
	}
	return a, nil
}

func inherit(f *os.File, name string) (*inheritedSocket, error) {
	defer f.Close()
	ln, err := net.FileListener(f) // a close-on-exec duplicate
	if err != nil {
		return nil, fmt.Errorf("socket activation: %s (%q) is not a listening stream socket (ListenStream= with Accept=no): %w", f.Name(), name, err)
	}
	defer ln.Close()
	filer, ok := ln.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, fmt.Errorf("socket activation: %s (%q): unsupported listener %T", f.Name(), name, ln)
	}
	held, err := filer.File() // another, to keep
	if err != nil {
		return nil, fmt.Errorf("socket activation: %s (%q): %w", f.Name(), name, err)
	}
	return &inheritedSocket{name: name, file: held, addr: ln.Addr(), passed: f.Name()}, nil
}

// close closes the inherited sockets; tests use it, the daemon keeps them.
func (a *activation) close() {
	if a == nil {
		return
	}
	for _, s := range a.sockets {
		s.file.Close()
	}
}

// listen is the daemon's listen function. A socket named after the role
// ("https", "http" or "admin": FileDescriptorName= in the socket unit) is
// used whatever address the config gives; a socket with any other name is
// used when its address is the one asked for. Otherwise it binds addr.
func (a *activation) listen(role, network, addr string) (net.Listener, error) {
	if s := a.find(role, network, addr); s != nil {
		ln, err := net.FileListener(s.file)
		if err != nil {
			return nil, fmt.Errorf("socket activation: %s: %w", s, err)
		}
		a.logger.Info("listening on a socket passed by the service manager", zap.String("listener", role),
			zap.String("fd_name", s.name), zap.Stringer("address", s.addr), zap.String("configured", addr))
		return ln, nil
	}
	return net.Listen(network, addr)
}

func (a *activation) find(role, network, addr string) *inheritedSocket {
	if a == nil {
		return nil
	}
	for _, s := range a.sockets {
		if s.name == role {
			return s
		}
	}
	for _, s := range a.sockets {
		if !isListenerRole(s.name) && sameAddr(s.addr, network, addr) {
			return s
		}
	}
	return nil
}

func isListenerRole(name string) bool {
	switch proxy.Protocol(name) {
	case proxy.HTTPS, proxy.HTTP, adminListener:
		return true
	}
	return false
}

// sameAddr says whether a socket bound to have is what net.Listen(network,
// want) would bind. An empty host matches a socket bound to an unspecified
// address, [::] (what ListenStream=443 binds) or 0.0.0.0; any other host
// must be the same IP address. Host names are never resolved: name such
// sockets instead.
func sameAddr(have net.Addr, network, want string) bool {
	ta, ok := have.(*net.TCPAddr)
	if !ok || !strings.HasPrefix(network, "tcp") {
		return false
	}
	host, port, err := net.SplitHostPort(want)
	if err != nil {
		return false
	}
	p, err := net.LookupPort(network, port)
	if err != nil || p != ta.Port {
		return false
	}
	if host == "" {
		return ta.IP.IsUnspecified()
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.Equal(ta.IP)
}

// netListen is the daemon's listen function without socket activation.
func netListen(_, network, addr string) (net.Listener, error) {
	return net.Listen(network, addr)
}
