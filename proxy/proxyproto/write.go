package proxyproto

import (
	"encoding/binary"
	"net/netip"
	"strconv"
)

// sigV2 starts every v2 header. It was chosen to be rejected by most other
// protocols' parsers, and contains a NUL so it is no C string.
const sigV2 = "\r\n\r\n\x00\r\nQUIT\n"

// v2 header bytes 13 and 14: version and command, family and transport.
const (
	v2Local = 0x20 // version 2, LOCAL
	v2Proxy = 0x21 // version 2, PROXY

	v2Unspec = 0x00 // AF_UNSPEC, UNSPEC
	v2TCP4   = 0x11 // AF_INET, STREAM
	v2TCP6   = 0x21 // AF_INET6, STREAM
)

// v2 address block lengths for TCP4 and TCP6: two addresses, two ports.
const (
	v2LenTCP4 = 2*4 + 2*2
	v2LenTCP6 = 2*16 + 2*2
)

// AppendV1 appends a v1 header ("PROXY TCP4 ..." or "PROXY TCP6 ...", ending
// in CRLF) describing a connection from src to dst.
//
// IPv4-mapped IPv6 addresses are unmapped and sent as TCP4. If the families
// still differ, an IPv4 dst of an IPv6 src is sent IPv4-mapped; an IPv6 dst
// of an IPv4 src cannot be sent and the header is "PROXY UNKNOWN\r\n", as it
// is when src or dst is the zero AddrPort. Zones are dropped.
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	s, d, ok := canonical(src, dst)
	if !ok {
		return append(b, "PROXY UNKNOWN\r\n"...)
	}
	if s.Addr().Is4() {
		b = append(b, "PROXY TCP4 "...)
	} else {
		b = append(b, "PROXY TCP6 "...)
	}
	b = s.Addr().AppendTo(b)
	b = append(b, ' ')
	b = d.Addr().AppendTo(b)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(s.Port()), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(d.Port()), 10)
	return append(b, "\r\n"...)
}

// AppendV2 appends a binary v2 header describing a TCP connection from src
// to dst: the PROXY command over AF_INET or AF_INET6, without TLVs. Addresses
// are converted as for [AppendV1]; where AppendV1 would send UNKNOWN,
// AppendV2 sends the LOCAL command with AF_UNSPEC and no addresses.
//
// It does not allocate when b has room for 52 more bytes.
func AppendV2(b []byte, src, dst netip.AddrPort) []byte {
	b = append(b, sigV2...)
	s, d, ok := canonical(src, dst)
	if !ok {
		return append(b, v2Local, v2Unspec, 0, 0)
	}
	if s.Addr().Is4() {
		b = append(b, v2Proxy, v2TCP4)
		b = binary.BigEndian.AppendUint16(b, v2LenTCP4)
		sa, da := s.Addr().As4(), d.Addr().As4()
		b = append(b, sa[:]...)
		b = append(b, da[:]...)
	} else {
		b = append(b, v2Proxy, v2TCP6)
		b = binary.BigEndian.AppendUint16(b, v2LenTCP6)
		sa, da := s.Addr().As16(), d.Addr().As16()
		b = append(b, sa[:]...)
		b = append(b, da[:]...)
	}
	b = binary.BigEndian.AppendUint16(b, s.Port())
	return binary.BigEndian.AppendUint16(b, d.Port())
}
