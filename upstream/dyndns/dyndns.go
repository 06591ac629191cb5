// Package dyndns is relay46's update endpoint: homes push their current
// address to it with the dyndns2 protocol, so ddclient, inadyn and routers
// that speak dyndns2 work unchanged and no third-party dynamic DNS is
// needed.
//
//	GET /nic/update?hostname=misskey.example.com&myip=2001:db8:1:2::2:64
//	Authorization: Basic <route's update username and password>
//
// hostname is one of a route's hosts (several, comma-separated, are
// answered one line each); myip may be omitted (the request's source
// address is used), hold several addresses (the IPv6 one is taken), or be
// given as myipv6. Each hostname is answered with one line:
//
//	good <addr>   accepted: new connections go there from now on
//	nochg <addr>  already the route's address
//	badauth       wrong user name or password (HTTP 401 when all are)
//	nohost        no route takes updates for this hostname
//	notfqdn       no hostname given
//	numhost       more than 20 hostnames
//	badip         address refused: unparseable, of a family the route does
//	              not relay to, outside its allowed_prefixes, or failing
//	              its identity check (the relay's log says which)
//	abuse         rate limited (HTTP 429 with Retry-After when all are):
//	              more than updates.burst updates for the route, or as many
//	              failed attempts from the client's network, until refilled
//	911           the relay could not apply the update; try again later
//
// Typical use:
//
//	h := &dyndns.Handler{Updater: registry, Logger: logger}
//	srv := dyndns.NewServer(h, logger)
//	go srv.Serve(ln)
package dyndns

import (
	"context"
	"crypto/subtle"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/bcrypt"

	"github.com/relay46/relay46/upstream"
)

// Updater applies pushed addresses. *upstream.Registry is one.
type Updater interface {
	Lookup(hostname string) (upstream.Account, bool)
	Push(ctx context.Context, route string, addr netip.Addr, from string) (upstream.PushResult, error)
	UpdateLimits() (burst int, refill time.Duration)
}

var _ Updater = (*upstream.Registry)(nil)

// Handler serves the dyndns2 update protocol. Set Updater before use.
type Handler struct {
	Updater Updater
	// Logger receives one line per request. Nil means no logs.
	Logger *zap.Logger
	// Now is the clock of the rate limits. Nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex
	routes  map[string]*bucket       // accepted requests, by route
	sources map[netip.Prefix]*bucket // failed attempts, by client network
}

var _ http.Handler = (*Handler)(nil)

// The paths dyndns2 clients use.
const (
	PathDynDNS2 = "/nic/update"
	PathDynV3   = "/v3/update"
)

const (
	maxHostnames = 20
	// maxSources bounds the memory of failed attempts. When it is full of
	// clients still being limited, new clients are limited too: a
	// password-guessing storm must not get through by sheer numbers.
	maxSources = 10000
	// timeout bounds applying one update, identity check included.
	timeout = 15 * time.Second
)

// The answers of the protocol.
const (
	ansGood    = "good"
	ansNochg   = "nochg"
	ansBadauth = "badauth"
	ansNohost  = "nohost"
	ansNotfqdn = "notfqdn"
	ansNumhost = "numhost"
	ansBadip   = "badip"
	ansAbuse   = "abuse"
	ans911     = "911"
)

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != PathDynDNS2 && r.URL.Path != PathDynV3 {
		http.Error(w, "relay46: the update endpoint is "+PathDynDNS2, http.StatusNotFound)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "relay46: use GET", http.StatusMethodNotAllowed)
		return
	}
	client := clientAddr(r)
	now := h.now()
	burst, refill := h.Updater.UpdateLimits()
	src := network(client.Addr())
	if !h.sourceAllowed(src, now, burst, refill) {
		h.reply(w, r, client, refill, "", ansAbuse)
		return
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		h.failed(src, now, burst, refill)
		w.Header().Set("WWW-Authenticate", `Basic realm="relay46 updates", charset="UTF-8"`)
		h.reply(w, r, client, refill, "", ansBadauth)
		return
	}
	q := r.URL.Query()
	var hosts []string
	for _, s := range strings.Split(q.Get("hostname"), ",") {
		if s = strings.TrimSpace(s); s != "" {
			hosts = append(hosts, s)
		}
	}
	switch {
	case len(hosts) == 0:
		h.reply(w, r, client, refill, "", ansNotfqdn)
		return
	case len(hosts) > maxHostnames:
		h.reply(w, r, client, refill, "", ansNumhost)
		return
	}
	addr, addrOK := pickAddr(q, client.Addr())
	answers := make([]string, len(hosts))
	for i, host := range hosts {
		answers[i] = h.update(r.Context(), host, user, pass, addr, addrOK, client, src, now, burst, refill)
	}
	h.reply(w, r, client, refill, strings.Join(hosts, ","), answers...)
}

