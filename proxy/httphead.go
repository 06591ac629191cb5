package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits on an HTTP/1.x request head read on :80. A head over
// MaxHeadBytes gets 431, a request target over MaxTargetBytes gets 414.
const (
	MaxHeadBytes   = 32 << 10
	MaxTargetBytes = 8 << 10
	MaxHeaderCount = 100
	maxChunkLine   = 4 << 10
)

// headError is a request the relay refuses; Status is the HTTP status it
// answers with.
type headError struct {
	Status int
	Msg    string
}

func (e *headError) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Msg) }

func badHead(status int, format string, args ...any) error {
	return &headError{Status: status, Msg: fmt.Sprintf(format, args...)}
}

// reqHead is one parsed HTTP/1.x request head. The relay forwards raw, the
// exact bytes the client sent, so what was checked is what is forwarded.
type reqHead struct {
	raw           []byte
	method        string
	target        string
	proto         string // HTTP/1.0 or HTTP/1.1
	host          string // Host header, as sent (may carry a port)
	contentLength int64  // -1 when absent
	chunked       bool
	upgrade       bool // Connection: upgrade with an Upgrade header
	closeAfter    bool // the connection ends after this exchange
}

// readHead reads and checks one request head. It returns io.EOF when the
// connection closed before the first byte, the read error when it failed
// mid-head, and a *headError for a request that must be refused. Its
// rules are strict on purpose: any head two parsers could read
// differently (bare LF, obs-fold, duplicate or conflicting lengths,
// unknown transfer codings) is refused instead of forwarded.
func readHead(br lineReader) (*reqHead, error) { return parseHead(br, nil) }

// parseHead is readHead appending the head to raw. The guard passes the
// empty start of the buffer that br's lines are slices of, so appending
// each line moves nothing: the head is checked where it was read.
func parseHead(br lineReader, raw []byte) (*reqHead, error) {
	h := &reqHead{contentLength: -1, raw: raw}
	var line []byte
	var err error
	// Tolerate a few empty lines before the request line (RFC 9112 §2.2).
	for blanks := 0; ; blanks++ {
		if line, err = readLine(br, &h.raw); err != nil {
			if len(h.raw) == 0 && errors.Is(err, io.EOF) {
				return nil, io.EOF
			}
			return nil, err
		}
		if len(line) != 0 {
			break
		}
		if blanks >= 4 {
			return nil, badHead(400, "too many empty lines")
		}
	}
	if err := h.parseRequestLine(line); err != nil {
		return nil, err
	}
	var f headFields
	for n := 0; ; n++ {
		if line, err = readLine(br, &h.raw); err != nil {
			return nil, err
		}
		if len(line) == 0 {
			break
		}
		if n >= MaxHeaderCount {
			return nil, badHead(431, "more than %d header fields", MaxHeaderCount)
		}
		name, value, err := splitField(line)
		if err != nil {
			return nil, err
		}
		if err := h.field(name, value, &f); err != nil {
			return nil, err
		}
	}
	return h, h.framing(&f)
}

// headFields tallies the fields whose repetition or combination decides
// how a request is framed.
type headFields struct {
	hosts, lengths, codings                           int
	hasUpgrade, connUpgrade, connClose, connKeepAlive bool
}

// field records one header field. Names are tokens, so ASCII case
// folding is exactly strings.ToLower on them.
func (h *reqHead) field(name, value []byte, f *headFields) error {
	switch {
	case asciiIs(name, "host"):
		f.hosts++
		h.host = string(value)
	case asciiIs(name, "content-length"):
		f.lengths++
		v, err := strconv.ParseInt(string(value), 10, 64)
		if err != nil || v < 0 || value[0] == '+' {
			return badHead(400, "invalid Content-Length")
		}
		h.contentLength = v
	case asciiIs(name, "transfer-encoding"):
		f.codings++
		if !bytes.EqualFold(value, []byte("chunked")) {
			return badHead(501, "unsupported Transfer-Encoding %q", value)
		}
		h.chunked = true
	case asciiIs(name, "upgrade"):
		f.hasUpgrade = true
	case asciiIs(name, "connection"):
		for tok := range bytes.SplitSeq(value, []byte(",")) {
			tok = bytes.TrimSpace(tok)
			switch {
			case lowerIs(tok, "close"):
				f.connClose = true
			case lowerIs(tok, "keep-alive"):
				f.connKeepAlive = true
			case lowerIs(tok, "upgrade"):
				f.connUpgrade = true
			}
		}
	}
	return nil
}

