package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay46/relay46/internal/leaktest"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
	"github.com/relay46/relay46/upstream/dnstest"
)

var _ Observer = (*metrics.Metrics)(nil)

func TestMain(m *testing.M) { leaktest.Main(m, "relay46/upstream.", "upstream") }

var (
	ip = netip.MustParseAddr
	ap = netip.MustParseAddrPort
)

// testRegistry is a Registry with observed logs and a settable clock.
type testRegistry struct {
	*Registry
	logs *observer.ObservedLogs
	mu   sync.Mutex
	now  time.Time
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	tr := &testRegistry{logs: logs, now: time.Now()}
	tr.Registry = NewRegistry(Options{Logger: zap.New(core), Now: tr.clock})
	t.Cleanup(func() { tr.Close() })
	return tr
}

func (tr *testRegistry) clock() time.Time {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.now
}

func (tr *testRegistry) advance(d time.Duration) {
	tr.mu.Lock()
	tr.now = tr.now.Add(d)
	tr.mu.Unlock()
}

// apply parses yaml (storage in a temp dir unless given) and applies it.
func (tr *testRegistry) apply(t *testing.T, yaml string) map[string]Route {
	t.Helper()
	if !strings.Contains(yaml, "storage:") {
		yaml = fmt.Sprintf("acme: {storage: %q}\n", t.TempDir()) + yaml
	}
	cfg, err := config.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	routes, err := tr.Apply(cfg)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return routes
}

func candidates(t *testing.T, u *Upstream) []netip.AddrPort {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := u.Candidates(ctx)
	if err != nil {
		t.Fatalf("Candidates: %v", err)
	}
	return got
}

