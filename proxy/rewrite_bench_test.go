package proxy

import (
	"net/http/httptest"
	"net/http/httputil"
	"testing"
)

// BenchmarkRewrite measures the request rewrite of a terminated route
// (forwarding headers, Via), including the clone of the request that
// ReverseProxy makes before calling it. The client is a trusted proxy with
// a forwarding chain, and sends the headers a browser visiting Misskey
// sends.
func BenchmarkRewrite(b *testing.B) {
	r := startRelay(b, "routes:\n  - name: blog\n    hosts: [blog.example.org]\n    mode: terminate\n    upstream: \"http://[::1]:8080\"\n    trusted_proxies: [10.0.0.0/8]\n")
	tr := r.srv.table.Load().lookup("blog.example.org").term
	in := httptest.NewRequest("GET", "https://blog.example.org/notes/9k2abc?withReplies=true", nil)
	in.RemoteAddr = "10.1.2.3:40000"
	for k, v := range map[string]string{
		"User-Agent":      "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
		"Accept":          "application/activity+json, application/ld+json",
		"Accept-Language": "ja,en-US;q=0.7,en;q=0.3",
		"Accept-Encoding": "gzip, deflate, br, zstd",
		"X-Forwarded-For": "203.0.113.7",
		"Cookie":          "session=0123456789abcdef",
	} {
		in.Header.Set(k, v)
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.rewrite(&httputil.ProxyRequest{In: in, Out: in.Clone(in.Context())})
	}
}
