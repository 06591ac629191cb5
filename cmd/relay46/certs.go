package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"

	"go.uber.org/zap"

	"github.com/relay46/relay46/acme"
	"github.com/relay46/relay46/config"
	"github.com/relay46/relay46/metrics"
)

// caURL maps the config's CA names to directory URLs.
func caURL(ca string) string {
	switch ca {
	case "letsencrypt":
		return acme.LetsEncrypt
	case "letsencrypt-staging":
		return acme.LetsEncryptStaging
	}
	return ca
}

// terminatedHosts splits the hosts of terminated routes into those that
// get certificates by ACME and the routes that bring their own files.
func terminatedHosts(cfg *config.Config) (acmeHosts []string, fileRoutes []*config.Route) {
	for _, r := range cfg.Routes {
		if r.Mode != config.Terminate {
			continue
		}
		if r.CertFile != "" {
			fileRoutes = append(fileRoutes, r)
		} else {
			acmeHosts = append(acmeHosts, r.Hosts...)
		}
	}
	return acmeHosts, fileRoutes
}

// applyCerts makes the certificate manager serve what cfg asks for:
// ACME for terminated hosts without files, files for the others. The
// manager is created when the first terminated route appears and keeps
// its certificates across reloads.
func (d *daemon) applyCerts(ctx context.Context, cfg *config.Config, prev *config.Config) error {
	acmeHosts, fileRoutes := terminatedHosts(cfg)
	if d.certs == nil {
		if len(acmeHosts) == 0 && len(fileRoutes) == 0 {
			return nil
		}
		m, err := d.newCertManager(cfg, len(acmeHosts) > 0)
		if err != nil {
			return err
		}
		d.certs = m
		d.srv.Certs = m
	}
	for _, r := range fileRoutes {
		if err := d.certs.LoadFiles(r.Hosts, r.CertFile, r.KeyFile); err != nil {
			return fmt.Errorf("route %s: cert_file/key_file: %w", r.Name, err)
		}
		for _, h := range r.Hosts {
			if na, ok := d.certs.NotAfter(h); ok {
				d.metrics.CertExpiry(h, na)
			}
		}
	}
	if prev != nil {
		_, prevFiles := terminatedHosts(prev)
		keep := map[string]bool{}
		for _, r := range fileRoutes {
			for _, h := range r.Hosts {
				keep[h] = true
			}
		}
		for _, r := range prevFiles {
			for _, h := range r.Hosts {
				if !keep[h] {
					d.certs.UnloadFiles([]string{h})
					d.metrics.CertRemoved(h)
				}
			}
		}
	}
	if len(acmeHosts) > 0 && cfg.ACME.Email == "" {
		d.logger.Warn("acme.email is empty: the CA cannot warn you about expiring certificates or problems")
	}
	if err := d.certs.Manage(ctx, acmeHosts); err != nil {
		return fmt.Errorf("acme: %w", err)
	}
	return nil
}

func (d *daemon) newCertManager(cfg *config.Config, useACME bool) (*acme.Manager, error) {
	opts := acme.Options{
		Email:   cfg.ACME.Email,
		Storage: cfg.ACME.Storage,
		Logger:  d.logger.Named("acme"),
		OnEvent: func(e acme.Event) {
			result := metrics.ResultOK
			if e.Err != nil {
				result = metrics.ResultErr
			}
			d.metrics.ACMEAttempt(e.Kind, result)
			if !e.NotAfter.IsZero() {
				d.metrics.CertExpiry(e.Host, e.NotAfter)
			}
		},
	}
	if useACME {
		opts.CA = caURL(cfg.ACME.CA)
		opts.HTTPPort = port(cfg.Listen.HTTP)
		opts.TLSPort = port(cfg.Listen.HTTPS)
		opts.DisableHTTP01 = cfg.Listen.HTTP == "" || !slices.Contains(cfg.ACME.Challenges, config.ChallengeHTTP01)
		opts.DisableTLSALPN01 = cfg.Listen.HTTPS == "" || !slices.Contains(cfg.ACME.Challenges, config.ChallengeTLSALPN01)
		if cfg.ACME.CARoot != "" {
			pem, err := os.ReadFile(cfg.ACME.CARoot)
			if err != nil {
				return nil, fmt.Errorf("acme.ca_root: %w", err)
			}
			opts.CARoots = x509.NewCertPool()
			if !opts.CARoots.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("acme.ca_root %s: no PEM certificates in it", cfg.ACME.CARoot)
			}
		}
		d.logger.Info("certificates by ACME", zap.String("ca", opts.CA), zap.String("storage", opts.Storage),
			zap.Bool("http01", !opts.DisableHTTP01), zap.Bool("tls_alpn01", !opts.DisableTLSALPN01))
	}
	return acme.New(opts)
}

func port(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
