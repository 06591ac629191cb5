package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The addresses of the topology: only documentation ranges, and only
// inside the namespaces the test creates.
const (
	clientIP = "192.0.2.10" // the IPv4-only visitor, also where Pebble runs
	relayV4  = "192.0.2.1"  // the relay's public IPv4 address
	relayV6  = "2001:db8:ffff::1"
	homeOld  = "2001:db8:1::2:64" // the home server before the ISP renumbers it…
	homeNew  = "2001:db8:2::2:64" // …and after: same interface identifier ::2:64
	// strangerIP is someone else's server, in a prefix a home could have
	// had before, with a certificate for the same name from another CA.
	strangerIP = "2001:db8:3::2:64"

	homeName = "home.example.test" // the relay's upstream: AAAA from the test's DNS
	passHost = "misskey.example.test"
	termHost = "blog.example.test"
)

// topology is the running test network: three namespaces, the programs
// in them and the clients that reach them from the client namespace.
type topology struct {
	dir                  string
	client, relay, home  *netns
	stranger             *netns
	relayDNS, pebbleDNS  *dnsZone
	homeCA               *testCA
	homeCAFile           string
	pebbleRootFile       string
	relay46, nginx       *proc
	pebble               *proc
	relayPID             int
	nginxAccessLog       string
	curl                 string
	passClient           *http.Client // trusts the home's own CA (passthrough)
	termClient, termH2   *http.Client // trust Pebble's root (terminated)
	oldPassWS, oldTermWS *wsStream    // opened before the prefix change
	termBefore           string       // the app's answer before the change
	updatePassword       string       // misskey's dyndns2 password
}

// relayPort is the relay's source port in an answer of the home's app
// ("relay=[2001:db8:ffff::1]:PORT"): which upstream connection carried it.
func relayPort(answer string) string {
	_, after, ok := strings.Cut(answer, "relay=["+relayV6+"]:")
	if !ok {
		return ""
	}
	return strings.TrimSpace(after)
}

// TestTopology runs relay46 in the topology it exists for and prints what
// each step proves:
//
//	client ns (IPv4 only)      relay ns (dual-stack)             home ns (IPv6 only)
//	192.0.2.10 ──veth── 192.0.2.1 | 2001:db8:ffff::1 ──veth── 2001:db8:1::2:64 → 2001:db8:2::2:64
//	curl, Go clients,          relay46 run: :443, :80,           nginx (own cert, PROXY v2),
//	Pebble (the CA)            dyndns2 on [2001:db8:ffff::1]:8245, Go app :8080, WebSocket echo,
//	                           DNS for home.example.test         curl pushing its address
//	                                      | 2001:db8:fffe::1 ──veth── stranger ns: 2001:db8:3::2:64,
//	                                                                  someone else's server
//
// misskey.example.test passes through to the address the home pushes
// (its /64 plus ::2:64, checked by the home's certificate); the terminated
// blog.example.test goes to home.example.test by DNS.
func TestTopology(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: the topology test creates network namespaces and needs root")
	}
	tp := &topology{dir: t.TempDir()}
	needTool(t, "ip", "iproute2")
	nginxBin := needTool(t, "nginx", "nginx-light")
	tp.curl = needTool(t, "curl", "curl")
	if err := canCreateNetns(); err != nil {
		t.Skipf("skipping: cannot create network namespaces here: %v", err)
	}
	cleanStaleNetns(t)
	bins := buildBinaries(t, filepath.Join(tp.dir, "bin"), "./cmd/relay46", "github.com/letsencrypt/pebble/v2/cmd/pebble")

	tp.network(t)
	tp.startHome(t, nginxBin)
	tp.startPebble(t, bins["github.com/letsencrypt/pebble/v2/cmd/pebble"])
	tp.startRelay(t, bins["./cmd/relay46"])

	for _, step := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"no_direct_path", tp.noDirectPath},
		{"home_pushes_its_address", tp.homePushes},
		{"acme_over_ipv4", tp.acmeOverIPv4},
		{"passthrough", tp.passthrough},
		{"terminated", tp.terminated},
		{"websocket", tp.websockets},
		{"prefix_change", tp.prefixChange},
		{"clean_exit", tp.cleanExit},
	} {
		if !t.Run(step.name, step.fn) {
			t.FailNow()
		}
	}
}

// proved prints one thing the test has just shown.
func proved(t *testing.T, format string, args ...any) {
	t.Helper()
	t.Logf("PROVED: "+format, args...)
}

