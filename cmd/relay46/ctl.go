package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/relay46/relay46/config"
)

// cmdHealth asks a running relay46 whether it is alive, through its admin
// listener: exit status 0 if it answers /healthz (or /readyz with -ready),
// 1 if not. It is the container image's HEALTHCHECK, since the image has no
// curl.
func cmdHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("health", stderr)
	addr := fs.String("admin", config.DefaultAdminListen, "the relay's admin listener (its config's admin:)")
	ready := fs.Bool("ready", false, "ask /readyz instead: config loaded and listeners bound")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	answer, err := adminRequest(ctx, http.MethodGet, *addr, path, *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, answer)
	return nil
}

// cmdReload makes a running relay46 read its config file again, as SIGHUP
// does, and prints the outcome: "reloaded", or why the new config was
// refused (the old one keeps serving).
func cmdReload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("reload", stderr)
	addr := fs.String("admin", config.DefaultAdminListen, "the relay's admin listener (its config's admin:)")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	answer, err := adminRequest(ctx, http.MethodPost, *addr, "/reload", *timeout)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, answer)
	return nil
}

// errAdminStatus is an admin answer other than 200 OK.
var errAdminStatus = errors.New("admin listener answered")

// adminRequest sends one request to the admin listener at addr and returns
// the answer's text. Any status but 200 is an error that carries the text.
func adminRequest(ctx context.Context, method, addr, path string, timeout time.Duration) (string, error) {
	base, err := adminBaseURL(addr)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		return "", err
	}
	// No proxy from the environment: the admin listener is local.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("%s %s: %w", method, req.URL, err)
	}
	text := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s %s: %w %s: %s", method, req.URL, errAdminStatus, resp.Status, text)
	}
	return text, nil
}

// adminBaseURL turns the config's admin address into a URL to reach it:
// a listener on all addresses (":9046", "[::]:9046") is reached on
// loopback. A full http:// URL is taken as it is.
func adminBaseURL(addr string) (string, error) {
	if strings.Contains(addr, "://") {
		return strings.TrimSuffix(addr, "/"), nil
	}
	if addr == "" {
		return "", errors.New(`no admin address: the relay's admin listener is disabled (admin: "")`)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.Equal(net.IPv4zero)):
		host = "127.0.0.1"
	case ip != nil && ip.Equal(net.IPv6unspecified):
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}
