package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
)

// sigV1 identifies a v1 header; the spec decides on these 5 bytes alone.
const sigV1 = "PROXY"

// maxV1 is the longest v1 line, CRLF included, that the spec asks receivers
// to accept: "PROXY UNKNOWN" followed by two full-length IPv6 addresses and
// two ports.
const maxV1 = 107

// maxV2 bounds a v2 header, the 16-byte fixed part included. The format
// allows 16+65535 bytes, nearly all of it TLVs; this package skips TLVs, so
// a long header only costs memory and delay. 4096 bytes covers every TLV set
// seen in practice and is the default size of a bufio.Reader, so [Read] can
// inspect a whole header before consuming any of it.
const maxV2 = 4096

// Read parses one v1 or v2 header from r, telling them apart by their
// signatures, and consumes exactly the header's bytes.
//
// It returns an error wrapping [ErrNoHeader] if r does not start with a
// PROXY signature, and one wrapping [ErrInvalid] if the header is malformed:
// it is strict about the v1 grammar (single spaces, no leading zeros, CRLF
// within 107 bytes), the v2 version, command, family and transport values,
// the v2 length (at most 4096 bytes in all, though the format allows
// 16+65535: see maxV2) and the TLV framing. A header
// cut short by EOF wraps both ErrInvalid and [io.ErrUnexpectedEOF]; an empty
// r gives [io.EOF]. Other read errors, such as a deadline, are returned
// wrapped.
//
// On error Read consumes nothing, so the caller may still use r's bytes as
// a connection without a header. A header longer than r's buffer cannot be
// inspected whole and is rejected as ErrInvalid.
//
// A TCP6 header whose source is IPv4-mapped but whose destination is not is
// rejected: no socket has such a pair, and it has no canonical form.
func Read(r *bufio.Reader) (Header, error) {
	v, err := sniff(r)
	if err != nil {
		return Header{}, err
	}
	var h Header
	var n int
	if v == 1 {
		h, n, err = readV1(r)
	} else {
		h, n, err = readV2(r)
	}
	if err != nil {
		return Header{}, err
	}
	if _, err := r.Discard(n); err != nil {
		return Header{}, fmt.Errorf("proxyproto: consuming header: %w", err) // cannot happen: the bytes were peeked
	}
	return h, nil
}

// sniff reports which version's signature starts r without consuming it.
// It decides as soon as the bytes received rule out both signatures, so a
// peer that is not speaking the protocol is recognized without waiting for
// a full signature's worth of bytes.
func sniff(r *bufio.Reader) (int, error) {
	n := 1
	for {
		b, err := r.Peek(n)
		switch {
		case len(b) >= len(sigV2) && string(b[:len(sigV2)]) == sigV2:
			return 2, nil
		case len(b) >= len(sigV1) && string(b[:len(sigV1)]) == sigV1:
			return 1, nil
		case !strings.HasPrefix(sigV1, string(b)) && !strings.HasPrefix(sigV2, string(b)):
			return 0, ErrNoHeader
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(b) == 0 {
				return 0, io.EOF
			}
			return 0, peekErr(err, n)
		}
		n = min(max(n+1, r.Buffered()), len(sigV2))
	}
}

// peekErr turns an error from r.Peek(n) into the error Read reports.
func peekErr(err error, n int) error {
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: truncated: %w", ErrInvalid, io.ErrUnexpectedEOF)
	case errors.Is(err, bufio.ErrBufferFull):
		return fmt.Errorf("%w: header of at least %d bytes exceeds the reader's buffer", ErrInvalid, n)
	default:
		return fmt.Errorf("proxyproto: reading header: %w", err)
	}
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// readV1 peeks a v1 line and parses it, returning its length.
func readV1(r *bufio.Reader) (Header, int, error) {
	line, err := peekLine(r)
	if err != nil {
		return Header{}, 0, err
	}
	h, err := parseV1(line)
	return h, len(line), err
}

// peekLine returns the bytes of r up to and including the first LF, which
// must come within maxV1 bytes.
func peekLine(r *bufio.Reader) ([]byte, error) {
	limit := min(maxV1, r.Size())
	n := len(sigV1)
	for {
		b, err := r.Peek(n)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return b[:i+1], nil
		}
		if len(b) >= maxV1 {
			return nil, invalid("v1: no CRLF in the first %d bytes", maxV1)
		}
		if err != nil {
			return nil, peekErr(err, n)
		}
		if n == limit {
			return nil, peekErr(bufio.ErrBufferFull, n)
		}
		n = min(max(n+1, r.Buffered()), limit)
	}
}

// parseV1 parses a v1 line, which ends in its first LF.
func parseV1(line []byte) (Header, error) {
	s, ok := strings.CutSuffix(string(line), "\r\n")
	if !ok || strings.IndexByte(s, '\r') >= 0 {
		return Header{}, invalid("v1: line does not end in CRLF")
	}
	s, ok = strings.CutPrefix(s, sigV1+" ")
	if !ok {
		return Header{}, invalid("v1: no space after PROXY")
	}
	proto, rest, _ := strings.Cut(s, " ")
	switch proto {
	case "UNKNOWN":
		// The spec says to ignore whatever follows UNKNOWN.
		return Header{Version: 1, Local: true}, nil
	case "TCP4", "TCP6":
	default:
		return Header{}, invalid("v1: unknown protocol %q", proto)
	}
	f := strings.Split(rest, " ")
	if len(f) != 4 {
		return Header{}, invalid("v1: %d fields after %s, want 4", len(f), proto)
	}
	sa, err := parseV1Addr(proto, f[0])
	if err != nil {
		return Header{}, err
	}
	da, err := parseV1Addr(proto, f[1])
	if err != nil {
		return Header{}, err
	}
	sp, err := parseV1Port(f[2])
	if err != nil {
		return Header{}, err
	}
	dp, err := parseV1Port(f[3])
	if err != nil {
		return Header{}, err
	}
	return header(1, netip.AddrPortFrom(sa, sp), netip.AddrPortFrom(da, dp))
}

