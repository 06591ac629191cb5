package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Results is everything a run produced; latest.json is this, indented.
type Results struct {
	Started  time.Time                     `json:"started"`
	Finished time.Time                     `json:"finished"`
	Options  map[string]string             `json:"options"`
	Machine  map[string]string             `json:"machine"`
	Peers    []PeerSpec                    `json:"peers"`
	Notes    []string                      `json:"notes"`
	Medians  map[string]map[string]float64 `json:"medians"` // peer → metric → median over repetitions
	Samples  []sample                      `json:"samples"`
}

func (b *bench) results(started time.Time) *Results {
	o := b.opts
	r := &Results{
		Started:  started,
		Finished: time.Now(),
		Options: map[string]string{
			"reps": fmt.Sprint(o.reps), "warm": o.warm.String(), "duration": o.dur.String(),
			"keepalive_conns": fmt.Sprint(o.kaConns), "newconn_workers": fmt.Sprint(o.ncWorkers),
			"bulk_runs": fmt.Sprint(o.bulkRuns), "bulk_bytes": fmt.Sprint(b.spec.BulkBytes),
			"latency_requests": fmt.Sprint(o.latReqs), "idle_conns": fmt.Sprint(b.idleN),
		},
		Machine: b.spec.Machine,
		Notes:   b.notes,
		Medians: map[string]map[string]float64{},
		Samples: b.samples,
	}
	for _, p := range b.peers {
		r.Peers = append(r.Peers, p.spec)
	}
	byKey := map[[2]string][]float64{}
	for _, s := range b.samples {
		k := [2]string{s.Peer, s.Metric}
		byKey[k] = append(byKey[k], s.Value)
	}
	for k, vs := range byKey {
		if r.Medians[k[0]] == nil {
			r.Medians[k[0]] = map[string]float64{}
		}
		r.Medians[k[0]][k[1]] = median(vs)
	}
	return r
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// quantile of sorted values, nearest rank.
func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// row is one line of a table: a metric, its heading, which way is better.
type row struct {
	metric string
	label  string
	higher bool
	prec   int
}

var tableRows = []row{
	{mKARate, "keep-alive HTTPS requests/s ↑", true, 0},
	{mNCRate, "new TLS connections/s ↑", true, 0},
	{mBulkMBps, "bulk download MB/s ↑", true, 0},
	{mAddP50, "added latency p50, µs ↓", false, 1},
	{mAddP99, "added latency p99, µs ↓", false, 1},
	{mIdleKiB, "RSS per idle connection, KiB ↓", false, 1},
	{mIdleFDs, "open files per idle connection ↓", false, 1},
	{mBulkCPU, "CPU s per GB relayed ↓", false, 2},
	{mKACPU, "CPU µs per keep-alive request ↓", false, 1},
	{mNCCPU, "CPU µs per new connection ↓", false, 0},
}

// goal is a target from issue 8, checked against the run's ratios.
type goal struct {
	peer   string
	metric string
	ratio  float64 // relay46 ÷ peer must be at least this (0: not a ratio goal)
	limit  float64 // or the figure must be at most this
}

var groupTargets = map[string][]goal{
	"passthrough": {
		{peer: "haproxy", metric: mKARate, ratio: 1},
		{peer: "haproxy", metric: mNCRate, ratio: 1},
		{peer: "haproxy", metric: mBulkMBps, ratio: 1},
		{metric: mIdleKiB, limit: 8},
	},
	"terminate": {
		{peer: "nginx-term", metric: mKARate, ratio: 1},
		{peer: "nginx-term", metric: mNCRate, ratio: 1},
		{metric: mIdleKiB, limit: 20},
	},
}

var groupTitles = []struct{ group, title, relay string }{
	{"passthrough", "Passthrough: SNI routing, TLS untouched, origin does TLS", "relay46-pt"},
	{"terminate", "Termination: TLS ends at the proxy, HTTP/1.1 keep-alive to the origin", "relay46-term"},
}

func renderMarkdown(r *Results) string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	w("# relay46 benchmark\n\n")
	w("Run %s, %s. %s repetitions, every figure the median over them; peers interleaved within each repetition.\n",
		r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Finished.Sub(r.Started).Round(time.Second), r.Options["reps"])
	w("Machine: %s.\n", machineLine(r.Machine))
	w("Load: %s keep-alive connections and %s new-connection loops for %s (after %s warm-up); %s × %s-byte downloads; %s sequential requests for latency; %s idle connections for memory.\n\n",
		r.Options["keepalive_conns"], r.Options["newconn_workers"], r.Options["duration"], r.Options["warm"],
		r.Options["bulk_runs"], r.Options["bulk_bytes"], r.Options["latency_requests"], r.Options["idle_conns"])
	for _, g := range groupTitles {
		renderGroup(&sb, r, g.group, g.title, g.relay)
	}
	w("↑ higher is better, ↓ lower is better; a ratio is relay46's median divided by the peer's, so above 1 is better for ↑ rows and below 1 for ↓ rows. In parentheses: the lowest and highest ratio within a single repetition.\n")
	w("The direct column is the client talking to the origin itself; in the latency rows it shows the absolute latency that the others add to.\n")
	if len(r.Notes) > 0 {
		w("\nNotes:\n")
		for _, n := range r.Notes {
			w("- %s\n", n)
		}
	}
	return sb.String()
}

