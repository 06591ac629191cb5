package proxy

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/upstream/dnstest"
)

// TestUpstreamIdentityRefusesOtherName is the stale-prefix case: the
// home's name now points at an address where another subscriber's server
// answers, with a valid certificate from the same CA but for another
// name. The relay refuses the new address and keeps relaying to the old
// one; once the new address proves to be the origin, it is used.
func TestUpstreamIdentityRefusesOtherName(t *testing.T) {
	port := loopbackPair(t)
	ca := newTestCA(t)
	ours := ca.issue(t, "misskey.example.com")
	startHome(t, "ours", "tcp6", fmt.Sprintf("[::1]:%d", port), &ours)
	theirs := ca.issue(t, "blog.someone-else.example")
	stranger := startHome(t, "stranger", "tcp4", fmt.Sprintf("127.0.0.1:%d", port), &theirs)
	dns := dnstest.Start(t)
	dns.Set("home.example.net", time.Second, netip.MustParseAddr("::1"))
	r := startRelay(t, fmt.Sprintf(`
resolvers: [%q]
dns_ttl: {floor: 100ms}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    upstream: "home.example.net:%d"
    allow_ipv4: true
    allowed_prefixes: ["::1/128", "127.0.0.1/32"]
    identity_check: true
    identity_ca: %q
`, dns.Addr(), port, writeTemp(t, "ca.pem", ca.pem)))
	// Clients trust the CA too (passthrough: they see the origin's
	// certificate), so a wrong origin would not even fail for them.
	clientRoots := ca.pool
	waitServes(t, r, "misskey.example.com", clientRoots, "ours", 3*time.Second)

	dns.Set("home.example.net", time.Second, netip.MustParseAddr("127.0.0.1"))
	steadyServes(t, r, "misskey.example.com", clientRoots, "ours", 2500*time.Millisecond)
	if stranger.served.Load() != 0 {
		t.Errorf("the other subscriber's server got %d requests", stranger.served.Load())
	}
	var found bool
	for _, e := range r.logs.FilterMessage("origin identity check failed; address not used").All() {
		m := e.ContextMap()
		if strings.HasPrefix(fmt.Sprint(m["address"]), "127.0.0.1:") && strings.Contains(fmt.Sprint(m["error"]), "not valid for misskey.example.com") {
			found = true
		}
	}
	if !found {
		t.Error("the refused address was not logged with the reason")
	}

	// The home really moved: the server at the new address now has our
	// certificate. At the next answer (TTL 1s) the relay checks again and
	// switches.
	stranger.cert.Store(&ours)
	waitServes(t, r, "misskey.example.com", clientRoots, "stranger", 3*time.Second)
}

// TestUpstreamIdentityPinnedKey checks pushed addresses against a pinned
// key (pin_sha256), which works with self-signed certificates: an update
// to an address whose server has another key is answered badip, and
// traffic stays where it was.
func TestUpstreamIdentityPinnedKey(t *testing.T) {
	port := loopbackPair(t)
	ours, roots := testCert(t, "misskey.example.com")
	startHome(t, "ours", "tcp6", fmt.Sprintf("[::1]:%d", port), &ours)
	other, _ := testCert(t, "misskey.example.com") // same name, another key
	startHome(t, "impostor", "tcp4", fmt.Sprintf("127.0.0.1:%d", port), &other)
	r := startRelay(t, fmt.Sprintf(`
acme: {storage: %q}
updates: {listen: "127.0.0.1:0"}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    allow_ipv4: true
    allowed_prefixes: ["::1/128", "127.0.0.1/32"]
    upstreams: [{address_from: update, port: %d}]
    pin_sha256: [%q]
    update: {password_hash: %q}
`, t.TempDir(), port, pinOf(ours), bcryptHash(t, updatePassword)))
	upd := startUpdates(t, r)
	if _, body := upd.update(t, "misskey", updatePassword, "hostname=misskey.example.com&myip=::1"); body != "good ::1" {
		t.Fatalf("update to our server = %q", body)
	}
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "ours" {
		t.Fatalf("reached %q, %v", got, err)
	}
	if _, body := upd.update(t, "misskey", updatePassword, "hostname=misskey.example.com&myip=127.0.0.1"); body != "badip" {
		t.Fatalf("update to the impostor = %q, want badip", body)
	}
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "ours" {
		t.Fatalf("after the refused update: reached %q, %v", got, err)
	}
	if r.logCount("origin identity check failed; address not used") != 1 {
		t.Error("the failed check was not logged once")
	}
}

// TestUpstreamIdentityRechecked: the address stays the same but the
// machine behind it changes (the old prefix went to another subscriber
// while the home was away). With health checks on, the identity is
// checked again on every probe, and an address that fails is withdrawn at
// once, even though it was the route's only one: no connection is relayed
// to the stranger.
func TestUpstreamIdentityRechecked(t *testing.T) {
	ca := newTestCA(t)
	ours := ca.issue(t, "misskey.example.com")
	home := startHome(t, "home", "tcp6", "[::1]:0", &ours)
	r := startRelay(t, fmt.Sprintf(`
routes:
  - name: misskey
    hosts: [misskey.example.com]
    upstream: %q
    identity_check: true
    identity_ca: %q
    health_check: {interval: 100ms, timeout: 100ms}
`, home.addr, writeTemp(t, "ca.pem", ca.pem)))
	waitServes(t, r, "misskey.example.com", ca.pool, "home", 3*time.Second)
	steadyServes(t, r, "misskey.example.com", ca.pool, "home", 300*time.Millisecond)

	theirs := ca.issue(t, "shop.someone-else.example")
	home.cert.Store(&theirs)
	before := home.served.Load()
	deadline := time.Now().Add(2 * time.Second)
	for r.logCount("upstream address no longer passes the identity check; removed") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the changed identity was not noticed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Clients trusting the same CA would not notice; the relay refuses.
	for range 3 {
		if got, err := whoServes(t, r, "misskey.example.com", ca.pool); err == nil {
			t.Fatalf("a connection reached %q after the identity changed", got)
		}
	}
	if n := home.served.Load() - before; n != 0 {
		t.Errorf("%d requests reached the stranger", n)
	}

	// The home is back at that address: the next probe finds it again.
	home.cert.Store(&ours)
	waitServes(t, r, "misskey.example.com", ca.pool, "home", 2*time.Second)
}