// parseV1Addr parses an address of the family proto names. ParseAddr already
// rejects IPv4 octets with leading zeros.
func parseV1Addr(proto, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, invalid("v1: bad address %q", s)
	case proto == "TCP4" && !a.Is4(), proto == "TCP6" && !a.Is6():
		return netip.Addr{}, invalid("v1: address %q is not %s", s, proto)
	case a.Zone() != "":
		return netip.Addr{}, invalid("v1: address %q has a zone", s)
	}
	return a, nil
}

// parseV1Port parses a decimal port without leading zeros.
func parseV1Port(s string) (uint16, error) {
	if s == "" || len(s) > len("65535") || len(s) > 1 && s[0] == '0' {
		return 0, invalid("v1: bad port %q", s)
	}
	var n int
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, invalid("v1: bad port %q", s)
		}
		n = n*10 + int(c-'0')
	}
	if n > 0xffff {
		return 0, invalid("v1: port %q out of range", s)
	}
	return uint16(n), nil
}

// header builds a PROXY header from the addresses received, in the
// canonical form that AppendV1 and AppendV2 would send them.
func header(version int, src, dst netip.AddrPort) (Header, error) {
	s, d, ok := canonical(src, dst)
	if !ok {
		return Header{}, invalid("v%d: IPv4-mapped source %s with IPv6 destination %s", version, src.Addr(), dst.Addr())
	}
	return Header{Version: version, Src: s, Dst: d}, nil
}

// readV2 peeks a v2 header and parses it, returning its length.
func readV2(r *bufio.Reader) (Header, int, error) {
	b, err := r.Peek(16)
	if err != nil {
		return Header{}, 0, peekErr(err, 16)
	}
	verCmd, fam := b[12], b[13]
	switch {
	case verCmd>>4 != 2:
		return Header{}, 0, invalid("v2: version %d", verCmd>>4)
	case verCmd&0xf > 1:
		return Header{}, 0, invalid("v2: unknown command %#x", verCmd&0xf)
	case fam>>4 > 3:
		return Header{}, 0, invalid("v2: unknown address family %#x", fam>>4)
	case fam&0xf > 2:
		return Header{}, 0, invalid("v2: unknown transport protocol %#x", fam&0xf)
	}
	n := 16 + int(binary.BigEndian.Uint16(b[14:16]))
	if n > maxV2 {
		return Header{}, 0, invalid("v2: header of %d bytes exceeds the %d-byte limit", n, maxV2)
	}
	if b, err = r.Peek(n); err != nil {
		return Header{}, 0, peekErr(err, n)
	}
	h, err := parseV2(verCmd, fam, b[16:n])
	return h, n, err
}

// parseV2 parses the variable part of a v2 header whose fixed part has been
// checked.
func parseV2(verCmd, fam byte, body []byte) (Header, error) {
	if verCmd == v2Local {
		// The spec says to ignore the family and addresses of LOCAL.
		return Header{Version: 2, Local: true}, nil
	}
	var src, dst netip.AddrPort
	var rest []byte
	switch fam {
	case v2TCP4:
		if len(body) < v2LenTCP4 {
			return Header{}, invalid("v2: %d address bytes, TCP4 needs %d", len(body), v2LenTCP4)
		}
		src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:10]))
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:12]))
		rest = body[v2LenTCP4:]
	case v2TCP6:
		if len(body) < v2LenTCP6 {
			return Header{}, invalid("v2: %d address bytes, TCP6 needs %d", len(body), v2LenTCP6)
		}
		src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[0:16])), binary.BigEndian.Uint16(body[32:34]))
		dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(body[16:32])), binary.BigEndian.Uint16(body[34:36]))
		rest = body[v2LenTCP6:]
	default:
		// UNSPEC, UDP and UNIX: the spec lets a receiver that does not
		// implement a family fall back to the connection's own addresses.
		return Header{Version: 2, Local: true}, nil
	}
	if err := checkTLVs(rest); err != nil {
		return Header{}, err
	}
	return header(2, src, dst)
}

// checkTLVs checks that b is a sequence of whole TLVs (type, 2-byte length,
// value), as HAProxy does, without interpreting them.
func checkTLVs(b []byte) error {
	for len(b) > 0 {
		if len(b) < 3 {
			return invalid("v2: %d trailing bytes are not a TLV", len(b))
		}
		n := 3 + int(binary.BigEndian.Uint16(b[1:3]))
		if n > len(b) {
			return invalid("v2: TLV of type %#x overruns the header by %d bytes", b[0], n-len(b))
		}
		b = b[n:]
	}
	return nil
}