func machineLine(m map[string]string) string {
	var parts []string
	for _, k := range []string{"nproc", "cpu", "kernel", "go"} {
		if v := m[k]; v != "" {
			parts = append(parts, k+" "+v)
		}
	}
	return strings.Join(parts, ", ")
}

func renderGroup(sb *strings.Builder, r *Results, group, title, relay string) {
	w := func(format string, args ...any) { fmt.Fprintf(sb, format, args...) }
	var peers []PeerSpec
	relayLabel, haveRelay := "relay46", false
	for _, p := range r.Peers {
		if p.Group != group {
			continue
		}
		if p.Name == relay {
			relayLabel, haveRelay = p.Label, true
			continue
		}
		peers = append(peers, p)
	}
	w("## %s\n\n", title)
	if !haveRelay && len(peers) == 0 {
		w("No peer of this kind ran (see the notes).\n\n")
		return
	}
	w("| | %s |", relayLabel)
	for _, p := range peers {
		w(" %s | relay46 ÷ %s |", p.Label, p.Label)
	}
	w(" direct |\n|---|--:|")
	for range peers {
		w("--:|--:|")
	}
	w("--:|\n")
	for _, row := range tableRows {
		rv, rok := r.Medians[relay][row.metric]
		w("| %s | %s |", row.label, fmtVal(rv, rok && haveRelay, row.prec))
		for _, p := range peers {
			pv, pok := r.Medians[p.Name][row.metric]
			ratio := fmtRatio(rv, pv, rok && haveRelay && pok)
			if lo, hi, ok := r.ratioRange(relay, p.Name, row.metric); ok && ratio != "—" {
				ratio += fmt.Sprintf(" (%.2f–%.2f)", lo, hi)
			}
			w(" %s | %s |", fmtVal(pv, pok, row.prec), ratio)
		}
		dm := row.metric
		switch dm {
		case mAddP50:
			dm = mLatP50
		case mAddP99:
			dm = mLatP99
		}
		dv, dok := r.Medians[direct][dm]
		w(" %s |\n", fmtVal(dv, dok, row.prec))
	}
	w("\n")
	if !haveRelay {
		w("relay46 is missing from this table: see the notes.\n\n")
		return
	}
	w("Targets (issue 8):\n")
	for _, t := range groupTargets[group] {
		rv, rok := r.Medians[relay][t.metric]
		name := metricLabel(t.metric)
		if t.ratio > 0 {
			pv, pok := r.Medians[t.peer][t.metric]
			label := labelOf(peers, t.peer)
			if !rok || !pok || pv <= 0 {
				w("- %s ≥ %.1f× %s: not measured\n", name, t.ratio, label)
				continue
			}
			q := rv / pv
			verdict := "met"
			if q < t.ratio {
				verdict = fmt.Sprintf("not met, %.0f%% short", (t.ratio-q)/t.ratio*100)
			}
			w("- %s ≥ %.1f× %s: %.2f× — %s\n", name, t.ratio, label, q, verdict)
			continue
		}
		if !rok {
			w("- %s ≤ %g: not measured\n", name, t.limit)
			continue
		}
		verdict := "met"
		if rv > t.limit {
			verdict = fmt.Sprintf("not met, %.0f%% over", (rv-t.limit)/t.limit*100)
		}
		w("- %s ≤ %g: %.1f — %s\n", name, t.limit, rv, verdict)
	}
	w("\n")
}

// ratioRange is the lowest and highest relay46 ÷ peer ratio of a metric
// within one repetition, over the repetitions that have both figures and
// more than one of them.
func (r *Results) ratioRange(relay, peer, metric string) (lo, hi float64, ok bool) {
	byRep := map[int][2]float64{}
	for _, s := range r.Samples {
		if s.Metric != metric || (s.Peer != relay && s.Peer != peer) {
			continue
		}
		v := byRep[s.Rep]
		if s.Peer == relay {
			v[0] = s.Value
		} else {
			v[1] = s.Value
		}
		byRep[s.Rep] = v
	}
	n := 0
	for _, v := range byRep {
		if v[0] <= 0 || v[1] <= 0 {
			continue
		}
		q := v[0] / v[1]
		if n == 0 || q < lo {
			lo = q
		}
		if n == 0 || q > hi {
			hi = q
		}
		n++
	}
	return lo, hi, n > 1
}

func metricLabel(m string) string {
	for _, r := range tableRows {
		if r.metric == m {
			return strings.TrimRight(r.label, " ↑↓")
		}
	}
	return m
}

func labelOf(peers []PeerSpec, name string) string {
	for _, p := range peers {
		if p.Name == name {
			return p.Label
		}
	}
	return name
}

func fmtVal(v float64, ok bool, prec int) string {
	if !ok || math.IsNaN(v) {
		return "—"
	}
	if prec == 0 && math.Abs(v) >= 1000 {
		return groupThousands(fmt.Sprintf("%.0f", v))
	}
	return fmt.Sprintf("%.*f", prec, v)
}

// fmtRatio is a ÷ b, or a dash when either is not a positive figure (an
// added latency below the noise can come out negative).
func fmtRatio(a, b float64, ok bool) string {
	if !ok || a <= 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

func groupThousands(s string) string {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
