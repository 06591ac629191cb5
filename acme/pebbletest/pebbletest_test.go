package pebbletest

import (
	"crypto/tls"
	"net/http"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestStart(t *testing.T) {
	for _, addr := range []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()} {
		t.Run(addr.String(), func(t *testing.T) {
			p := Start(t, Opts{HTTPPort: 8080, TLSPort: 8443, Addr: addr})

			client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.DirectoryRoots}}}
			resp, err := client.Get(p.DirectoryURL)
			if err != nil {
				t.Fatalf("directory: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("directory: %s", resp.Status)
			}
			client.CloseIdleConnections()

			for qtype, want := range map[uint16]bool{dns.TypeA: addr.Is4(), dns.TypeAAAA: addr.Is6()} {
				got := lookup(t, p.DNSAddr, "anything.example.", qtype)
				if want && got != addr {
					t.Errorf("%s answer %v, want %v", dns.TypeToString[qtype], got, addr)
				}
				if !want && got.IsValid() {
					t.Errorf("unexpected %s answer %v", dns.TypeToString[qtype], got)
				}
			}

			p.Stop()
			p.Stop()
			if _, err := client.Get(p.DirectoryURL); err == nil {
				t.Error("directory reachable after Stop")
			}
		})
	}
}

func lookup(t *testing.T, server, name string, qtype uint16) netip.Addr {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	in, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, server)
	if err != nil {
		t.Fatalf("DNS: %v", err)
	}
	for _, rr := range in.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			a, _ := netip.AddrFromSlice(rr.A)
			return a.Unmap()
		case *dns.AAAA:
			a, _ := netip.AddrFromSlice(rr.AAAA)
			return a
		}
	}
	return netip.Addr{}
}