// eventually polls until f returns "" or the deadline passes.
func eventually(t *testing.T, d time.Duration, f func() string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < d {
		if last = f(); last == "" {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("after %s: %s", d, last)
	return 0
}

func want(got []netip.AddrPort, addrs ...string) string {
	var w []netip.AddrPort
	for _, a := range addrs {
		w = append(w, ap(a))
	}
	if !reflect.DeepEqual(got, w) {
		return fmt.Sprintf("candidates %v, want %v", got, w)
	}
	return ""
}

// TestDNSFollowsTTL changes a name's AAAA answer on a real DNS server
// while the registry runs: the new address is used within the TTL, the
// old one is no longer allowed, and a resolver outage keeps the last good
// answer (and says so in the log).
func TestDNSFollowsTTL(t *testing.T) {
	dns := dnstest.Start(t)
	dns.Set("home.example.net", time.Second, ip("2001:db8:1::2:64"))
	tr := newTestRegistry(t)
	routes := tr.apply(t, fmt.Sprintf(`
resolvers: [%q]
dns_ttl: {floor: 100ms}
routes:
  - name: home
    hosts: [home.example]
    upstream: home.example.net:443
`, dns.Addr()))
	up := routes["home"].Main
	if msg := want(candidates(t, up), "[2001:db8:1::2:64]:443"); msg != "" {
		t.Fatal(msg)
	}
	if http := routes["home"].HTTP; want(candidates(t, http), "[2001:db8:1::2:64]:80") != "" {
		t.Errorf(":80 follows the same name on port 80: %v", candidates(t, http))
	}

	// The home's prefix changes: within the 1s TTL new dials go there.
	dns.Set("home.example.net", time.Second, ip("2001:db8:2::2:64"))
	took := eventually(t, 3*time.Second, func() string { return want(candidates(t, up), "[2001:db8:2::2:64]:443") })
	if took > 1500*time.Millisecond {
		t.Errorf("followed the new answer after %s; the TTL was 1s", took)
	}
	if up.Allows(ap("[2001:db8:1::2:64]:443")) || !up.Allows(ap("[2001:db8:2::2:64]:443")) {
		t.Error("the dialer would still allow the old address, or not the new one")
	}

	// The resolver goes away: the last good answer stays, for longer than
	// its TTL, and the log says why.
	// (A dropped question takes the 2s query timeout to fail.)
	dns.Fail(dnstest.Drop)
	eventually(t, 10*time.Second, func() string {
		if msg := want(candidates(t, up), "[2001:db8:2::2:64]:443"); msg != "" {
			t.Fatalf("during the outage: %s", msg)
		}
		if tr.logs.FilterMessage("resolving upstream failed; keeping the last good answer").Len() < 2 {
			return "the outage was not logged (twice)"
		}
		return ""
	})
	dns.Fail(dnstest.Answer)
	dns.Set("home.example.net", time.Second, ip("2001:db8:3::2:64"))
	eventually(t, 10*time.Second, func() string { return want(candidates(t, up), "[2001:db8:3::2:64]:443") })
	if tr.logs.FilterMessage("resolver answers again").Len() == 0 {
		t.Error("the recovery was not logged")
	}
}

func TestDNSClampsTTL(t *testing.T) {
	dns := dnstest.Start(t)
	dns.Set("home.example.net", 0, ip("2001:db8::1"))
	tr := newTestRegistry(t)
	tr.apply(t, fmt.Sprintf(`
resolvers: [%q]
dns_ttl: {floor: 300ms, ceiling: 1s}
routes:
  - {name: home, hosts: [home.example], upstream: "home.example.net:443"}
`, dns.Addr()))
	time.Sleep(100 * time.Millisecond)
	before := dns.Queries()
	time.Sleep(time.Second)
	// TTL 0 is asked again at the floor (300ms, less a tenth): about 3
	// times a second, AAAA only. Far more would hammer the resolver.
	if n := dns.Queries() - before; n < 2 || n > 5 {
		t.Errorf("%d questions in 1s with a 300ms floor", n)
	}
	dns.Set("home.example.net", time.Hour, ip("2001:db8::2"))
	time.Sleep(500 * time.Millisecond)
	before = dns.Queries()
	time.Sleep(1500 * time.Millisecond)
	// A TTL of an hour is asked again at the 1s ceiling.
	if n := dns.Queries() - before; n < 1 || n > 3 {
		t.Errorf("%d questions in 1.5s with a 1s ceiling", n)
	}
}

func TestDNSRefusesSpecialAndOutsideAddresses(t *testing.T) {
	dns := dnstest.Start(t)
	dns.Set("home.example.net", time.Second, ip("::1"), ip("2001:db8::1"), ip("2001:db9::1"))
	tr := newTestRegistry(t)
	routes := tr.apply(t, fmt.Sprintf(`
resolvers: [%q]
routes:
  - {name: a, hosts: [a.example], upstream: "home.example.net:443"}
  - {name: b, hosts: [b.example], upstream: "home.example.net:443", allowed_prefixes: ["2001:db8::/32"]}
  - {name: c, hosts: [c.example], upstream: "home.example.net:443", allowed_prefixes: ["::1/128"]}
`, dns.Addr()))
	// Loopback from DNS is never used unless allowed_prefixes names it.
	if msg := want(candidates(t, routes["a"].Main), "[2001:db8::1]:443", "[2001:db9::1]:443"); msg != "" {
		t.Error("a:", msg)
	}
	if msg := want(candidates(t, routes["b"].Main), "[2001:db8::1]:443"); msg != "" {
		t.Error("b:", msg)
	}
	if msg := want(candidates(t, routes["c"].Main), "[::1]:443"); msg != "" {
		t.Error("c:", msg)
	}
}

func TestDNSFirstAnswerFails(t *testing.T) {
	dns := dnstest.Start(t)
	tr := newTestRegistry(t)
	routes := tr.apply(t, fmt.Sprintf(`
resolvers: [%q]
routes:
  - {name: home, hosts: [home.example], upstream: "gone.example.net:443"}
`, dns.Addr()))
	_, err := routes["home"].Main.Candidates(context.Background())
	if err == nil || !strings.Contains(err.Error(), "NXDOMAIN") {
		t.Errorf("Candidates = %v, want the NXDOMAIN error", err)
	}
}

func TestHostsFileFirst(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n::1 localhost ip6-localhost\n2001:db8::7 Home.Example.NET # comment\n"), 0o644)
	conf := filepath.Join(dir, "resolv.conf")
	os.WriteFile(conf, []byte("nameserver 127.0.0.1\noptions timeout:1\n"), 0o644)
	l := systemLookuper(conf, hosts)
	a, err := l.lookup(context.Background(), "home.example.net", false)
	if err != nil || !reflect.DeepEqual(a.addrs, []netip.Addr{ip("2001:db8::7")}) {
		t.Errorf("lookup = %v, %v", a, err)
	}
	a, _ = l.lookup(context.Background(), "localhost", true)
	if !reflect.DeepEqual(a.addrs, []netip.Addr{ip("::1"), ip("127.0.0.1")}) {
		t.Errorf("localhost = %v (IPv6 first, IPv4 only when allowed)", a.addrs)
	}
}

const pushYAML = `
updates: {listen: "127.0.0.1:0"}
routes:
  - name: home
    hosts: [home.example, "*.home.example"]
    allowed_prefixes: ["2001:db8::/32"]
    upstreams:
      - address_from: update
      - prefix_from: update
        interface_id: "::2:64"
        port: 8443
        http_port: 0
    update: {username: home, password_hash: "$2a$04$CxYMXcbBZyF/ZWnMnoOGMeP3aa/tyHipHddd0LJNMU34d9FNHsSL2"}
`

func TestPush(t *testing.T) {
	dir := t.TempDir()
	tr := newTestRegistry(t)
	yaml := fmt.Sprintf("acme: {storage: %q}\n", dir) + pushYAML
	routes := tr.apply(t, yaml)
	up := routes["home"].Main
	if _, err := up.Candidates(context.Background()); !errors.Is(err, ErrNoAddress) {
		t.Fatalf("before any push: %v, want ErrNoAddress", err)
	}
	if a, ok := tr.Lookup("Home.Example."); !ok || a.Route != "home" || a.Username != "home" {
		t.Errorf("Lookup = %+v, %v", a, ok)
	}
	if _, ok := tr.Lookup("x.home.example"); ok {
		t.Error("a wildcard host is not an update hostname")
	}

	ctx := context.Background()
	res, err := tr.Push(ctx, "home", ip("2001:db8:1:2:a:b:c:d"), "192.0.2.1")
	if err != nil || res != PushChanged {
		t.Fatalf("Push = %v, %v", res, err)
	}
	// Returning means new dials already use it: the whole address on
	// 443, and the /64 with the interface identifier on 8443.
	if msg := want(candidates(t, up), "[2001:db8:1:2:a:b:c:d]:443", "[2001:db8:1:2::2:64]:8443"); msg != "" {
		t.Fatal(msg)
	}
	if msg := want(candidates(t, routes["home"].HTTP), "[2001:db8:1:2:a:b:c:d]:80"); msg != "" {
		t.Error(":80:", msg)
	}
	if res, err := tr.Push(ctx, "home", ip("2001:db8:1:2:a:b:c:d"), "x"); res != PushUnchanged || err != nil {
		t.Errorf("same address again = %v, %v", res, err)
	}
	for _, bad := range []string{"2001:db9::1", "192.0.2.7", "fe80::1", "::1"} {
		if _, err := tr.Push(ctx, "home", ip(bad), "x"); !errors.Is(err, ErrRefused) {
			t.Errorf("Push(%s) = %v, want ErrRefused", bad, err)
		}
	}
	if _, err := tr.Push(ctx, "nope", ip("2001:db8::1"), "x"); !errors.Is(err, ErrNoRoute) {
		t.Errorf("unknown route: %v", err)
	}
	if msg := want(candidates(t, up), "[2001:db8:1:2:a:b:c:d]:443", "[2001:db8:1:2::2:64]:8443"); msg != "" {
		t.Fatal("after refused pushes:", msg)
	}

	// A restart (a new registry on the same storage) starts from the last
	// pushed address.
	tr.Close()
	b, err := os.ReadFile(filepath.Join(dir, StateFileName))
	if err != nil || !strings.Contains(string(b), `"address": "2001:db8:1:2:a:b:c:d"`) || !strings.Contains(string(b), `"pushed_from": "192.0.2.1"`) {
		t.Fatalf("state file: %s, %v", b, err)
	}
	tr2 := newTestRegistry(t)
	routes = tr2.apply(t, yaml)
	if msg := want(candidates(t, routes["home"].Main), "[2001:db8:1:2:a:b:c:d]:443", "[2001:db8:1:2::2:64]:8443"); msg != "" {
		t.Fatal("after restart:", msg)
	}
}

func TestPushOverReload(t *testing.T) {
	tr := newTestRegistry(t)
	yaml := fmt.Sprintf("acme: {storage: %q}\n", t.TempDir()) + pushYAML
	routes := tr.apply(t, yaml)
	tr.Push(context.Background(), "home", ip("2001:db8:5::1"), "x")
	again := tr.apply(t, yaml)
	if again["home"].Main.set != routes["home"].Main.set {
		t.Error("an unchanged route got a new set on reload")
	}
	changed := tr.apply(t, strings.Replace(yaml, "port: 8443", "port: 9443", 1))
	if changed["home"].Main.set == routes["home"].Main.set {
		t.Fatal("a changed route kept its set")
	}
	if msg := want(candidates(t, changed["home"].Main), "[2001:db8:5::1]:443", "[2001:db8:5::2:64]:9443"); msg != "" {
		t.Error("the pushed address did not carry over the reload:", msg)
	}
}

func TestPassiveEjection(t *testing.T) {
	tr := newTestRegistry(t)
	routes := tr.apply(t, `
routes:
  - name: two
    hosts: [two.example]
    upstreams: [{address: "[2001:db8::a]:443"}, {address: "[2001:db8::b]:443"}]
    ejection: {failures: 2, duration: 10s}
`)
	up := routes["two"].Main
	a, b := ap("[2001:db8::a]:443"), ap("[2001:db8::b]:443")
	up.Report(a, errors.New("refused"))
	if msg := want(candidates(t, up), a.String(), b.String()); msg != "" {
		t.Fatal("one failure is not enough:", msg)
	}
	up.Report(a, errors.New("refused"))
	if msg := want(candidates(t, up), b.String(), a.String()); msg != "" {
		t.Fatal("after two failures a goes last:", msg)
	}
	up.Report(a, fmt.Errorf("wrapped: %w", ErrNotAllowed)) // the relay's own refusal is no failure of a
	tr.advance(11 * time.Second)
	if msg := want(candidates(t, up), a.String(), b.String()); msg != "" {
		t.Fatal("after the ejection a is first again:", msg)
	}
	if tr.logs.FilterMessage("upstream address ejected after failed dials").Len() != 1 {
		t.Error("ejection not logged once")
	}
}

func TestRoundRobin(t *testing.T) {
	tr := newTestRegistry(t)
	routes := tr.apply(t, `
routes:
  - name: rr
    hosts: [rr.example]
    balance: round_robin
    upstreams: [{address: "[2001:db8::a]:443"}, {address: "[2001:db8::b]:443"}, {address: "[2001:db8::c]:443"}]
`)
	firsts := map[netip.AddrPort]int{}
	for range 9 {
		c := candidates(t, routes["rr"].Main)
		if len(c) != 3 {
			t.Fatalf("candidates = %v", c)
		}
		firsts[c[0]]++
	}
	if len(firsts) != 3 || firsts[ap("[2001:db8::a]:443")] != 3 {
		t.Errorf("first choices = %v, want each 3 times", firsts)
	}
}

func TestStateFileUnreadable(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, StateFileName), []byte("{not json"), 0o600)
	tr := newTestRegistry(t)
	routes := tr.apply(t, fmt.Sprintf("acme: {storage: %q}\n", dir)+pushYAML)
	if _, err := routes["home"].Main.Candidates(context.Background()); !errors.Is(err, ErrNoAddress) {
		t.Errorf("Candidates = %v", err)
	}
	if tr.logs.FilterMessage("the saved pushed addresses are unreadable; starting without them").Len() != 1 {
		t.Error("a broken state file is not logged")
	}
}

