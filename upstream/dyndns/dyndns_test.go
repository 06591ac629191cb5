package dyndns_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/bcrypt"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/upstream"
	"github.com/relay46/relay46/upstream/dyndns"
)

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

type fixture struct {
	reg   *upstream.Registry
	route upstream.Route
	srv   *httptest.Server
	h     *dyndns.Handler
	logs  *observer.ObservedLogs
	mu    sync.Mutex
	now   time.Time
}

func (f *fixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newFixture(t *testing.T, burst int) *fixture {
	t.Helper()
	cfg, err := config.Parse("test.yaml", []byte(fmt.Sprintf(`
acme: {storage: %q}
updates: {listen: "127.0.0.1:0", burst: %d, refill: 1m}
routes:
  - name: home
    hosts: [misskey.example.com, blog.example.com]
    allowed_prefixes: ["2001:db8::/32"]
    upstreams: [{address_from: update}]
    update: {username: misskey, password_hash: %q}
  - name: other
    hosts: [other.example.com]
    upstream: "[2001:db8::99]:443"
`, t.TempDir(), burst, hash(t, "right horse battery staple"))))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	reg := upstream.NewRegistry(upstream.Options{Logger: zap.New(core)})
	t.Cleanup(func() { reg.Close() })
	routes, err := reg.Apply(cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{reg: reg, route: routes["home"], logs: logs, now: time.Now()}
	f.h = &dyndns.Handler{Updater: reg, Logger: zap.New(core), Now: f.clock}
	f.srv = httptest.NewServer(f.h)
	t.Cleanup(f.srv.Close)
	return f
}

// get sends an update as ddclient does and returns status and body.
func (f *fixture) get(t *testing.T, user, pass, query string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.URL+"/nic/update?"+query, nil)
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	req.Header.Set("User-Agent", "ddclient/3.11.2")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func (f *fixture) current(t *testing.T) string {
	t.Helper()
	c, err := f.route.Main.Candidates(context.Background())
	if err != nil {
		return err.Error()
	}
	return fmt.Sprint(c)
}

const pw = "right horse battery staple"

func TestProtocol(t *testing.T) {
	f := newFixture(t, 100)
	tests := []struct {
		name, user, pass, query string
		status                  int
		body                    string
		now                     string // the route's address afterwards
	}{
		{"good", "misskey", pw, "hostname=misskey.example.com&myip=2001:db8:1::2:64", 200, "good 2001:db8:1::2:64", "[[2001:db8:1::2:64]:443]"},
		{"same again", "misskey", pw, "hostname=misskey.example.com&myip=2001:db8:1::2:64", 200, "nochg 2001:db8:1::2:64", "[[2001:db8:1::2:64]:443]"},
		{"any host of the route", "misskey", pw, "system=dyndns&hostname=blog.example.com&myip=2001:db8:2::2:64", 200, "good 2001:db8:2::2:64", "[[2001:db8:2::2:64]:443]"},
		{"wrong password", "misskey", "wrong", "hostname=misskey.example.com&myip=2001:db8:3::1", 401, "badauth", "[[2001:db8:2::2:64]:443]"},
		{"wrong user", "blog", pw, "hostname=misskey.example.com&myip=2001:db8:3::1", 401, "badauth", "[[2001:db8:2::2:64]:443]"},
		{"no credentials", "", "", "hostname=misskey.example.com&myip=2001:db8:3::1", 401, "badauth", "[[2001:db8:2::2:64]:443]"},
		{"unknown hostname", "misskey", pw, "hostname=nothere.example.com&myip=2001:db8:3::1", 200, "nohost", "[[2001:db8:2::2:64]:443]"},
		{"route without updates", "misskey", pw, "hostname=other.example.com&myip=2001:db8:3::1", 200, "nohost", "[[2001:db8:2::2:64]:443]"},
		{"outside allowed_prefixes", "misskey", pw, "hostname=misskey.example.com&myip=2001:db9::1", 200, "badip", "[[2001:db8:2::2:64]:443]"},
		{"IPv4 to an IPv6 route", "misskey", pw, "hostname=misskey.example.com&myip=192.0.2.1", 200, "badip", "[[2001:db8:2::2:64]:443]"},
		{"not an address", "misskey", pw, "hostname=misskey.example.com&myip=home", 200, "badip", "[[2001:db8:2::2:64]:443]"},
		{"no hostname", "misskey", pw, "myip=2001:db8:3::1", 200, "notfqdn", "[[2001:db8:2::2:64]:443]"},
		{"dual stack: the IPv6 address is taken", "misskey", pw, "hostname=misskey.example.com&myip=192.0.2.1,2001:db8:4::1", 200, "good 2001:db8:4::1", "[[2001:db8:4::1]:443]"},
		{"myipv6", "misskey", pw, "hostname=misskey.example.com&myipv6=2001:db8:5::1", 200, "good 2001:db8:5::1", "[[2001:db8:5::1]:443]"},
		{"several hostnames", "misskey", pw, "hostname=misskey.example.com,nothere.example.com&myip=2001:db8:5::1", 200, "nochg 2001:db8:5::1\nnohost", "[[2001:db8:5::1]:443]"},
		// Without myip the source address is used: here 127.0.0.1, which
		// an IPv6 route refuses.
		{"no myip from IPv4", "misskey", pw, "hostname=misskey.example.com", 200, "badip", "[[2001:db8:5::1]:443]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := f.get(t, tt.user, tt.pass, tt.query)
			if status != tt.status || body != tt.body {
				t.Errorf("answer = %d %q, want %d %q", status, body, tt.status, tt.body)
			}
			if got := f.current(t); got != tt.now {
				t.Errorf("route address = %s, want %s", got, tt.now)
			}
		})
	}
	if n := f.logs.FilterMessage("upstream address pushed").Len(); n != 4 {
		t.Errorf("%d changes logged, want 4", n)
	}
	for _, e := range f.logs.FilterMessage("upstream address pushed").All() {
		m := e.ContextMap()
		if m["old"] == nil || m["new"] == nil || m["from"] != "127.0.0.1" {
			t.Errorf("a change is logged without old, new and from: %v", m)
		}
	}
}

func TestRateLimits(t *testing.T) {
	f := newFixture(t, 3)
	// Three updates are the burst (nochg counts: every authenticated
	// request does); the flood after them is refused and changes nothing.
	for i, want := range []string{"good 2001:db8::1", "nochg 2001:db8::1", "good 2001:db8::2"} {
		if _, body := f.get(t, "misskey", pw, "hostname=misskey.example.com&myip="+strings.Fields(want)[1]); body != want {
			t.Fatalf("update %d = %q, want %q", i, body, want)
		}
	}
	for i := range 10 {
		status, body := f.get(t, "misskey", pw, fmt.Sprintf("hostname=misskey.example.com&myip=2001:db8::%x", 100+i))
		if status != http.StatusTooManyRequests || body != "abuse" {
			t.Fatalf("flood update %d = %d %q, want 429 abuse", i, status, body)
		}
	}
	if got := f.current(t); got != "[[2001:db8::2]:443]" {
		t.Fatalf("after the flood the route goes to %s", got)
	}
	// One more per refill (1m).
	f.advance(time.Minute)
	if _, body := f.get(t, "misskey", pw, "hostname=misskey.example.com&myip=2001:db8::3"); body != "good 2001:db8::3" {
		t.Errorf("after a refill: %q", body)
	}
	if _, body := f.get(t, "misskey", pw, "hostname=misskey.example.com&myip=2001:db8::4"); body != "abuse" {
		t.Errorf("second after a refill: %q", body)
	}

	// Failed attempts are limited per client network, before any password
	// is checked, and do not use up the route's updates.
	g := newFixture(t, 3)
	for i := range 3 {
		if status, _ := g.get(t, "misskey", "guess"+fmt.Sprint(i), "hostname=misskey.example.com&myip=2001:db8::9"); status != 401 {
			t.Fatalf("guess %d: %d", i, status)
		}
	}
	status, body := g.get(t, "misskey", pw, "hostname=misskey.example.com&myip=2001:db8::9")
	if status != http.StatusTooManyRequests || body != "abuse" {
		t.Errorf("after 3 failures even the right password = %d %q, want 429 abuse", status, body)
	}
	g.advance(time.Minute)
	if _, body := g.get(t, "misskey", pw, "hostname=misskey.example.com&myip=2001:db8::9"); body != "good 2001:db8::9" {
		t.Errorf("after a refill: %q", body)
	}
}

func TestRetryAfter(t *testing.T) {
	f := newFixture(t, 1)
	f.get(t, "misskey", pw, "hostname=misskey.example.com&myip=2001:db8::1")
	req, _ := http.NewRequest("GET", f.srv.URL+"/nic/update?hostname=misskey.example.com&myip=2001:db8::2", nil)
	req.SetBasicAuth("misskey", pw)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "60" {
		t.Errorf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestPathsAndMethods(t *testing.T) {
	f := newFixture(t, 5)
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/", 404},
		{"GET", "/nic/updates", 404},
		{"DELETE", "/nic/update", 405},
		{"GET", "/v3/update?hostname=misskey.example.com&myip=2001:db8::1", 401},
	} {
		req, _ := http.NewRequest(tc.method, f.srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Errorf("%s %s = %d, want %d", tc.method, tc.path, resp.StatusCode, tc.status)
		}
		if tc.status == 401 && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("401 without a Basic challenge")
		}
	}
}

// fakeUpdater checks the handler's choice of address without a registry.
type fakeUpdater struct {
	got []netip.Addr
}

func (u *fakeUpdater) Lookup(h string) (upstream.Account, bool) {
	return upstream.Account{Route: "r", Username: "u", PasswordHash: "$2a$04$CxYMXcbBZyF/ZWnMnoOGMeP3aa/tyHipHddd0LJNMU34d9FNHsSL2"}, true
}

func (u *fakeUpdater) Push(_ context.Context, _ string, a netip.Addr, _ string) (upstream.PushResult, error) {
	u.got = append(u.got, a)
	return upstream.PushChanged, nil
}

func (u *fakeUpdater) UpdateLimits() (int, time.Duration) { return 100, time.Second }

func TestSourceAddressWhenNoMyip(t *testing.T) {
	u := &fakeUpdater{}
	h := &dyndns.Handler{Updater: u}
	req := httptest.NewRequest("GET", "/nic/update?hostname=h.example", nil)
	req.RemoteAddr = "[2001:db8:7::abcd]:51234"
	req.SetBasicAuth("u", "secret")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if w.Body.String() != "good 2001:db8:7::abcd\n" || len(u.got) != 1 || u.got[0] != netip.MustParseAddr("2001:db8:7::abcd") {
		t.Errorf("answer %q, pushed %v", w.Body.String(), u.got)
	}
}

func TestNewServerLimits(t *testing.T) {
	s := dyndns.NewServer(http.NotFoundHandler(), nil)
	if s.ReadHeaderTimeout == 0 || s.IdleTimeout == 0 || s.MaxHeaderBytes == 0 {
		t.Errorf("server without limits: %+v", s)
	}
}
