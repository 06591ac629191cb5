package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/proxy/proxyproto"
)

// ErrIdentity means an address answered TLS with a certificate that does
// not prove it is the route's origin.
var ErrIdentity = errors.New("origin identity check failed")

// ErrNotAllowed is returned when a dial targets an address that the
// route's upstreams do not offer at that moment.
var ErrNotAllowed = errors.New("address not allowed for this route")

// identitySpec is how one route recognizes its origin.
type identitySpec struct {
	key      string // route and settings: results are cached under it
	name     string
	roots    *x509.CertPool // nil: the system's
	pins     [][]byte
	proxyVer int
	timeout  time.Duration
}

func newIdentitySpec(rc *config.Route, proxyVer int) (*identitySpec, error) {
	id := rc.Identity
	// A new address gets the dial timeout to prove itself; health probes
	// bound the same check by their own, shorter, timeout.
	spec := &identitySpec{
		name: id.Name, proxyVer: proxyVer, timeout: rc.Timeouts.Dial,
		key: strings.Join(append([]string{rc.Name, id.Name, id.CAFile, fmt.Sprint(proxyVer)}, id.Pins...), "\x00"),
	}
	for _, p := range id.Pins {
		b, err := base64.StdEncoding.DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("pin_sha256 %q: %w", p, err)
		}
		spec.pins = append(spec.pins, b)
	}
	if id.CAFile != "" {
		pem, err := os.ReadFile(id.CAFile)
		if err != nil {
			return nil, fmt.Errorf("identity_ca: %w", err)
		}
		spec.roots = x509.NewCertPool()
		if !spec.roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("identity_ca %s: no PEM certificates in it", id.CAFile)
		}
	}
	return spec, nil
}

// verifier runs identity checks and remembers which addresses passed, so
// that a reload, a repeated DNS answer or the :80 side of the same host
// does not check again. Checks of the same address run once at a time.
type verifier struct {
	dial func(ctx context.Context, ap netip.AddrPort) (net.Conn, error)

	mu       sync.Mutex
	passed   map[verifyKey]bool
	inflight map[verifyKey]*verifyCall
}

type verifyKey struct {
	spec string
	ap   netip.AddrPort
}

type verifyCall struct {
	done chan struct{}
	err  error
}

// verify returns nil when ap has passed spec's check, now or before.
func (v *verifier) verify(ctx context.Context, spec *identitySpec, ap netip.AddrPort) error {
	k := verifyKey{spec.key, ap}
	v.mu.Lock()
	if v.passed[k] {
		v.mu.Unlock()
		return nil
	}
	c := v.inflight[k]
	if c == nil {
		c = &verifyCall{done: make(chan struct{})}
		v.inflight[k] = c
		v.mu.Unlock()
		c.err = v.check(ctx, spec, ap)
		v.mu.Lock()
		delete(v.inflight, k)
		if c.err == nil {
			v.passed[k] = true
		}
		v.mu.Unlock()
		close(c.done)
		return c.err
	}
	v.mu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// forget makes ap prove itself again before its next use.
func (v *verifier) forget(spec *identitySpec, ap netip.AddrPort) {
	v.mu.Lock()
	delete(v.passed, verifyKey{spec.key, ap})
	v.mu.Unlock()
}

// check makes one TLS handshake to ap, as a client of the route would,
// and checks the certificate. Errors that are about the certificate wrap
// ErrIdentity; others (refused, timeout) do not.
func (v *verifier) check(ctx context.Context, spec *identitySpec, ap netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(ctx, spec.timeout)
	defer cancel()
	c, err := v.dial(ctx, ap)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if err := writeProxyLocal(c, spec.proxyVer); err != nil {
		return err
	}
	tc := tls.Client(c, &tls.Config{
		ServerName:         spec.name,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // VerifyConnection does the checking, with pins as an option
		VerifyConnection:   spec.verifyConnection,
	})
	if err := tc.HandshakeContext(ctx); err != nil {
		var ie *identityError
		if errors.As(err, &ie) {
			return ie
		}
		return fmt.Errorf("TLS handshake with %s: %w", ap, err)
	}
	tc.Close()
	return nil
}

// identityError is a certificate that does not prove identity.
type identityError struct{ msg string }

func (e *identityError) Error() string { return e.msg }
func (e *identityError) Unwrap() error { return ErrIdentity }

func (spec *identitySpec) verifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return &identityError{"no certificate"}
	}
	leaf := cs.PeerCertificates[0]
	if len(spec.pins) > 0 {
		sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
		for _, p := range spec.pins {
			if subtle.ConstantTimeCompare(sum[:], p) == 1 {
				return nil
			}
		}
		return &identityError{fmt.Sprintf("certificate for %v has key %s, which is not pinned", leaf.DNSNames, base64.StdEncoding.EncodeToString(sum[:]))}
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{DNSName: spec.name, Roots: spec.roots, Intermediates: inter})
	if err != nil {
		return &identityError{fmt.Sprintf("certificate not valid for %s: %v", spec.name, err)}
	}
	return nil
}

// writeProxyLocal sends a PROXY header with the LOCAL command (v2) or
// UNKNOWN (v1), which tells an origin that expects PROXY protocol that the
// connection is the relay's own, such as a health check.
func writeProxyLocal(c net.Conn, version int) error {
	var hdr []byte
	switch version {
	case 1:
		hdr = proxyproto.AppendV1(nil, netip.AddrPort{}, netip.AddrPort{})
	case 2:
		hdr = proxyproto.AppendV2(nil, netip.AddrPort{}, netip.AddrPort{})
	default:
		return nil
	}
	_, err := c.Write(hdr)
	return err
}

// dialOnly connects to ap and nowhere else: the same check the relay's own
// dials make, for the connections probes open.
func dialOnly(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
		got, err := netip.ParseAddrPort(address)
		if err != nil || netip.AddrPortFrom(got.Addr().Unmap(), got.Port()) != ap {
			return fmt.Errorf("%w: %s", ErrNotAllowed, address)
		}
		return nil
	}}
	return d.DialContext(ctx, "tcp", ap.String())
}
