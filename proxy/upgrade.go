package proxy

import "net/http"

// closeAfterFailedUpgrade ends an HTTP/1.x connection after the answer to
// an upgrade request that did not switch protocols: a refused h2c or
// unknown token, a WebSocket the origin declined, an error page. The
// strict guard in front of Go's server (guardedConn) passes every byte
// after an upgrade request unchecked, as it must once the protocol has
// switched; when it has not, the connection must carry no further
// request, or those bytes would reach Go's lenient parser unchecked.
func closeAfterFailedUpgrade(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 1 && len(r.Header["Upgrade"]) > 0 {
			w = &upgradeWriter{ResponseWriter: w}
		}
		h.ServeHTTP(w, r)
	})
}

// upgradeWriter adds Connection: close to any final response. A switch of
// protocols never passes through it: ReverseProxy writes the 101 itself
// on the hijacked connection.
type upgradeWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *upgradeWriter) WriteHeader(code int) {
	if code >= 200 && !w.wrote {
		w.wrote = true
		w.Header().Set("Connection", "close")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *upgradeWriter) Write(p []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *upgradeWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *upgradeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
