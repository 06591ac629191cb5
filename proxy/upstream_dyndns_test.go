package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/upstream"
	"github.com/relay46/relay46/upstream/dyndns"
)

const updatePassword = "correct horse battery staple"

// updateEndpoint serves the relay's dyndns2 endpoint on [::1], so that a
// client pushing without myip is seen from ::1.
type updateEndpoint struct {
	url string
}

func startUpdates(t *testing.T, r *relayUnderTest) *updateEndpoint {
	t.Helper()
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := dyndns.NewServer(&dyndns.Handler{Updater: r.srv.Upstreams(), Logger: r.srv.Logger}, nil)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &updateEndpoint{url: "http://" + ln.Addr().String()}
}

// update sends what ddclient sends (protocol=dyndns2) and returns the
// status and the answer.
func (u *updateEndpoint) update(t *testing.T, user, pass, query string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u.url+"/nic/update?system=dyndns&"+query, nil)
	req.SetBasicAuth(user, pass)
	req.Header.Set("User-Agent", "ddclient/3.11.2")
	status, body, err := getText(http.DefaultClient, req)
	if err != nil {
		t.Fatal(err)
	}
	return status, body
}

// TestUpstreamDyndnsClient is a home pushing its address to the relay with
// the dyndns2 protocol: good credentials move new connections; wrong
// credentials, an unknown hostname, an address outside allowed_prefixes
// and a flood are refused with the protocol's answers and change nothing;
// a restarted relay goes to the last pushed address before any update.
func TestUpstreamDyndnsClient(t *testing.T) {
	port := loopbackPair(t)
	cert, roots := testCert(t, "misskey.example.com")
	startHome(t, "old", "tcp6", fmt.Sprintf("[::1]:%d", port), &cert)
	startHome(t, "new", "tcp4", fmt.Sprintf("127.0.0.1:%d", port), &cert)
	storage := t.TempDir()
	yaml := fmt.Sprintf(`
acme: {storage: %q}
updates: {listen: "127.0.0.1:0", burst: 4, refill: 1h}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    allow_ipv4: true
    allowed_prefixes: ["::1/128", "127.0.0.1/32"]
    upstreams: [{address_from: update, port: %d}]
    update: {username: home, password_hash: %q}
`, storage, port, bcryptHash(t, updatePassword))
	r := startRelay(t, yaml)
	upd := startUpdates(t, r)

	// Nothing pushed yet: there is nowhere to relay to.
	if got, err := whoServes(t, r, "misskey.example.com", roots); err == nil {
		t.Fatalf("before any update a connection reached %q", got)
	}
	if m := r.waitOutcome(t, outcomeDialFailed); !strings.Contains(fmt.Sprint(m["error"]), "nothing pushed yet") {
		t.Errorf("dial error = %v", m["error"])
	}

	// The home pushes without myip, over IPv6: its source address (::1).
	if status, body := upd.update(t, "home", updatePassword, "hostname=misskey.example.com"); status != 200 || body != "good ::1" {
		t.Fatalf("first update = %d %q", status, body)
	}
	// "good" means new connections already go there.
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "old" {
		t.Fatalf("after the update a connection reached %q, %v", got, err)
	}
	kept := keepConn(t, r, "misskey.example.com", roots)
	kept.ask(t, "misskey.example.com")

	// The prefix changes; the home pushes the new address.
	if _, body := upd.update(t, "home", updatePassword, "hostname=misskey.example.com&myip=127.0.0.1"); body != "good 127.0.0.1" {
		t.Fatalf("second update = %q", body)
	}
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "new" {
		t.Fatalf("after the change a connection reached %q, %v", got, err)
	}
	if got := kept.ask(t, "misskey.example.com"); got != "old" {
		t.Errorf("the connection opened before the change now reaches %q", got)
	}

	// Each refusal answers as dyndns2 clients expect and changes nothing.
	for _, tc := range []struct {
		name, user, pass, query string
		status                  int
		body                    string
	}{
		{"wrong password", "home", "hunter2", "hostname=misskey.example.com&myip=::1", 401, "badauth"},
		{"wrong user", "misskey", updatePassword, "hostname=misskey.example.com&myip=::1", 401, "badauth"},
		{"unknown hostname", "home", updatePassword, "hostname=blog.example.com&myip=::1", 200, "nohost"},
		{"outside allowed_prefixes", "home", updatePassword, "hostname=misskey.example.com&myip=2001:db8::2:64", 200, "badip"},
		{"same address", "home", updatePassword, "hostname=misskey.example.com&myip=127.0.0.1", 200, "nochg 127.0.0.1"},
	} {
		status, body := upd.update(t, tc.user, tc.pass, tc.query)
		if status != tc.status || body != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.name, status, body, tc.status, tc.body)
		}
		if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "new" {
			t.Fatalf("%s changed where connections go: %q, %v", tc.name, got, err)
		}
	}
	// burst: 4 updates, all used (good, good, badip, nochg): a flood of
	// valid updates is refused, 429 abuse, and the route stays.
	for i := range 5 {
		status, body := upd.update(t, "home", updatePassword, "hostname=misskey.example.com&myip=::1")
		if status != http.StatusTooManyRequests || body != "abuse" {
			t.Fatalf("flood update %d = %d %q, want 429 abuse", i, status, body)
		}
	}
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "new" {
		t.Fatalf("the flood changed where connections go: %q, %v", got, err)
	}
	if n := r.logCount("upstream address pushed"); n != 2 {
		t.Errorf("%d changes logged, want 2", n)
	}
	for _, e := range r.logs.FilterMessage("upstream address pushed").All() {
		if m := e.ContextMap(); m["new"] == nil || m["old"] == nil {
			t.Errorf("a change logged without old and new address: %v", m)
		}
	}

	// Restart: a new relay on the same storage relays to the last pushed
	// address before the home pushes again.
	kept.c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.srv.Shutdown(ctx)
	b, err := os.ReadFile(filepath.Join(storage, upstream.StateFileName))
	if err != nil || !strings.Contains(string(b), `"address": "127.0.0.1"`) {
		t.Fatalf("state file: %s, %v", b, err)
	}
	r2 := startRelay(t, yaml)
	if got, err := whoServes(t, r2, "misskey.example.com", roots); err != nil || got != "new" {
		t.Fatalf("after a restart a connection reached %q, %v", got, err)
	}
	if r2.logCount("restored the last pushed upstream address") != 1 {
		t.Error("the restore was not logged")
	}
}