// framing refuses ambiguous combinations of fields and settles how the
// connection continues.
func (h *reqHead) framing(f *headFields) error {
	switch {
	case f.hosts > 1:
		return badHead(400, "more than one Host")
	case f.hosts == 0 && h.proto == "HTTP/1.1":
		return badHead(400, "missing Host")
	case f.lengths > 1:
		return badHead(400, "more than one Content-Length")
	case f.codings > 1:
		return badHead(400, "more than one Transfer-Encoding")
	case h.chunked && f.lengths > 0:
		return badHead(400, "both Content-Length and Transfer-Encoding")
	case h.chunked && h.proto == "HTTP/1.0":
		return badHead(400, "Transfer-Encoding in an HTTP/1.0 request")
	}
	h.upgrade = f.hasUpgrade && f.connUpgrade
	h.closeAfter = f.connClose || (h.proto == "HTTP/1.0" && !f.connKeepAlive)
	return nil
}

// asciiIs reports whether b, lowered as ASCII, is the lower-case s.
func asciiIs(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// lowerIs reports whether strings.ToLower(string(b)) == s for an ASCII s,
// allocating only for the rare non-ASCII b (ToLower maps the Kelvin sign
// to k, so ASCII folding alone would not do).
func lowerIs(b []byte, s string) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return strings.ToLower(string(b)) == s
		}
	}
	return asciiIs(b, s)
}

// lineReader is where readHead reads lines: a *bufio.Reader on the :80
// relay, the bytes the guard has read on a terminated connection.
type lineReader interface {
	ReadSlice(delim byte) ([]byte, error)
}

var _ lineReader = (*bufio.Reader)(nil)

// readLine appends the next CRLF-terminated line to raw and returns it
// without the CRLF, refusing bare LF, bare CR and heads over MaxHeadBytes.
func readLine(br lineReader, raw *[]byte) ([]byte, error) {
	start := len(*raw)
	for {
		frag, err := br.ReadSlice('\n')
		if len(*raw)+len(frag) > MaxHeadBytes {
			return nil, badHead(431, "request head larger than %d bytes", MaxHeadBytes)
		}
		*raw = append(*raw, frag...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) && len(*raw) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
	return checkLine((*raw)[start:])
}

// checkLine returns a line ending in LF without its CRLF, refusing bare
// LF and bare CR.
func checkLine(line []byte) ([]byte, error) {
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, badHead(400, "line not terminated by CRLF")
	}
	line = line[:len(line)-2]
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, badHead(400, "bare CR")
	}
	return line, nil
}

func (h *reqHead) parseRequestLine(line []byte) error {
	m, rest, ok1 := bytes.Cut(line, []byte{' '})
	t, proto, ok2 := bytes.Cut(rest, []byte{' '})
	if !ok1 || !ok2 || len(m) == 0 || !isToken(m) {
		return badHead(400, "malformed request line")
	}
	if len(t) > MaxTargetBytes {
		return badHead(414, "request target longer than %d bytes", MaxTargetBytes)
	}
	for _, b := range t {
		if b <= ' ' || b == 0x7f {
			return badHead(400, "invalid byte in request target")
		}
	}
	// One string for the three: one allocation, not three.
	ls := string(line)
	h.method, h.target, h.proto = ls[:len(m)], ls[len(m)+1:len(m)+1+len(t)], ls[len(m)+len(t)+2:]
	if h.proto != "HTTP/1.1" && h.proto != "HTTP/1.0" {
		return badHead(505, "unsupported protocol %q", proto)
	}
	switch {
	case len(t) > 0 && t[0] == '/':
	case string(t) == "*" && h.method == "OPTIONS":
	default:
		// Absolute-form and CONNECT are for forward proxies; this is not one.
		return badHead(400, "request target must be a path")
	}
	return nil
}

