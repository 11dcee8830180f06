package bench

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets of the variants, as ratios of the engine's catch-up time to the
// reference's (the delete rule, same shape, same run).
const (
	TargetActionRatio = 1.3 // each action, and all at once
	TargetFanoutRatio = 3.0 // 10 keys per row against 1
	TargetFanoutKeys  = 10
	TargetRulesRatio  = 1.2 // many tables and rules against one rule
	// TargetVerifierOverhead: catch-up with the verifier at most this
	// many times the time without it.
	TargetVerifierOverhead = 1.05
	// TargetConfirmTrail: the slot's confirmation at most this much
	// (a fraction of the applied time) after the last effect in Redis.
	TargetConfirmTrail = 0.20
	// verifySettle: how long after the catch-up the verifier's figures are
	// read, so that the 1 s checks of the last samples are done.
	verifySettle = 1500 * time.Millisecond
)

// VariantInfo says which rules a catch-up measured.
type VariantInfo struct {
	Name       string `json:"name"`   // "" for the reference
	Action     string `json:"action"` // delete, version, refresh, publish, stream, generation, all
	Fanout     int    `json:"fanout"`
	Tables     int    `json:"tables"`
	Rules      int    `json:"rules"`
	VerifyRate int    `json:"verify_rate"` // 0: verifier off
}

func variantInfoOf(v variant, verifyRate int) VariantInfo {
	return VariantInfo{Name: v.name(verifyRate), Action: v.action, Fanout: v.fanout, Tables: v.tables, Rules: v.rules, VerifyRate: v.verify}
}

// CatchUpVariant is the variant of a catch-up and how it compares.
type CatchUpVariant struct {
	Shape   string      `json:"shape"` // batched or single
	Variant VariantInfo `json:"variant"`
	// EngineAppliedSeconds is the median time from the engine's start
	// until its last effect was seen in Redis (-1 unknown); EngineSeconds
	// is until the slot confirmed the end.
	EngineAppliedSeconds float64 `json:"engine_applied_seconds"`
	// ConfirmTrail is the median of the runs' confirmed/applied - 1: how
	// much later than the last effect in Redis the slot confirmed it.
	ConfirmTrail       float64 `json:"confirm_trail"`
	TargetConfirmTrail float64 `json:"target_confirm_trail"`
	// Reference is the workload compared with (the delete rule of the
	// same shape); VsReference is EngineSeconds / its EngineSeconds (0 for
	// the reference itself); for "verifier off" it is the reference's time
	// over this one, i.e. the verifier's overhead.
	Reference         string  `json:"reference,omitempty"`
	VsReference       float64 `json:"vs_reference,omitempty"`
	TargetVsReference float64 `json:"target_vs_reference,omitempty"`
	MetVsReference    *bool   `json:"target_vs_reference_met,omitempty"`
}

// CatchUpRunApplied is "done" as Redis shows it, the checks of the run,
// and the verifier's figures.
type CatchUpRunApplied struct {
	// EngineAppliedSeconds: from the engine's start until the last change
	// of the Redis state the workload's last changes alter (polled every
	// 10 ms; a publish variant: the last message received); -1 unknown.
	EngineAppliedSeconds float64 `json:"engine_applied_seconds"`
	// Problems are failed checks of what the engine did in Redis.
	Problems []string `json:"problems,omitempty"`
	// Verify are the online verifier's figures (--verify-rate), read 1.5 s
	// after the end was confirmed.
	Verify *VerifyFigures `json:"verify,omitempty"`
}

// VerifyFigures are the verifier's totals from the engine's metrics.
type VerifyFigures struct {
	Absent, Newer, Stale, Unverifiable, Dropped int64
}

// Checks is the number of finished checks.
func (f VerifyFigures) Checks() int64 { return f.Absent + f.Newer + f.Stale + f.Unverifiable }

// compareVariants fills the comparisons of every catch-up with the
// reference of its shape, the applied times and the trails, and turns
// stale verifier checks into problems of their runs.
func compareVariants(cs []CatchUp) {
	refs := map[string]*CatchUp{}
	for i := range cs {
		c := &cs[i]
		summariseApplied(c)
		if c.Variant.Name == "" && refs[c.Shape] == nil {
			refs[c.Shape] = c
		}
	}
	for i := range cs {
		c := &cs[i]
		ref := refs[c.Shape]
		if ref == nil || ref == c || c.Variant.Name == "" {
			continue
		}
		c.Reference = ref.Workload
		switch v := c.Variant; {
		case v.VerifyRate == 0 && ref.Variant.VerifyRate > 0 && v.Action == ActionDelete && v.Fanout == 1 && v.Tables == 1 && v.Rules == 1:
			c.VsReference, c.TargetVsReference = ratio(ref.EngineSeconds, c.EngineSeconds), TargetVerifierOverhead
		case v.Action != ActionDelete:
			c.VsReference, c.TargetVsReference = ratio(c.EngineSeconds, ref.EngineSeconds), TargetActionRatio
		case v.Fanout > 1:
			c.VsReference = ratio(c.EngineSeconds, ref.EngineSeconds)
			if v.Fanout == TargetFanoutKeys {
				c.TargetVsReference = TargetFanoutRatio
			}
		default:
			c.VsReference, c.TargetVsReference = ratio(c.EngineSeconds, ref.EngineSeconds), TargetRulesRatio
		}
		if c.TargetVsReference > 0 && c.VsReference > 0 {
			met := c.VsReference <= c.TargetVsReference
			c.MetVsReference = &met
		}
	}
}