// curlFrom runs curl in the client namespace, as a user would type it,
// and returns its output.
func (tp *topology) curlFrom(t *testing.T, args ...string) string {
	t.Helper()
	args = append([]string{"--silent", "--show-error", "--max-time", "10"}, args...)
	out, err := tp.client.command(context.Background(), tp.curl, args...).CombinedOutput()
	t.Logf("client$ curl %s\n%s", strings.Join(args[4:], " "), indent(string(out)))
	if err != nil {
		t.Fatalf("curl: %v", err)
	}
	return string(out)
}

func mustContain(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Fatalf("%s: %q does not contain %q", what, got, w)
		}
	}
}

// noDirectPath shows the problem relay46 solves: the client cannot reach
// the home at all, and the home cannot reach the IPv4 internet.
func (tp *topology) noDirectPath(t *testing.T) {
	err := dialOnce(tp.client, "tcp", net.JoinHostPort(homeOld, "443"))
	if err == nil {
		t.Fatal("the IPv4-only client reached the home directly; the topology is wrong")
	}
	proved(t, "the IPv4-only client cannot reach the home directly: dial [%s]:443: %v", homeOld, errors.Unwrap(err))
	err = dialOnce(tp.home, "tcp", net.JoinHostPort(clientIP, "14000"))
	if err == nil {
		t.Fatal("the IPv6-only home reached the client over IPv4; the topology is wrong")
	}
	proved(t, "the home has no IPv4: dial %s:14000 from it: %v", clientIP, errors.Unwrap(err))
}

// homePushes: the home announces its address to the relay's update
// endpoint, as its ddclient would at boot; the relay checks that the
// address really is the home (TLS with the home's certificate) and routes
// misskey there.
func (tp *topology) homePushes(t *testing.T) {
	if got := tp.push(t, tp.updatePassword, ""); got != "good "+homeOld {
		t.Fatalf("update answered %q, want %q", got, "good "+homeOld)
	}
	proved(t, "the home pushed its address without naming it (dyndns2, no myip): relay46 took the /64 the update came from plus ::2:64, checked nginx's certificate there, and answered \"good %s\"", homeOld)
	for _, l := range grepLines(tp.relay46.log, `"upstream address pushed"`) {
		t.Logf("relay46: %s", l)
	}
}

