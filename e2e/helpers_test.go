package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// needTool finds a program the test needs. Missing it fails the test in CI
// (where .ci/run installs it) and skips it elsewhere, with the reason.
func needTool(t *testing.T, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is not installed; .ci/run must install it (Debian package %s)", name, pkg)
	}
	t.Skipf("%s is not installed (apt-get install %s); skipping", name, pkg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// moduleRoot is the directory of relay46's go.mod (this package's parent).
func moduleRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(wd)
	if !fileExists(filepath.Join(root, "go.mod")) {
		t.Fatalf("no go.mod in %s", root)
	}
	return root
}

// buildBinaries builds Go main packages of relay46's module into dir, in
// one go build invocation, the way they ship (static, no cgo: the pure-Go
// resolver reads /etc/resolv.conf, which "ip netns exec" can replace). It
// returns the paths by package. RELAY46_BIN, when set, is used instead of
// building ./cmd/relay46, to test a release binary.
func buildBinaries(t *testing.T, dir string, pkgs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var build []string
	for _, p := range pkgs {
		if p == "./cmd/relay46" && os.Getenv("RELAY46_BIN") != "" {
			out[p] = os.Getenv("RELAY46_BIN")
			continue
		}
		out[p] = filepath.Join(dir, filepath.Base(p))
		build = append(build, p)
	}
	if len(build) == 0 {
		return out
	}
	start := time.Now()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", append([]string{"build", "-trimpath", "-o", dir + "/"}, build...)...)
	cmd.Dir = moduleRoot(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v: %v\n%s", build, err, b)
	}
	t.Logf("built %s in %s", strings.Join(build, " "), time.Since(start).Round(100*time.Millisecond))
	return out
}

// testCA is a certificate authority for the origins' own certificates and
// Pebble's HTTPS listener.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue returns a PEM certificate and key for names (DNS names or IP
// addresses).
func (ca *testCA) issue(t *testing.T, names ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
}

func (ca *testCA) tlsCert(t *testing.T, names ...string) tls.Certificate {
	t.Helper()
	c, k := ca.issue(t, names...)
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// proc is a program the test started; it is stopped when the test ends.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // its stdout and stderr
	done chan struct{}
	err  error // after done
}

// startProc starts cmd with its output in dir/<name>.log. At the end of
// the test it gets SIGTERM, then SIGKILL after 10s; if the test failed,
// the tail of its log is printed.
func startProc(t *testing.T, dir, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			var events []string
			for _, l := range grepLines(p.log, "") {
				if !strings.Contains(l, `"msg":"connection"`) && !strings.Contains(l, `"msg":"request"`) {
					events = append(events, l)
				}
			}
			if len(events) > 60 {
				events = events[len(events)-60:]
			}
			t.Logf("--- %s (%s), lines other than per-connection and per-request logs:\n%s", name, p.log, indent(strings.Join(events, "\n")))
			t.Logf("--- last lines of %s:\n%s", name, indent(tail(p.log, 20)))
		}
	})
	return p
}

// stop signals SIGTERM and waits up to grace before SIGKILL.
func (p *proc) stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
	return p.err
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// grepLines returns the lines of a file that contain every one of subs.
func grepLines(path string, subs ...string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
next:
	for sc.Scan() {
		for _, s := range subs {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		out = append(out, sc.Text())
	}
	return out
}

// waitFor polls cond every 100ms until it returns nil or timeout passes,
// and returns its last error.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dnsZone is a tiny authoritative DNS server: A and AAAA answers per
// name, changeable while it runs, with a 1s TTL so resolvers come back
// soon. Names it does not know get NXDOMAIN.
type dnsZone struct {
	mu      sync.Mutex
	records map[string][]netip.Addr // by lower-case FQDN
	queries map[string]int
}

func newDNSZone() *dnsZone {
	return &dnsZone{records: map[string][]netip.Addr{}, queries: map[string]int{}}
}

// set replaces the addresses of name.
func (z *dnsZone) set(name string, addrs ...netip.Addr) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records[dns.CanonicalName(name)] = addrs
}

func (z *dnsZone) queryCount(name string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.queries[dns.CanonicalName(name)]
}

func (z *dnsZone) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	z.mu.Lock()
	for _, q := range r.Question {
		name := dns.CanonicalName(q.Name)
		z.queries[name]++
		addrs, ok := z.records[name]
		if !ok {
			m.Rcode = dns.RcodeNameError
		}
		for _, a := range addrs {
			hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: 1, Rrtype: q.Qtype}
			switch {
			case q.Qtype == dns.TypeA && a.Is4():
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
			case q.Qtype == dns.TypeAAAA && a.Is6():
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
	}
	z.mu.Unlock()
	w.WriteMsg(m)
}

// serveDNS answers from z on UDP and TCP addr inside the namespace.
func (z *dnsZone) serve(t *testing.T, ns *netns, addr string) {
	t.Helper()
	pc := ns.listenPacket(t, "udp", addr)
	ln := ns.listen(t, "tcp", addr)
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: z}, {Listener: ln, Handler: z}} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go s.ActivateAndServe()
		<-started
		t.Cleanup(func() { s.Shutdown() })
	}
}

// must is for setup steps that cannot fail in a working test.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// lines formats a multi-line block indented for t.Logf.
func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