func TestClosedRegistry(t *testing.T) {
	tr := newTestRegistry(t)
	tr.Close()
	tr.Close()
	cfg, _ := config.Parse("x", []byte("routes: [{name: a, hosts: [a.example], upstream: \"[2001:db8::1]:443\"}]"))
	if _, err := tr.Apply(cfg); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v", err)
	}
}

// TestReloadResolvers: a reload that names other resolvers moves hostname
// upstreams to them; one that fails to build keeps the running sets
// resolving.
func TestReloadResolvers(t *testing.T) {
	one, two := dnstest.Start(t), dnstest.Start(t)
	one.Set("home.example.net", time.Second, ip("2001:db8::1"))
	two.Set("home.example.net", time.Second, ip("2001:db8::2"))
	tr := newTestRegistry(t)
	yaml := `
resolvers: [%q]
dns_ttl: {floor: 100ms}
routes:
  - {name: home, hosts: [home.example], upstream: "home.example.net:443"%s}
`
	routes := tr.apply(t, fmt.Sprintf(yaml, one.Addr(), ""))
	if msg := want(candidates(t, routes["home"].Main), "[2001:db8::1]:443"); msg != "" {
		t.Fatal(msg)
	}
	// A config that fails to build (an identity_ca that cannot be read)
	// changes nothing: the running set keeps following the first resolver.
	cfg, err := config.Parse("x.yaml", []byte(fmt.Sprintf(yaml, two.Addr(), `, identity_ca: /nonexistent/ca.pem`)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Apply(cfg); err == nil {
		t.Fatal("Apply accepted an unreadable identity_ca")
	}
	one.Set("home.example.net", time.Second, ip("2001:db8::3"))
	eventually(t, 3*time.Second, func() string { return want(candidates(t, routes["home"].Main), "[2001:db8::3]:443") })

	routes = tr.apply(t, fmt.Sprintf(yaml, two.Addr(), ""))
	if msg := want(candidates(t, routes["home"].Main), "[2001:db8::2]:443"); msg != "" {
		t.Fatal("after switching resolvers:", msg)
	}
	// The first resolver is no longer asked.
	time.Sleep(200 * time.Millisecond)
	n := one.Queries()
	time.Sleep(time.Second)
	if one.Queries() != n {
		t.Error("the old resolver is still asked")
	}
}