// summariseApplied fills the medians of the applied times and trails.
func summariseApplied(c *CatchUp) {
	c.EngineAppliedSeconds, c.ConfirmTrail, c.TargetConfirmTrail = -1, -1, TargetConfirmTrail
	var applied, trails []float64
	for _, r := range c.Runs {
		if r.EngineAppliedSeconds > 0 {
			applied = append(applied, r.EngineAppliedSeconds)
			trails = append(trails, r.EngineSeconds/r.EngineAppliedSeconds-1)
		}
	}
	if len(applied) > 0 && len(applied) == len(c.Runs) {
		c.EngineAppliedSeconds, c.ConfirmTrail = median(applied), median(trails)
	}
}

// writeVariants writes the comparisons with the delete rule, "done" two
// ways, and the verifier's figures.
func (r *Report) writeVariants(b *strings.Builder) error {
	var compared, applied, verified bool
	for _, c := range r.CatchUp {
		compared = compared || c.Reference != ""
		applied = applied || c.EngineAppliedSeconds > 0
		for _, run := range c.Runs {
			verified = verified || run.Verify != nil
		}
	}
	if compared {
		fmt.Fprintln(b, "\nAgainst the delete rule of the same shape, same run (engine times; verifier off: the time with it over the time without):")
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tengine\treference\tengine\tratio\ttarget\tvs pg_recvlogical\t")
		for _, c := range r.CatchUp {
			if c.Reference == "" {
				continue
			}
			var ref CatchUp
			for _, x := range r.CatchUp {
				if x.Workload == c.Reference {
					ref = x
				}
			}
			target := "-"
			if c.TargetVsReference > 0 {
				target = verdict(fmt.Sprintf("<= %.2fx", c.TargetVsReference), c.MetVsReference)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.2fx\t%s\t%.2fx\t\n", c.Workload, seconds(c.EngineSeconds), ref.Workload, seconds(ref.EngineSeconds),
				c.VsReference, target, c.Ratio)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if applied {
		fmt.Fprintln(b, "\nDone two ways (medians): applied = the last change's effect seen in Redis (polled every 10 ms), "+
			"confirmed = the slot's confirmed_flush_lsn >= end; trail = confirmed/applied - 1:")
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tapplied\tconfirmed\ttrail\ttarget\t")
		for _, c := range r.CatchUp {
			trail, target := "-", fmt.Sprintf("<= %.0f%%", 100*c.TargetConfirmTrail)
			if c.EngineAppliedSeconds > 0 {
				trail = fmt.Sprintf("%.1f%%", 100*c.ConfirmTrail)
				met := c.ConfirmTrail <= c.TargetConfirmTrail
				target = verdict(target, &met)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t\n", c.Workload, cpu(c.EngineAppliedSeconds), seconds(c.EngineSeconds), trail, target)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if verified {
		fmt.Fprintf(b, "\nOnline verifier (checks finished %s after each run's end; stale ones are problems):\n", verifySettle)
		tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\trun\tchecks\tabsent\tnewer\tstale\tunverifiable\tdropped\t")
		for _, c := range r.CatchUp {
			for i, run := range c.Runs {
				if f := run.Verify; f != nil {
					fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", c.Workload, i+1, count(f.Checks()), count(f.Absent), count(f.Newer),
						count(f.Stale), count(f.Unverifiable), count(f.Dropped))
				}
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// verifierFigures waits verifySettle and reads the verifier's totals from
// the engine's /metrics at addr; nil if they cannot be read.
func (b *bench) verifierFigures(ctx context.Context, addr string) *VerifyFigures {
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(verifySettle):
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.warn("read the verifier's figures from %s: %v", addr, err)
		return nil
	}
	defer resp.Body.Close()
	f := parseVerifyMetrics(bufio.NewScanner(resp.Body))
	return &f
}

// parseVerifyMetrics sums cdcinvalidate_verify_checks_total by result
// (over windows, tables and rules) and the dropped samples.
func parseVerifyMetrics(sc *bufio.Scanner) VerifyFigures {
	var f VerifyFigures
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		n := int64(v)
		switch {
		case strings.HasPrefix(name, "cdcinvalidate_verify_samples_dropped_total"):
			f.Dropped += n
		case strings.HasPrefix(name, "cdcinvalidate_verify_checks_total{"):
			switch {
			case strings.Contains(name, `result="absent"`):
				f.Absent += n
			case strings.Contains(name, `result="newer"`):
				f.Newer += n
			case strings.Contains(name, `result="stale"`):
				f.Stale += n
			case strings.Contains(name, `result="unverifiable"`):
				f.Unverifiable += n
			}
		}
	}
	return f
}
