package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets the figures are compared against.
const (
	// TargetCatchUpRatio: the engine's catch-up time at most this many
	// times pg_recvlogical's, for transactions of many rows (issue 15's
	// goal); TargetCatchUpRatioSingle for single-row transactions.
	TargetCatchUpRatio       = 0.9
	TargetCatchUpRatioSingle = 0.6
	// TargetP99 at TargetP99Rate commits per second, on loopback (plus
	// the delay of --redis-rtt when set).
	TargetP99     = 1 * time.Millisecond
	TargetP99Rate = 2000
	// TargetRSSBytes: the engine's peak RSS through one transaction of
	// TargetRSSRows rows (MB = 10^6 bytes).
	TargetRSSBytes = 100_000_000
	TargetRSSRows  = 2_000_000
	// lostAfter: a write whose key was not seen deleted this long after its
	// commit counts as lost.
	lostAfter = 5 * time.Second
)

// Report is the result of a bench run. Times are in seconds unless the
// name says otherwise; JSON uses the same names.
type Report struct {
	Started     time.Time   `json:"started"`
	Environment Environment `json:"environment"`
	Settings    Settings    `json:"settings"`
	CatchUp     []CatchUp   `json:"catch_up,omitempty"`
	Latency     []Latency   `json:"latency,omitempty"`
	Memory      *Memory     `json:"memory,omitempty"`
	// InstancesCatchUp is the --instances measurement (instances.go).
	InstancesCatchUp []InstancesCatchUp `json:"instances_catch_up,omitempty"`
	// Problems are failed checks (lost invalidations, keys left behind);
	// a report with problems makes the command exit 1.
	Problems []string `json:"problems,omitempty"`
}

// Environment says what was measured, where.
type Environment struct {
	EngineBinary  string `json:"engine_binary"`
	GoVersion     string `json:"go_version"`
	Platform      string `json:"platform"`
	CPUs          int    `json:"cpus"`
	Postgres      string `json:"postgres"`       // version
	Redis         string `json:"redis"`          // version
	Throwaway     bool   `json:"throwaway"`      // servers started by the bench
	PgRecvLogical string `json:"pg_recvlogical"` // the binary
	// PluginOptions are the pgoutput options both consumers used.
	PluginOptions []string `json:"plugin_options"`
	// LoadAverage is the machine's 1-minute load average (/proc/loadavg)
	// at the start and at the end: other work on the machine competes with
	// the servers, the engine and pg_recvlogical for the same CPUs.
	LoadAverage [2]float64 `json:"load_average"`
}

// Settings are the options of the run.
type Settings struct {
	Rows            int      `json:"rows"`
	Batch           int      `json:"batch"`
	Repeat          int      `json:"repeat"`
	Rates           []string `json:"rates"`
	DurationSeconds float64  `json:"duration_seconds"`
	MaxConns        int      `json:"max_conns"`
	Instances       int      `json:"instances,omitempty"`
	BigRows         int      `json:"big_rows"`
	// Variants are the catch-up variants' options (workload_options.go).
	Variants VariantSettings `json:"variants"`
	// Redis is the topology, the added round trip and wait_replicas.
	Redis RedisSettings `json:"redis"`
}