// TestUpstreamPrefixFromUpdate pushes an address of the home's /64 that
// is not the server's own (a temporary address, or the router's): the
// relay combines its prefix with the fixed interface identifier. Here the
// /64 is ::/64 and the identifier ::1, so the result is reachable on
// loopback.
func TestUpstreamPrefixFromUpdate(t *testing.T) {
	cert, roots := testCert(t, "misskey.example.com")
	home := startHome(t, "home", "tcp6", "[::1]:0", &cert)
	r := startRelay(t, fmt.Sprintf(`
acme: {storage: %q}
updates: {listen: "127.0.0.1:0"}
routes:
  - name: misskey
    hosts: [misskey.example.com]
    allowed_prefixes: ["::/64"]
    upstreams:
      - prefix_from: update
        interface_id: "::1"
        port: %d
    update: {password_hash: %q}
`, t.TempDir(), home.port(), bcryptHash(t, updatePassword)))
	upd := startUpdates(t, r)
	if _, body := upd.update(t, "misskey", updatePassword, "hostname=misskey.example.com&myip=::5:6:7"); body != "good ::5:6:7" {
		t.Fatalf("update = %q", body)
	}
	if got, err := whoServes(t, r, "misskey.example.com", roots); err != nil || got != "home" {
		t.Fatalf("a connection reached %q, %v", got, err)
	}
	var used []any
	for _, e := range r.logs.FilterMessage("upstream addresses changed").All() {
		used = append(used, e.ContextMap()["new"])
	}
	if fmt.Sprint(used) != "[[::1]]" {
		t.Errorf("addresses used: %v, want [::1] (::/64 + ::1)", used)
	}
	// A prefix outside allowed_prefixes is refused.
	if _, body := upd.update(t, "misskey", updatePassword, "hostname=misskey.example.com&myip=2001:db8:1:2::abcd"); body != "badip" {
		t.Errorf("update outside allowed_prefixes = %q", body)
	}
}
