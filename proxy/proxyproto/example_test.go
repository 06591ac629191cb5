package proxyproto_test

import (
	"bufio"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strings"

	"github.com/relay46/relay46/proxy/proxyproto"
)

// The relay writes a header for the client it relays; the origin reads it
// before the client's own bytes.
func Example() {
	client := netip.MustParseAddrPort("192.0.2.1:56324")
	// A dual-stack socket reports an IPv4 client as IPv4-mapped IPv6; the
	// header still says TCP4.
	relay := netip.MustParseAddrPort("[::ffff:192.0.2.11]:443")
	hdr := proxyproto.AppendV1(nil, client, relay)
	fmt.Printf("%q\n", hdr)

	r := bufio.NewReader(io.MultiReader(strings.NewReader(string(hdr)), strings.NewReader("GET / HTTP/1.1\r\n")))
	h, err := proxyproto.Read(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h)
	line, _ := r.ReadString('\n')
	fmt.Printf("%q\n", line)
	// Output:
	// "PROXY TCP4 192.0.2.1 192.0.2.11 56324 443\r\n"
	// v1 TCP4 192.0.2.1:56324 -> 192.0.2.11:443
	// "GET / HTTP/1.1\r\n"
}

// An origin behind the relay sees the relayed client as the peer.
func ExampleListener() {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	ln := &proxyproto.Listener{Listener: inner, Required: true}
	defer ln.Close()

	// The relay's side: dial the origin, send the header, then the data.
	go func() {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			log.Fatal(err)
		}
		defer c.Close()
		hdr := proxyproto.AppendV2(nil,
			netip.MustParseAddrPort("[2001:db8::7]:50123"), netip.MustParseAddrPort("[2001:db8::1]:443"))
		c.Write(append(hdr, "hello"...))
	}()

	c, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	data, _ := io.ReadAll(c)
	fmt.Println(c.RemoteAddr(), string(data))
	h, _ := c.(*proxyproto.Conn).Header()
	fmt.Println(h)
	// Output:
	// [2001:db8::7]:50123 hello
	// v2 TCP6 [2001:db8::7]:50123 -> [2001:db8::1]:443
}