// CatchUp is the catch-up measurement of one workload.
type CatchUp struct {
	Workload     string `json:"workload"` // "batched" or "single"
	Description  string `json:"description"`
	Changes      int    `json:"changes"`
	Transactions int    `json:"transactions"`
	WALBytes     uint64 `json:"wal_bytes"` // of the last run
	// Medians over the runs.
	EngineSeconds float64 `json:"engine_seconds"`
	RecvSeconds   float64 `json:"pg_recvlogical_seconds"`
	EngineRate    float64 `json:"engine_changes_per_second"`
	RecvRate      float64 `json:"pg_recvlogical_changes_per_second"`
	// Ratio is the median of the runs' engine/pg_recvlogical time ratios.
	Ratio            float64 `json:"ratio"`
	EngineCPUPer100k float64 `json:"engine_cpu_seconds_per_100k_changes"`
	// CPU is the CPU time per 100,000 changes of every process on each
	// path (medians of the runs; -1 unknown).
	CPU         CPUPer100k   `json:"cpu_seconds_per_100k_changes"`
	TargetRatio float64      `json:"target_ratio"`
	CPUProfile  string       `json:"cpu_profile,omitempty"` // engine CPU profile of an extra run
	Met         bool         `json:"target_met"`
	Runs        []CatchUpRun `json:"runs"`

	// The variant and its comparison with the reference (report_variants.go).
	CatchUpVariant
}

// CPUPer100k is CPU seconds per 100,000 changes on the two paths: the
// walsender, the engine and Redis; the walsender and pg_recvlogical.
type CPUPer100k struct {
	EngineWalsender float64 `json:"engine_walsender"`
	Engine          float64 `json:"engine"`
	Redis           float64 `json:"redis"`
	RecvWalsender   float64 `json:"pg_recvlogical_walsender"`
	Recv            float64 `json:"pg_recvlogical"`
}

// EngineTotal and RecvTotal sum a path, -1 when a part is unknown.
func (c CPUPer100k) EngineTotal() float64 { return sumKnown(c.EngineWalsender, c.Engine, c.Redis) }
func (c CPUPer100k) RecvTotal() float64   { return sumKnown(c.RecvWalsender, c.Recv) }

func sumKnown(xs ...float64) float64 {
	var t float64
	for _, x := range xs {
		if x < 0 {
			return -1
		}
		t += x
	}
	return t
}

// CatchUpRun is one run of a catch-up measurement. Startup is the time
// from the process start until the slot was active (the consumer
// connected and started streaming). Walsender CPU is the CPU time of the
// walsender serving the consumer (throwaway servers only; -1 when
// unknown).
type CatchUpRun struct {
	EngineSeconds        float64 `json:"engine_seconds"`
	EngineStartupSeconds float64 `json:"engine_startup_seconds"`
	EngineCPUSeconds     float64 `json:"engine_cpu_seconds"`
	EngineWalsenderCPU   float64 `json:"engine_walsender_cpu_seconds"`
	RecvSeconds          float64 `json:"pg_recvlogical_seconds"`
	RecvStartupSeconds   float64 `json:"pg_recvlogical_startup_seconds"`
	RecvCPUSeconds       float64 `json:"pg_recvlogical_cpu_seconds"`
	RecvWalsenderCPU     float64 `json:"pg_recvlogical_walsender_cpu_seconds"`
	Ratio                float64 `json:"ratio"`
	KeysLeft             int     `json:"keys_left"` // prefilled keys the engine did not delete
	// Flushed: the engine deleted item:0, which no row maps to: it flushed
	// the managed keys instead of (or before) deleting what changed.
	Flushed           bool  `json:"flushed,omitempty"`
	EngineMaxRSSBytes int64 `json:"engine_max_rss_bytes"`
	// Redis work during the engine run (INFO stats and cpu; -1 unknown):
	// commands processed, and Redis's own CPU time.
	RedisCommands   int64   `json:"redis_commands"`
	RedisCPUSeconds float64 `json:"redis_cpu_seconds"`

	// "Done" as seen in Redis, the checks, the verifier (report_variants.go).
	CatchUpRunApplied
}