// acmeOverIPv4 waits until the terminated host serves a certificate
// Pebble issued after validating it over IPv4.
func (tp *topology) acmeOverIPv4(t *testing.T) {
	start := time.Now()
	var resp *http.Response
	err := waitFor(90*time.Second, func() (err error) {
		resp, err = tp.termClient.Get("https://" + termHost + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("no certificate for %s from Pebble after 90s: %v\n%s", termHost, err, tail(tp.pebble.log, 30))
	}
	leaf := resp.TLS.PeerCertificates[0]
	proved(t, "Pebble issued %s a certificate (issuer %q, serial %x) %s after relay46 started; a client trusting only Pebble's root accepts it",
		termHost, leaf.Issuer.CommonName, leaf.SerialNumber, time.Since(start).Round(100*time.Millisecond))
	var validations []string
	for _, l := range grepLines(tp.pebble.log, "") {
		if (strings.Contains(l, "Attempting to validate") || strings.Contains(l, "VALID by completed challenge")) && !slices.Contains(validations, l) {
			validations = append(validations, l)
		}
	}
	if len(validations) == 0 {
		t.Fatalf("Pebble's log shows no validation:\n%s", tail(tp.pebble.log, 30))
	}
	var relayLines []string
	for _, l := range grepLines(tp.relay46.log, "") {
		if strings.Contains(l, `"trying to solve challenge"`) || strings.Contains(l, "acme-challenge") ||
			(strings.Contains(l, "challenge") && strings.Contains(l, clientIP)) {
			relayLines = append(relayLines, l)
		}
	}
	proved(t, "Pebble, from the IPv4-only client namespace with only an A record (%s → %s), validated through relay46's own listeners:\n%s\n  relay46's log:\n%s",
		termHost, relayV4, indent(strings.Join(validations, "\n")), indent(strings.Join(relayLines, "\n")))
}

// passthrough: an IPv4 client gets nginx's own certificate and answer
// from the IPv6-only home, and nginx learns the client from PROXY v2.
func (tp *topology) passthrough(t *testing.T) {
	body := tp.curlFrom(t, "--cacert", tp.homeCAFile, "--resolve", passHost+":443:"+relayV4, "https://"+passHost+"/")
	mustContain(t, "nginx over :443", body, "proxy_protocol_addr="+clientIP+" ", "remote_addr="+clientIP+" ", "server_addr="+homeOld+" ", "scheme=https")
	proved(t, "IPv4-only client → relay46 :443 (SNI passthrough) → nginx on the IPv6-only home, TLS ended by nginx with its own certificate (curl trusted only the home's CA)")
	proved(t, "nginx learned the client %s from PROXY protocol v2 and answered over %s", clientIP, homeOld)

	body = tp.curlFrom(t, "--resolve", passHost+":80:"+relayV4, "http://"+passHost+"/.well-known/acme-challenge/e2e")
	mustContain(t, "nginx over :80", body, "proxy_protocol_addr="+clientIP+" ", "scheme=http ")
	proved(t, ":80 is relayed by Host to the home's nginx with PROXY v2 too (the home's own HTTP-01 keeps working)")

	lines := grepLines(tp.nginxAccessLog, "proxy_protocol_addr="+clientIP+":", "server_addr="+homeOld)
	if len(lines) < 2 {
		t.Fatalf("nginx's access log lacks the client %s:\n%s", clientIP, tail(tp.nginxAccessLog, 10))
	}
	proved(t, "nginx's access log records the client's IPv4 address from PROXY v2:\n%s", indent(strings.Join(lines, "\n")))

}

// terminated: relay46 ends TLS with the ACME certificate and proxies
// HTTP/1.1 and HTTP/2 to the home's app over IPv6.
func (tp *topology) terminated(t *testing.T) {
	body := tp.curlFrom(t, "--cacert", tp.pebbleRootFile, "--resolve", termHost+":443:"+relayV4, "https://"+termHost+"/")
	mustContain(t, "app", body, "origin=["+homeOld+"]:8080", "from="+clientIP+" ", "xfp=https", "host="+termHost, "relay=["+relayV6+"]:")
	tp.termBefore = body
	proved(t, "IPv4-only client → relay46 :443 (TLS terminated with Pebble's certificate) → app on the IPv6-only home over %s; X-Forwarded-For %s, X-Forwarded-Proto https, Host kept", homeOld, clientIP)

	out := tp.curlFrom(t, "--http2", "--cacert", tp.pebbleRootFile, "--resolve", termHost+":443:"+relayV4,
		"--write-out", "curl: HTTP/%{http_version}\n", "https://"+termHost+"/")
	mustContain(t, "h2", out, "curl: HTTP/2")
	proved(t, "HTTP/2 is negotiated by ALPN on the terminated host")

	out = tp.curlFrom(t, "--include", "--resolve", termHost+":80:"+relayV4, "http://"+termHost+"/x?y=1")
	mustContain(t, ":80 redirect", out, "308", "Location: https://"+termHost+"/x?y=1")
	proved(t, ":80 of the terminated host redirects to https (and answers HTTP-01, as acme_over_ipv4 showed)")

	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"HTTP/1.1", tp.termClient}, {"HTTP/2", tp.termH2}} {
		res, err := checkedEcho(context.Background(), c.client, "https://"+termHost+"/echo", 3<<20+17, false)
		if err != nil {
			t.Fatalf("%s echo: %v", c.name, err)
		}
		proved(t, "%s: %d bytes up and %d back through the terminated route, sha256 equal on both sides (%s)", res.proto, res.sent, res.received, res.note)
	}
}

// websockets opens one WebSocket per mode, checks 50 echoes on each, and
// keeps them open for the prefix change.
func (tp *topology) websockets(t *testing.T) {
	ctx := context.Background()
	var err error
	tp.oldPassWS, err = dialWS(ctx, tp.passClient, "wss://"+passHost+"/streaming")
	if err != nil {
		t.Fatalf("passthrough WebSocket: %v", err)
	}
	mustContain(t, "greeting", tp.oldPassWS.greeting, "origin="+homeOld, "from="+clientIP)
	tp.oldTermWS, err = dialWS(ctx, tp.termClient, "wss://"+termHost+"/ws")
	if err != nil {
		t.Fatalf("terminated WebSocket: %v", err)
	}
	mustContain(t, "greeting", tp.oldTermWS.greeting, "origin=["+homeOld+"]:8080", "from="+clientIP)
	for _, s := range []struct {
		name string
		ws   *wsStream
	}{{"passthrough wss → nginx → echo", tp.oldPassWS}, {"terminated wss → relay46 TLS → app", tp.oldTermWS}} {
		for i := range 50 {
			if err := s.ws.exchange(ctx, 1+i*1300); err != nil {
				t.Fatalf("%s: message %d: %v", s.name, i, err)
			}
		}
		if err := s.ws.verify(); err != nil {
			t.Fatal(err)
		}
		proved(t, "WebSocket %s: origin says %q; %d messages, %d bytes echoed intact (sha256 %s…)", s.name, s.ws.greeting, s.ws.messages, s.ws.received, s.ws.sha())
	}
}