// update answers one hostname of a request.
func (h *Handler) update(ctx context.Context, host, user, pass string, addr netip.Addr, addrOK bool,
	client netip.AddrPort, src netip.Prefix, now time.Time, burst int, refill time.Duration) string {
	acct, ok := h.Updater.Lookup(host)
	if !ok {
		h.failed(src, now, burst, refill)
		return ansNohost
	}
	if !checkPassword(acct, user, pass) {
		h.failed(src, now, burst, refill)
		return ansBadauth
	}
	if !h.routeAllowed(acct.Route, now, burst, refill) {
		return ansAbuse
	}
	if !addrOK {
		return ansBadip
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := h.Updater.Push(ctx, acct.Route, addr, client.Addr().String())
	switch {
	case err == nil && res == upstream.PushChanged:
		return ansGood + " " + addr.String()
	case err == nil:
		return ansNochg + " " + addr.String()
	case errors.Is(err, upstream.ErrRefused):
		return ansBadip
	case errors.Is(err, upstream.ErrNoRoute):
		return ansNohost
	}
	h.logger().Error("applying an update failed", zap.String("route", acct.Route), zap.Error(err))
	return ans911
}

// checkPassword compares in time that does not depend on where the user
// name differs; bcrypt does the same for the password.
func checkPassword(a upstream.Account, user, pass string) bool {
	userOK := subtle.ConstantTimeCompare([]byte(user), []byte(a.Username)) == 1
	passOK := bcrypt.CompareHashAndPassword([]byte(a.PasswordHash), []byte(pass)) == nil
	return userOK && passOK
}

// pickAddr takes the address to push: from myip (or myipv6), which may
// list several, the IPv6 one first; without either, the client's own.
func pickAddr(q map[string][]string, client netip.Addr) (netip.Addr, bool) {
	var list []string
	for _, k := range []string{"myip", "myipv6"} {
		for _, v := range q[k] {
			list = append(list, strings.Split(v, ",")...)
		}
	}
	if len(list) == 0 {
		return client, client.IsValid()
	}
	var first netip.Addr
	for _, s := range list {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil || a.Zone() != "" {
			return netip.Addr{}, false
		}
		a = a.Unmap()
		if a.Is6() {
			return a, true
		}
		if !first.IsValid() {
			first = a
		}
	}
	return first, first.IsValid()
}

// reply writes the answers, one per line. The status is 401 or 429 when
// every answer is badauth or abuse, so that clients and proxies that only
// look at the status understand too; otherwise 200, as dyndns2 servers do.
func (h *Handler) reply(w http.ResponseWriter, r *http.Request, client netip.AddrPort, refill time.Duration, hosts string, answers ...string) {
	status := http.StatusOK
	if all(answers, ansBadauth) {
		status = http.StatusUnauthorized
	}
	if all(answers, ansAbuse) {
		status = http.StatusTooManyRequests
		w.Header().Set("Retry-After", strconv.Itoa(int((refill+time.Second-1)/time.Second)))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write([]byte(strings.Join(answers, "\n") + "\n"))
	log := h.logger().Info
	if status != http.StatusOK {
		log = h.logger().Warn
	}
	log("update request", zap.String("client", client.String()), zap.String("hostname", hosts),
		zap.Strings("answers", answers), zap.String("user_agent", r.UserAgent()))
}

func all(answers []string, a string) bool {
	for _, x := range answers {
		if x != a {
			return false
		}
	}
	return len(answers) > 0
}

func (h *Handler) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

func (h *Handler) logger() *zap.Logger {
	if h.Logger == nil {
		return zap.NewNop()
	}
	return h.Logger
}

func clientAddr(r *http.Request) netip.AddrPort {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// network is what failed attempts are counted by: an IPv4 address, or
// the /64 of an IPv6 one (a home has a whole /64 to try from).
func network(a netip.Addr) netip.Prefix {
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// NewServer returns an http.Server for h with limits that keep slow or
// hostile clients from holding connections open.
func NewServer(h http.Handler, logger *zap.Logger) *http.Server {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      timeout + 5*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    8 << 10,
		ErrorLog:          zap.NewStdLog(logger),
		BaseContext:       func(net.Listener) context.Context { return context.Background() },
	}
}
