// Package proxyproto speaks the HAProxy PROXY protocol, versions 1 and 2
// (https://github.com/haproxy/haproxy/blob/master/doc/proxy-protocol.txt).
//
// The relay is the sender: after dialing a home server it writes one header
// that tells the server which client it is relaying, then the client's bytes.
//
//	hdr := proxyproto.AppendV2(make([]byte, 0, 64), clientAddr, relayAddr)
//	_, err := upstream.Write(hdr)
//
// Test origins and the demo origin are receivers. They either parse a header
// themselves with [Read], or wrap their listener in a [Listener] so that
// RemoteAddr reports the client the relay spoke for:
//
//	ln = &proxyproto.Listener{Listener: ln, Required: true}
//	http.Serve(ln, handler) // r.RemoteAddr is the relayed client
//
// Only TCP over IPv4 and IPv6 is interpreted; v2 TLVs are skipped (so a
// CRC32C TLV is not verified).
package proxyproto

import (
	"errors"
	"net/netip"
	"strconv"
)

// ErrNoHeader means the connection does not start with a PROXY protocol
// signature: its peer is not speaking the protocol at all.
var ErrNoHeader = errors.New("proxyproto: no PROXY protocol header")

// ErrInvalid means the connection starts with a PROXY protocol signature but
// the header is malformed or truncated. Errors wrapping it say what is wrong.
var ErrInvalid = errors.New("proxyproto: invalid PROXY protocol header")

// Header is what a PROXY header says about a connection.
//
// Headers returned by [Read] are canonical: IPv4 clients are reported as
// IPv4 (never IPv4-mapped IPv6) and no address has a zone, so encoding one
// with [AppendV1] or [AppendV2] and reading it back gives the same Header.
type Header struct {
	Version int // 1 or 2; zero for a connection that had no header

	// Local is set when the header carries no addresses: the v2 LOCAL
	// command, v1 "UNKNOWN", or a v2 family or transport this package does
	// not interpret (UNSPEC, UDP, UNIX), for which the spec says to fall
	// back to the connection's own addresses. Src and Dst are then zero.
	Local bool

	Src, Dst netip.AddrPort // client and the address it connected to
}

// String describes h for logs, e.g. "v2 TCP4 192.0.2.1:56324 -> 192.0.2.11:443",
// "v1 UNKNOWN" or "v2 LOCAL".
func (h Header) String() string {
	v := "v" + strconv.Itoa(h.Version)
	switch {
	case h.Version == 0:
		return "none"
	case h.Local && h.Version == 1:
		return v + " UNKNOWN"
	case h.Local:
		return v + " LOCAL"
	}
	proto := " TCP6 "
	if h.Src.Addr().Is4() {
		proto = " TCP4 "
	}
	return v + proto + h.Src.String() + " -> " + h.Dst.String()
}

// canonical returns src and dst the way they go on the wire, or ok=false
// when they cannot be sent (UNKNOWN / LOCAL).
//
// IPv4-mapped addresses are unmapped so IPv4 clients are sent as TCP4. If
// the families still differ, the destination is converted to the source's
// family when possible: an IPv4 destination of an IPv6 client is mapped,
// but an IPv6 destination of an IPv4 client has no IPv4 form. The source is
// never converted, because it is the address receivers act on.
func canonical(src, dst netip.AddrPort) (s, d netip.AddrPort, ok bool) {
	if !src.Addr().IsValid() || !dst.Addr().IsValid() {
		return netip.AddrPort{}, netip.AddrPort{}, false
	}
	sa := src.Addr().Unmap().WithZone("")
	da := dst.Addr().Unmap().WithZone("")
	if sa.Is4() != da.Is4() {
		if sa.Is4() {
			return netip.AddrPort{}, netip.AddrPort{}, false
		}
		da = netip.AddrFrom16(da.As16())
	}
	return netip.AddrPortFrom(sa, src.Port()), netip.AddrPortFrom(da, dst.Port()), true
}
