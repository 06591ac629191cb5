// Package dnstest runs a real DNS server on loopback for tests: it answers
// A and AAAA questions from records the test sets and changes while the
// code under test runs, and can be made to fail like a broken resolver.
//
// Typical use:
//
//	srv := dnstest.Start(t)
//	srv.Set("home.example.net", time.Second, netip.MustParseAddr("::1"))
//	cfg := fmt.Sprintf("resolvers: [%q]\n", srv.Addr())
//	...
//	srv.Set("home.example.net", time.Second, netip.MustParseAddr("127.0.0.1"))
//	srv.Fail(dnstest.Drop) // no answers at all, as when the resolver is down
package dnstest

import (
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Failure is how the server misbehaves.
type Failure int

// The ways it can fail.
const (
	Answer   Failure = iota // answer normally
	Drop                    // read questions and never answer
	ServFail                // answer SERVFAIL
)

// Server is a DNS server on 127.0.0.1, over UDP and TCP on one port.
type Server struct {
	udp, tcp *dns.Server
	addr     string

	mu      sync.Mutex
	records map[string]record // by lower-case FQDN
	failure Failure
	queries atomic.Int64
}

type record struct {
	ttl   time.Duration
	addrs []netip.Addr
}

// Start starts a server and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{records: map[string]record{}}
	var pc net.PacketConn
	var ln net.Listener
	for range 20 {
		var err error
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		pc = nil
	}
	if pc == nil {
		t.Fatal("dnstest: no port free for both UDP and TCP")
	}
	s.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)
	started := make(chan struct{}, 2)
	notify := func() { started <- struct{}{} }
	s.udp = &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: notify}
	s.tcp = &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: notify}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-started
	<-started
	t.Cleanup(func() {
		s.udp.Shutdown()
		s.tcp.Shutdown()
	})
	return s
}

// Addr is the server's ip:port, for a resolvers: list.
func (s *Server) Addr() string { return s.addr }

// Queries is how many questions the server has received.
func (s *Server) Queries() int64 { return s.queries.Load() }

// Set replaces the records of name: its AAAA records are the IPv6
// addresses of addrs and its A records the IPv4 ones, all with ttl. No
// addrs leaves the name existing with no records (NODATA).
func (s *Server) Set(name string, ttl time.Duration, addrs ...netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records[strings.ToLower(dns.Fqdn(name))] = record{ttl: ttl, addrs: addrs}
}

// Delete removes name: questions for it get NXDOMAIN.
func (s *Server) Delete(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, strings.ToLower(dns.Fqdn(name)))
}

// Fail makes the server misbehave from now on; Fail(Answer) repairs it.
func (s *Server) Fail(f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failure = f
}

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	s.mu.Lock()
	failure := s.failure
	var rec record
	var found bool
	if len(req.Question) == 1 {
		rec, found = s.records[strings.ToLower(req.Question[0].Name)]
	}
	s.mu.Unlock()
	if failure == Drop {
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	switch {
	case failure == ServFail || len(req.Question) != 1:
		m.Rcode = dns.RcodeServerFailure
	case !found:
		m.Rcode = dns.RcodeNameError
	default:
		q := req.Question[0]
		hdr := dns.RR_Header{Name: q.Name, Class: dns.ClassINET, Ttl: uint32(rec.ttl / time.Second)}
		for _, a := range rec.addrs {
			switch {
			case q.Qtype == dns.TypeAAAA && a.Is6() && !a.Is4In6():
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			case q.Qtype == dns.TypeA && a.Unmap().Is4():
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: a.Unmap().AsSlice()})
			}
		}
	}
	w.WriteMsg(m)
}
