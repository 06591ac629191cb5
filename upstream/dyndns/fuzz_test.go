package dyndns_test

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/relay46/relay46/upstream"
	"github.com/relay46/relay46/upstream/dyndns"
)

// fuzzUpdater has two hosts with the account u / secret and records what
// is pushed.
type fuzzUpdater struct {
	pushed []netip.Addr
}

// bcrypt of "secret" at the minimum cost, so the fuzzer runs fast.
const secretHash = "$2a$04$CxYMXcbBZyF/ZWnMnoOGMeP3aa/tyHipHddd0LJNMU34d9FNHsSL2"

func (u *fuzzUpdater) Lookup(h string) (upstream.Account, bool) {
	if strings.EqualFold(h, "a.example") || strings.EqualFold(h, "b.example") {
		return upstream.Account{Route: "r", Username: "u", PasswordHash: secretHash}, true
	}
	return upstream.Account{}, false
}

func (u *fuzzUpdater) Push(_ context.Context, _ string, a netip.Addr, _ string) (upstream.PushResult, error) {
	u.pushed = append(u.pushed, a)
	if len(u.pushed)%2 == 0 {
		return upstream.PushUnchanged, nil
	}
	return upstream.PushChanged, nil
}

func (u *fuzzUpdater) UpdateLimits() (int, time.Duration) { return 1000, time.Second }

// FuzzUpdateRequest sends arbitrary dyndns2 requests (the raw request head
// as a client sends it, and the client's address) to the update handler.
// It must never panic; it answers with a status clients understand and
// one known answer per hostname; it pushes only for the right credentials
// and only an address without a zone, in its canonical (unmapped) form,
// and says which in its answer.
func FuzzUpdateRequest(f *testing.F) {
	auth := "Authorization: Basic dTpzZWNyZXQ=\r\n" // u:secret
	for _, s := range []struct{ head, remote string }{
		{"GET /nic/update?hostname=a.example&myip=2001:db8::1 HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1234"},
		{"GET /nic/update?hostname=a.example,b.example,c.example HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "[2001:db8:7::abcd]:5"},
		{"GET /nic/update?hostname=a.example&myip=192.0.2.7,2001:db8::2&myipv6=2001:db8::3 HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1"},
		{"GET /v3/update?hostname=A.EXAMPLE&myip=::ffff:192.0.2.9 HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1"},
		{"GET /nic/update?hostname=a.example&myip=fe80::1%25eth0 HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1"},
		{"POST /nic/update?hostname=a.example HTTP/1.1\r\nHost: relay\r\nAuthorization: Basic dTp3cm9uZw==\r\n\r\n", "192.0.2.1:1"},
		{"GET /nic/update?hostname= HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1"},
		{"GET /nic/update?hostname=" + strings.Repeat("a.example,", 21) + " HTTP/1.1\r\nHost: relay\r\n" + auth + "\r\n", "192.0.2.1:1"},
		{"DELETE /nic/update HTTP/1.1\r\nHost: relay\r\n\r\n", "garbage"},
	} {
		f.Add([]byte(s.head), s.remote)
	}
	known := []string{"good ", "nochg ", "badauth", "nohost", "notfqdn", "numhost", "badip", "abuse", "911"}
	f.Fuzz(func(t *testing.T, head []byte, remote string) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			return // Go's server would not call the handler either
		}
		req.RemoteAddr = remote
		u := &fuzzUpdater{}
		h := &dyndns.Handler{Updater: u}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)

		switch w.Code {
		case 200, 401, 404, 405, 429:
		default:
			t.Fatalf("status %d", w.Code)
		}
		user, pass, ok := req.BasicAuth()
		if len(u.pushed) > 0 && !(ok && user == "u" && pass == "secret") {
			t.Fatalf("pushed %v for credentials %q %q", u.pushed, user, pass)
		}
		for _, a := range u.pushed {
			if !a.IsValid() || a.Zone() != "" || a.Is4In6() {
				t.Fatalf("pushed %v", a)
			}
		}
		if w.Code == 404 || w.Code == 405 {
			if len(u.pushed) > 0 {
				t.Fatalf("pushed on a %d", w.Code)
			}
			return
		}
		lines := strings.Split(strings.TrimSuffix(w.Body.String(), "\n"), "\n")
		var changed []string
		for _, l := range lines {
			ok := false
			for _, k := range known {
				ok = ok || l == k || strings.HasSuffix(k, " ") && strings.HasPrefix(l, k)
			}
			if !ok {
				t.Fatalf("answer line %q", l)
			}
			if a, found := strings.CutPrefix(l, "good "); found {
				changed = append(changed, a)
			} else if a, found := strings.CutPrefix(l, "nochg "); found {
				changed = append(changed, a)
			}
		}
		if len(changed) != len(u.pushed) {
			t.Fatalf("answers %q for pushes %v", lines, u.pushed)
		}
		for i, a := range u.pushed {
			if changed[i] != a.String() {
				t.Fatalf("answered %q, pushed %v", changed[i], a)
			}
		}
	})
}