// Latency is the latency measurement at one commit rate.
type Latency struct {
	Rate              string  `json:"rate"` // "500" or "max"
	TargetPerSecond   float64 `json:"target_per_second"`
	Conns             int     `json:"conns"`
	Writes            int     `json:"writes"`
	AchievedPerSecond float64 `json:"achieved_per_second"`
	P50Ms             float64 `json:"p50_ms"`
	P99Ms             float64 `json:"p99_ms"`
	P999Ms            float64 `json:"p999_ms"`
	MaxMs             float64 `json:"max_ms"`
	// Lost writes: their key was not seen deleted within 5 s.
	Lost int `json:"lost"`
	// TargetP99Ms is set for the rate the target is for.
	TargetP99Ms float64 `json:"target_p99_ms,omitempty"`
	Met         *bool   `json:"target_met,omitempty"`
	// RedisRTT*Ms: with --redis-rtt, the round trip through the delay
	// proxy, a PING timed every 10 ms during the writes (the proxy's delay
	// plus its hand-overs and the machine's scheduling: more than
	// --redis-rtt). TargetP99MeasuredRTTMs and MetMeasuredRTT are the
	// target over RedisRTTP50Ms instead of --redis-rtt.
	RedisRTTP50Ms          float64 `json:"redis_rtt_p50_ms,omitempty"`
	RedisRTTP99Ms          float64 `json:"redis_rtt_p99_ms,omitempty"`
	TargetP99MeasuredRTTMs float64 `json:"target_p99_measured_rtt_ms,omitempty"`
	MetMeasuredRTT         *bool   `json:"target_met_measured_rtt,omitempty"`
	// CPUProfile is the engine's CPU profile during the writes (--profile).
	CPUProfile string `json:"cpu_profile,omitempty"`
	// Walsender*Ms: how long the oldest WAL not yet sent by the engine's
	// walsender had existed, sampled every 10 ms during the writes (a lower
	// bound at 10 ms resolution): the walsender's share of the latency,
	// which no consumer can avoid.
	WalsenderP50Ms float64 `json:"walsender_delay_p50_ms"`
	WalsenderP99Ms float64 `json:"walsender_delay_p99_ms"`
	WalsenderMaxMs float64 `json:"walsender_delay_max_ms"`
	// Control*: the same writes at the same rate with pg_recvlogical as the
	// only consumer (--latency-control): its walsender's delay.
	ControlAchievedPerSecond float64 `json:"control_achieved_per_second,omitempty"`
	ControlWalsenderP50Ms    float64 `json:"control_walsender_delay_p50_ms,omitempty"`
	ControlWalsenderP99Ms    float64 `json:"control_walsender_delay_p99_ms,omitempty"`
	ControlWalsenderMaxMs    float64 `json:"control_walsender_delay_max_ms,omitempty"`
}