// prefixChange renumbers the home while relay46 runs and shows new
// connections follow the DNS answer, open ones keep their address, and
// the relay is the same process throughout.
func (tp *topology) prefixChange(t *testing.T) {
	ctx := context.Background()
	// The ISP hands out a new prefix: the home takes 2001:db8:2::2:64 (same
	// interface identifier) and the relay's route to it appears. The old
	// address lingers deprecated, as during a real renumbering, then goes.
	// The home tells the relay in both ways: its ddclient pushes (misskey)
	// and its DNS name points at the new address (blog).
	tp.home.ip(t, "-6", "addr", "add", homeNew+"/64", "dev", "h0", "nodad")
	tp.home.ip(t, "-6", "addr", "change", homeOld+"/64", "dev", "h0", "preferred_lft", "0")
	tp.relay.ip(t, "-6", "route", "add", "2001:db8:2::/64", "dev", "rh0")
	changed := time.Now()
	tp.relayDNS.set(homeName, netip.MustParseAddr(homeNew))
	t.Logf("renumbered: home has %s (the old address deprecated); DNS %s AAAA now %s (TTL 1s); relay46 pid %d left alone (no reload, no restart)", homeNew, homeName, homeNew, tp.relayPID)
	if got := tp.push(t, tp.updatePassword, ""); got != "good "+homeNew {
		t.Fatalf("update answered %q, want %q", got, "good "+homeNew)
	}
	proved(t, "the home's push from its new address moved misskey: relay46 answered \"good %s\" after checking nginx's certificate there", homeNew)

	var body string
	if err := waitFor(30*time.Second, func() error {
		resp, err := tp.passClient.Get("https://" + passHost + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		if !strings.Contains(body, "server_addr="+homeNew+" ") {
			return fmt.Errorf("still reaching the old address: %q", body)
		}
		return err
	}); err != nil {
		t.Fatalf("passthrough: new connections do not follow the new prefix after 30s: %v", err)
	}
	proved(t, "passthrough (pushed): new connections reach %s %s after the renumbering: %s", homeNew, time.Since(changed).Round(100*time.Millisecond), strings.TrimSpace(body))
	var seen []string
	for _, l := range grepLines(tp.relay46.log, `"logger":"upstream"`, homeNew) {
		seen = append(seen, l)
	}
	t.Logf("relay46 noticed:\n%s", indent(strings.Join(seen, "\n")))
	if err := waitFor(30*time.Second, func() error {
		resp, err := tp.termClient.Get("https://" + termHost + "/")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		body = string(b)
		if !strings.Contains(body, "origin=["+homeNew+"]:8080") {
			return fmt.Errorf("still reaching the old address: %q", body)
		}
		return err
	}); err != nil {
		msg := "terminated: new client connections do not reach the new address after 30s"
		if before := relayPort(tp.termBefore); before != "" && before == relayPort(body) {
			msg += fmt.Sprintf(" (relay46 keeps sending them over its pooled keep-alive connection from [%s]:%s to the old address)", relayV6, before)
		}
		t.Fatalf("%s: %v", msg, err)
	}
	proved(t, "terminated (DNS name): new connections reach [%s]:8080 %s after the renumbering (answer TTL 1s, relay46's dns_ttl floor 5s): %s", homeNew, time.Since(changed).Round(100*time.Millisecond), strings.TrimSpace(body))

	for _, s := range []struct {
		name string
		ws   *wsStream
	}{{"passthrough", tp.oldPassWS}, {"terminated", tp.oldTermWS}} {
		for i := range 20 {
			if err := s.ws.exchange(ctx, 4096+i); err != nil {
				t.Fatalf("%s WebSocket opened before the change: %v", s.name, err)
			}
		}
		if err := s.ws.verify(); err != nil {
			t.Fatal(err)
		}
		if err := s.ws.close(); err != nil {
			t.Fatalf("%s WebSocket close: %v", s.name, err)
		}
		proved(t, "the %s WebSocket opened before the change is still the old connection (%q) and still echoes: %d messages, %d bytes intact in total; closed cleanly",
			s.name, s.ws.greeting, s.ws.messages, s.ws.received)
	}

	// The old prefix is gone for good.
	tp.home.ip(t, "-6", "addr", "del", homeOld+"/64", "dev", "h0")
	tp.relay.ip(t, "-6", "route", "del", "2001:db8:1::/64", "dev", "rh0")
	t.Logf("old address %s removed from the home, and the relay's route to 2001:db8:1::/64", homeOld)

	body = tp.curlFrom(t, "--cacert", tp.homeCAFile, "--resolve", passHost+":443:"+relayV4, "https://"+passHost+"/")
	mustContain(t, "passthrough after removal", body, "proxy_protocol_addr="+clientIP+" ", "server_addr="+homeNew+" ")
	body = tp.curlFrom(t, "--cacert", tp.pebbleRootFile, "--resolve", termHost+":443:"+relayV4, "https://"+termHost+"/")
	mustContain(t, "terminated after removal", body, "origin=["+homeNew+"]:8080", "from="+clientIP+" ")
	for _, c := range []struct {
		name, url, want string
		client          *http.Client
	}{
		{"passthrough", "wss://" + passHost + "/streaming", "origin=" + homeNew, tp.passClient},
		{"terminated", "wss://" + termHost + "/ws", "origin=[" + homeNew + "]:8080", tp.termClient},
	} {
		ws, err := dialWS(ctx, c.client, c.url)
		if err != nil {
			t.Fatalf("%s WebSocket after the change: %v", c.name, err)
		}
		mustContain(t, "greeting", ws.greeting, c.want, "from="+clientIP)
		for i := range 20 {
			if err := ws.exchange(ctx, 10000+i); err != nil {
				t.Fatalf("%s WebSocket after the change: %v", c.name, err)
			}
		}
		if err := ws.verify(); err != nil {
			t.Fatal(err)
		}
		ws.close()
		proved(t, "a new %s WebSocket after the change: %q, %d bytes echoed intact", c.name, ws.greeting, ws.received)
	}
	// What must never move the home: a wrong password, or an address
	// where the home's certificate is not (a stale or foreign prefix).
	if got := tp.push(t, "not-the-password", "&myip=2001:db8:2::99"); got != "badauth" {
		t.Fatalf("a push with a wrong password was answered %q, want badauth", got)
	}
	if got := tp.push(t, tp.updatePassword, "&myip=2001:db8:3::1"); got != "badip" {
		t.Fatalf("a push of an address without the home's certificate was answered %q, want badip", got)
	}
	why := grepLines(tp.relay46.log, `"origin identity check failed`, strangerIP)
	if len(why) == 0 || !strings.Contains(why[0], "x509") {
		t.Fatalf("relay46 did not log a failed certificate check of [%s]:443: %q", strangerIP, why)
	}
	t.Logf("relay46: %s", why[0])
	body = tp.curlFrom(t, "--cacert", tp.homeCAFile, "--resolve", passHost+":443:"+relayV4, "https://"+passHost+"/")
	mustContain(t, "passthrough after refused pushes", body, "server_addr="+homeNew+" ")
	proved(t, "a push with a wrong password (badauth), and one of 2001:db8:3::/64 where another subscriber's server answers for %s with a certificate the home's CA did not sign (badip), changed nothing", passHost)
	if n := len(grepLines(tp.nginxAccessLog, "proxy_protocol_addr="+clientIP+":", "server_addr="+homeNew)); n == 0 {
		t.Fatalf("nginx logged no request from %s on %s", clientIP, homeNew)
	}
	var last string
	for _, l := range grepLines(tp.relay46.log, `"msg":"connection"`, `"route":"misskey"`, homeNew) {
		last = l
	}
	if last == "" {
		t.Fatalf("relay46 logged no connection to %s", homeNew)
	}
	proved(t, "relay46's own connection log names the new upstream:\n%s", indent(last))

	if !tp.relay46.alive() || tp.relay46.pid() != tp.relayPID {
		t.Fatal("relay46 is not the process that started")
	}
	starts := len(grepLines(tp.relay46.log, `"msg":"relay46 started"`))
	reloads := len(grepLines(tp.relay46.log, `"msg":"config reloaded"`))
	if starts != 1 || reloads != 0 {
		t.Fatalf("relay46 started %d times and reloaded %d times; want 1 and 0", starts, reloads)
	}
	proved(t, "relay46 followed the prefix change as the same process (pid %d, started once, never reloaded): misskey by the home's dyndns2 push, blog by re-resolving %s", tp.relayPID, homeName)
}

// cleanExit stops relay46 with SIGTERM: it exits 0.
func (tp *topology) cleanExit(t *testing.T) {
	if err := tp.relay46.stop(40 * time.Second); err != nil {
		t.Fatalf("relay46 exit: %v\n%s", err, tail(tp.relay46.log, 20))
	}
	proved(t, "relay46 stopped on SIGTERM with exit status 0")
}