// splitField checks a header field line and returns its name and value,
// slices of line.
func splitField(line []byte) (name, value []byte, err error) {
	if line[0] == ' ' || line[0] == '\t' {
		return nil, nil, badHead(400, "obsolete line folding")
	}
	name, value, ok := bytes.Cut(line, []byte{':'})
	if !ok || len(name) == 0 || !isToken(name) {
		return nil, nil, badHead(400, "malformed header field")
	}
	value = bytes.Trim(value, " \t")
	for _, b := range value {
		if (b < ' ' && b != '\t') || b == 0x7f {
			return nil, nil, badHead(400, "control character in header %q", name)
		}
	}
	return name, value, nil
}

func isToken(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 || !tokenChars[c] {
			return false
		}
	}
	return true
}

var tokenChars = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// copyBody forwards the request body of h byte for byte.
func copyBody(dst io.Writer, br *bufio.Reader, h *reqHead) (int64, error) {
	switch {
	case h.chunked:
		return copyChunked(dst, br)
	case h.contentLength > 0:
		n, err := io.CopyN(dst, br, h.contentLength)
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	return 0, nil
}

// copyChunked forwards a chunked body, checking each chunk-size line, and
// the trailer section that ends it.
func copyChunked(dst io.Writer, br *bufio.Reader) (int64, error) {
	var total int64
	var line []byte
	for {
		line = line[:0]
		l, err := readChunkLine(br, &line)
		if err != nil {
			return total, err
		}
		size, err := parseChunkSize(l)
		if err != nil {
			return total, err
		}
		n, err := dst.Write(line)
		total += int64(n)
		if err != nil {
			return total, err
		}
		if size == 0 {
			break
		}
		m, err := io.CopyN(dst, br, size)
		total += m
		if err != nil {
			return total, err
		}
		crlf := make([]byte, 2)
		if _, err := io.ReadFull(br, crlf); err != nil {
			return total, err
		}
		if crlf[0] != '\r' || crlf[1] != '\n' {
			return total, badHead(400, "chunk not followed by CRLF")
		}
		n, err = dst.Write(crlf)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
	// Trailer fields, then the empty line.
	for i := 0; ; i++ {
		line = line[:0]
		l, err := readChunkLine(br, &line)
		if err != nil {
			return total, err
		}
		if len(l) > 0 {
			if i >= MaxHeaderCount {
				return total, badHead(400, "too many trailer fields")
			}
			if _, _, err := splitField(l); err != nil {
				return total, err
			}
		}
		n, err := dst.Write(line)
		total += int64(n)
		if err != nil || len(l) == 0 {
			return total, err
		}
	}
}

func readChunkLine(br *bufio.Reader, raw *[]byte) ([]byte, error) {
	l, err := readLine(br, raw)
	if err == nil && len(*raw) > maxChunkLine {
		return nil, badHead(400, "chunk line too long")
	}
	return l, err
}

func parseChunkSize(l []byte) (int64, error) {
	hex, _, _ := bytes.Cut(l, []byte{';'})
	if len(hex) == 0 || len(hex) > 15 {
		return 0, badHead(400, "invalid chunk size")
	}
	var n int64
	for _, c := range hex {
		var v byte
		switch {
		case '0' <= c && c <= '9':
			v = c - '0'
		case 'a' <= c && c <= 'f':
			v = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, badHead(400, "invalid chunk size")
		}
		n = n<<4 | int64(v)
	}
	return n, nil
}
