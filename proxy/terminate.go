package proxy

import (
	"bufio"
	"net"
	"net/http"
)

// terminate hands a ClientHello for a terminated host to the in-process
// TLS server. (Termination arrives with the acme package.)
func (s *Server) terminate(c net.Conn, peeked []byte, r *route, l *connLog) {
	l.outcome = outcomeUnknownHost
	c.Write(alertUnrecognizedName)
	c.Close()
}

// terminateHTTP answers :80 for a terminated host.
func (s *Server) terminateHTTP(c net.Conn, br *bufio.Reader, h *reqHead, r *route, l *connLog) {
	l.outcome = outcomeUnknownHost
	writeStatus(c, http.StatusMisdirectedRequest, "no route for this host")
}
