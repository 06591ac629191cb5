package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// runHealth probes every address of the set each interval until the set
// is retired. Probes of one round run in parallel.
func (s *Set) runHealth() {
	defer s.wg.Done()
	t := time.NewTicker(s.health.Interval)
	defer t.Stop()
	for {
		s.checkRound()
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
	}
}

type probeTarget struct {
	m  *member
	ap netip.AddrPort
}

func (s *Set) checkRound() {
	var targets []probeTarget
	for _, m := range s.members {
		m.retry()
		if pub := m.pub.Load(); pub != nil && m.ports[kindMain] != 0 {
			for _, ip := range pub.addrs {
				targets = append(targets, probeTarget{m, netip.AddrPortFrom(ip, m.ports[kindMain])})
			}
		}
	}
	var wg sync.WaitGroup
	for _, pt := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			started := s.reg.now()
			err := s.probe(pt.ap)
			if s.ctx.Err() != nil {
				return
			}
			if errors.Is(err, ErrIdentity) {
				s.reg.verify.forget(s.identity, pt.ap)
				s.reg.identityFailed(s.route, pt.ap, err)
				pt.m.revoke(pt.ap.Addr(), err)
			}
			s.checked(pt.ap, started, err)
		}()
	}
	wg.Wait()
}

// probe checks one address: a TLS handshake proving identity when the
// route checks it, an HTTP GET when a path is configured, else a TCP
// connect.
func (s *Set) probe(ap netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(s.ctx, s.health.Timeout)
	defer cancel()
	if s.identity != nil {
		return s.reg.verify.check(ctx, s.identity, ap)
	}
	c, err := s.reg.verify.dial(ctx, ap)
	if err != nil {
		return err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if s.health.Path != "" {
		return s.probeHTTP(c)
	}
	return writeProxyLocal(c, s.proxyVer)
}

// probeHTTP sends GET path on c and checks the status. The certificate of
// an https origin is not checked here: the probe asks whether the origin
// answers; the requests it carries verify it.
func (s *Set) probeHTTP(c net.Conn) error {
	if s.scheme == "https" {
		tc := tls.Client(c, &tls.Config{ServerName: s.checkHost, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}})
		if err := tc.Handshake(); err != nil {
			return err
		}
		c = tc
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+s.checkHost+s.health.Path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "relay46-health-check")
	req.Close = true
	if err := req.Write(c); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != s.health.ExpectStatus {
		return fmt.Errorf("GET %s answered %d, want %d", s.health.Path, resp.StatusCode, s.health.ExpectStatus)
	}
	return nil
}

// checked applies a probe result: fall failures in a row mark an address
// down, rise successes in a row mark it up again. A success also ends an
// ejection, but only a probe started after the failed dial that caused
// it: one that connected just before the origin went away proves nothing.
func (s *Set) checked(ap netip.AddrPort, started time.Time, err error) {
	s.mu.Lock()
	st := s.state(ap)
	was := st.up
	if err == nil {
		st.okRun++
		st.failRun = 0
		if st.okRun >= s.health.Rise {
			st.up = true
		}
		if st.up && started.After(st.ejectedAt) {
			st.dialFails, st.ejectedUntil = 0, time.Time{}
		}
	} else {
		st.failRun++
		st.okRun = 0
		if st.failRun >= s.health.Fall {
			st.up = false
		}
	}
	s.exportLocked(ap, st, st.up)
	now := st.up
	s.mu.Unlock()
	if was != now {
		s.changed()
	}
	switch {
	case was && !now:
		s.reg.log.Warn("upstream address down", zap.String("route", s.route), zap.String("address", ap.String()),
			zap.Int("failed_checks", s.health.Fall), zap.Error(err))
	case !was && now:
		s.reg.log.Info("upstream address up again", zap.String("route", s.route), zap.String("address", ap.String()),
			zap.Int("passed_checks", s.health.Rise))
	}
}