// Memory is the memory measurement.
type Memory struct {
	Rows     int    `json:"rows"`
	WALBytes uint64 `json:"wal_bytes"`
	// Wide: rows of 100 columns, refreshed (--wide).
	Wide bool `json:"wide,omitempty"`
	// InsertSeconds is the INSERT ... SELECT until its commit returned.
	InsertSeconds float64 `json:"insert_seconds"`
	// ConfirmedSeconds is from the commit until the engine confirmed it.
	ConfirmedSeconds float64 `json:"confirmed_after_commit_seconds"`
	BaselineRSSBytes int64   `json:"baseline_rss_bytes"` // VmHWM while streaming, before the transaction
	PeakRSSBytes     int64   `json:"peak_rss_bytes"`     // VmHWM once the engine confirmed it
	TargetRSSBytes   int64   `json:"target_rss_bytes,omitempty"`
	Met              *bool   `json:"target_met,omitempty"`
	// HeapProfile is the engine's heap profile after the transaction (--profile).
	HeapProfile string `json:"heap_profile,omitempty"`
	// EngineCPUSeconds is the engine's CPU from before the INSERT until it
	// confirmed the transaction; WalsenderCPUSeconds its walsender's whole
	// CPU time (throwaway servers only); -1 when unknown.
	EngineCPUSeconds    float64 `json:"engine_cpu_seconds"`
	WalsenderCPUSeconds float64 `json:"walsender_cpu_seconds"`
	// RedisCommands and RedisCPUSeconds: Redis's work over the same span.
	RedisCommands   int64   `json:"redis_commands"`
	RedisCPUSeconds float64 `json:"redis_cpu_seconds"`
	// RecvSeconds is pg_recvlogical reading the same WAL afterwards (--wide),
	// RecvWalsenderCPUSeconds its walsender's CPU.
	RecvSeconds             float64 `json:"recv_seconds,omitempty"`
	RecvWalsenderCPUSeconds float64 `json:"recv_walsender_cpu_seconds,omitempty"`
	// CPUProfile is the engine's CPU profile of the first seconds after the
	// commit (--profile).
	CPUProfile string `json:"cpu_profile,omitempty"`
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as text tables.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	e := r.Environment
	where := "given servers"
	if e.Throwaway {
		where = "throwaway servers on 127.0.0.1"
	}
	fmt.Fprintf(&b, "cdcinvalidate bench, %s\n", r.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "engine %s (%s, %s, %d CPUs); PostgreSQL %s, Redis %s (%s)\n", e.EngineBinary, e.GoVersion, e.Platform, e.CPUs, e.Postgres, e.Redis, where)
	if e.LoadAverage != [2]float64{} {
		fmt.Fprintf(&b, "load average (1 min) %.2f at the start, %.2f at the end, on %d CPUs\n", e.LoadAverage[0], e.LoadAverage[1], e.CPUs)
	}
	if d := r.Settings.Redis.describe(); d != "" {
		fmt.Fprintln(&b, d)
	}
	if len(e.PluginOptions) > 0 {
		fmt.Fprintf(&b, "pgoutput options of both consumers: %s\n", strings.Join(e.PluginOptions, ", "))
	}

	if len(r.CatchUp) > 0 {
		s := r.Settings
		runs := fmt.Sprintf("Median of %d run%s.", s.Repeat, plural(s.Repeat))
		for _, c := range r.CatchUp {
			if len(c.Runs) != s.Repeat {
				runs = fmt.Sprintf("Median of the runs that completed (%d requested).", s.Repeat)
			}
		}
		fmt.Fprintf(&b, "\nCatch-up: %s row changes (UPDATE) already in the slot; engine = start until its slot's "+
			"confirmed_flush_lsn >= end (deleting prefilled keys), pg_recvlogical = start until --endpos, into "+
			"/dev/null. %s\n",
			thousands(int64(s.Rows)), runs)
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tchanges\ttxns\tWAL\tengine\tchanges/s\tpg_recvlogical\tchanges/s\tratio\ttarget\tengine CPU/100k\t")
		for _, c := range r.CatchUp {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%s\t%s\t\n",
				c.Description, thousands(int64(c.Changes)), thousands(int64(c.Transactions)), megabytes(int64(c.WALBytes)),
				seconds(c.EngineSeconds), thousands(round(c.EngineRate)), seconds(c.RecvSeconds), thousands(round(c.RecvRate)),
				c.Ratio, verdict(fmt.Sprintf("<= %.2fx", c.TargetRatio), &c.Met), seconds(c.EngineCPUPer100k))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(&b, "\nCPU seconds per 100,000 changes (medians; on a machine whose cores are all busy, wall time follows the total):")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\twalsender\tengine\tredis\tengine path\twalsender\tpg_recvlogical\tpg_recvlogical path\tratio\t")
		for _, c := range r.CatchUp {
			u := c.CPU
			rt := "-"
			if u.EngineTotal() > 0 && u.RecvTotal() > 0 {
				rt = fmt.Sprintf("%.2fx", u.EngineTotal()/u.RecvTotal())
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", c.Workload, cpu(u.EngineWalsender), cpu(u.Engine), cpu(u.Redis),
				cpu(u.EngineTotal()), cpu(u.RecvWalsender), cpu(u.Recv), cpu(u.RecvTotal()), rt)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(&b, "\nruns (startup = until the slot was active; CPU = user+system time of the process; walsender = CPU of the walsender serving it; redis = during the engine run):")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\trun\tengine\tstartup\tCPU\twalsender\tmax RSS\tredis cmds\tredis CPU\tpg_recvlogical\tstartup\tCPU\twalsender\tratio\tkeys left\t")
		for _, c := range r.CatchUp {
			for i, run := range c.Runs {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2fx\t%d\t\n",
					c.Workload, i+1, seconds(run.EngineSeconds), seconds(run.EngineStartupSeconds), seconds(run.EngineCPUSeconds),
					cpu(run.EngineWalsenderCPU), megabytes(run.EngineMaxRSSBytes), count(run.RedisCommands), cpu(run.RedisCPUSeconds),
					seconds(run.RecvSeconds), seconds(run.RecvStartupSeconds), cpu(run.RecvCPUSeconds), cpu(run.RecvWalsenderCPU), run.Ratio, run.KeysLeft)
			}
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if err := writeInstances(&b, r); err != nil {
		return err
	}

	if len(r.Latency) > 0 {
		fmt.Fprintf(&b, "\nCommit-to-invalidation latency: single-row UPDATEs in autocommit, %s per rate; from Exec returning to the key's del event in Redis.\n",
			time.Duration(r.Settings.DurationSeconds*float64(time.Second)))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "rate\tconns\twrites\tachieved/s\tp50\tp99\tp99.9\tmax\tlost\ttarget\t")
		for _, l := range r.Latency {
			target := ""
			if l.Met != nil {
				target = verdict(fmt.Sprintf("p99 <= %s ms", trimFloat(l.TargetP99Ms)), l.Met)
			}
			rateName := l.Rate
			if rateName != "max" {
				rateName += "/s"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t\n",
				rateName, l.Conns, thousands(int64(l.Writes)), thousands(round(l.AchievedPerSecond)),
				millis(l.P50Ms), millis(l.P99Ms), millis(l.P999Ms), millis(l.MaxMs), l.Lost, target)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, l := range r.Latency {
			if l.RedisRTTP50Ms == 0 {
				continue
			}
			line := fmt.Sprintf("Redis round trip through the delay proxy at %s/s (a PING every %d ms): p50 %s, p99 %s", l.Rate, proxyProbeEvery.Milliseconds(), millis(l.RedisRTTP50Ms), millis(l.RedisRTTP99Ms))
			if l.MetMeasuredRTT != nil {
				line += "; target over it: " + verdict(fmt.Sprintf("p99 <= %.2f ms", l.TargetP99MeasuredRTTMs), l.MetMeasuredRTT)
			}
			fmt.Fprintln(&b, line+".")
		}
		fmt.Fprintf(&b, "\nWalsender delay at the same rates (age of the oldest WAL not yet sent, sampled every 10 ms): with the engine, and with pg_recvlogical as the only consumer.\n")
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "rate	engine p50	p99	max	pg_recvlogical p50	p99	max	")
		for _, l := range r.Latency {
			rateName := l.Rate
			if rateName != "max" {
				rateName += "/s"
			}
			ctl := []string{"-", "-", "-"}
			if l.ControlAchievedPerSecond > 0 {
				ctl = []string{millis(l.ControlWalsenderP50Ms), millis(l.ControlWalsenderP99Ms), millis(l.ControlWalsenderMaxMs)}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", rateName,
				millis(l.WalsenderP50Ms), millis(l.WalsenderP99Ms), millis(l.WalsenderMaxMs), ctl[0], ctl[1], ctl[2])
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	if m := r.Memory; m != nil {
		kind := "rows"
		if m.Wide {
			kind = "rows of 100 columns (four of 3.2 KB text), refreshed"
		}
		fmt.Fprintf(&b, "\nPeak memory: one INSERT ... SELECT generate_series of %s %s (%s of WAL), engine streaming.\n", thousands(int64(m.Rows)), kind, megabytes(int64(m.WALBytes)))
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "rows\tinsert\tconfirmed after commit\tRSS before\tpeak RSS (VmHWM)\ttarget\t")
		target := ""
		if m.Met != nil {
			target = verdict("<= "+megabytes(m.TargetRSSBytes), m.Met)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", thousands(int64(m.Rows)), seconds(m.InsertSeconds), seconds(m.ConfirmedSeconds),
			megabytes(m.BaselineRSSBytes), megabytes(m.PeakRSSBytes), target)
		if err := tw.Flush(); err != nil {
			return err
		}
		if m.EngineCPUSeconds > 0 {
			fmt.Fprintf(&b, "CPU: engine %s, its walsender %s, Redis %s (%s commands)",
				cpuOrUnknown(m.EngineCPUSeconds), cpuOrUnknown(m.WalsenderCPUSeconds), cpuOrUnknown(m.RedisCPUSeconds), thousands(m.RedisCommands))
			if m.RecvSeconds > 0 {
				fmt.Fprintf(&b, "; pg_recvlogical read the same WAL in %s (walsender CPU %s)", seconds(m.RecvSeconds), cpuOrUnknown(m.RecvWalsenderCPUSeconds))
			}
			b.WriteString("\n")
		}
	}

	if err := r.writeVariants(&b); err != nil {
		return err
	}

	var profiles []string
	for _, c := range r.CatchUp {
		if c.CPUProfile != "" {
			profiles = append(profiles, c.CPUProfile)
		}
	}
	for _, l := range r.Latency {
		if l.CPUProfile != "" {
			profiles = append(profiles, l.CPUProfile)
		}
	}
	if r.Memory != nil && r.Memory.CPUProfile != "" {
		profiles = append(profiles, r.Memory.CPUProfile)
	}
	if r.Memory != nil && r.Memory.HeapProfile != "" {
		profiles = append(profiles, r.Memory.HeapProfile)
	}
	if len(profiles) > 0 {
		fmt.Fprintf(&b, "\nengine profiles (go tool pprof %s FILE):\n  %s\n", r.Environment.EngineBinary, strings.Join(profiles, "\n  "))
	}

	if len(r.Problems) > 0 {
		fmt.Fprintln(&b, "\nPROBLEMS:")
		for _, p := range r.Problems {
			fmt.Fprintf(&b, "  - %s\n", p)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func verdict(target string, met *bool) string {
	switch {
	case met == nil:
		return target
	case *met:
		return target + " ok"
	default:
		return target + " MISSED"
	}
}

func round(f float64) int64 { return int64(math.Round(f)) }

// thousands formats n with commas: 1234567 -> "1,234,567".
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	if neg {
		s = s[1:]
	}
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// seconds formats seconds with a precision that suits the magnitude.
func seconds(s float64) string {
	switch {
	case s < 0:
		return "-"
	case s < 0.1:
		return fmt.Sprintf("%.3f s", s)
	case s < 100:
		return fmt.Sprintf("%.2f s", s)
	default:
		return fmt.Sprintf("%.0f s", s)
	}
}

func millis(ms float64) string {
	if ms < 10 {
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.1f ms", ms)
}

// cpu formats CPU seconds; negative means unknown.
func cpu(s float64) string {
	if s < 0 {
		return "-"
	}
	return seconds(s)
}

// megabytes formats bytes as MB (10^6 bytes); negative means unknown.
func megabytes(n int64) string {
	switch {
	case n < 0:
		return "-"
	case n < 10_000_000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	default:
		return fmt.Sprintf("%.0f MB", float64(n)/1e6)
	}
}

// count formats a count; negative means unknown.
func count(n int64) string {
	if n < 0 {
		return "-"
	}
	return thousands(n)
}

func trimFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func cpuOrUnknown(s float64) string {
	if s < 0 {
		return "unknown"
	}
	return seconds(s)
}
