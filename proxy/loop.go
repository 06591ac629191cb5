package proxy

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
)

// A terminated route whose upstream leads back to the relay (its own :80,
// or another relay that proxies back to it) would pass one request around
// until connections ran out. Each proxied request carries a Via entry
// (RFC 9110 §7.6.3) naming this relay process with a random pseudonym; a
// request that arrives already carrying it is answered 508 Loop Detected.

// viaName returns this relay process's pseudonym, "relay46-" and 16 hex
// digits, chosen once per Server.
func (s *Server) viaName() string {
	s.viaOnce.Do(func() {
		var b [8]byte
		rand.Read(b[:])
		s.via = "relay46-" + hex.EncodeToString(b[:])
	})
	return s.via
}

// looped reports whether a Via entry of h names this relay.
func looped(h http.Header, name string) bool {
	for _, v := range h["Via"] {
		for hop := range strings.SplitSeq(v, ",") {
			if f := strings.Fields(hop); len(f) >= 2 && f[1] == name {
				return true
			}
		}
	}
	return false
}

// viaEntry is the Via entry for a request received as r: its protocol
// version ("1.1", "2") and the relay's pseudonym.
func viaEntry(r *http.Request, name string) string {
	v := strconv.Itoa(r.ProtoMajor)
	if r.ProtoMajor < 2 {
		v += "." + strconv.Itoa(r.ProtoMinor)
	}
	return v + " " + name
}
