package bench

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Options configure a bench run. The zero value is not valid: use
// DefaultOptions, or RegisterFlags and then the parsed flags.
type Options struct {
	// PostgresDSN and RedisAddr name existing servers. Empty: the bench
	// starts throwaway ones (internal/harness). Both or neither.
	PostgresDSN string
	RedisAddr   string
	// RedisDB is the Redis database the bench and the engine use.
	RedisDB int

	// Rows is the number of row changes of each catch-up workload, and the
	// size of the bench table.
	Rows int
	// Batch is the rows per transaction of the batched catch-up workload.
	Batch int
	// Repeat is how often each catch-up measurement runs; the median is quoted.
	Repeat int
	// Rates are the commit rates of the latency measurement.
	Rates Rates
	// Duration is how long the writer runs at each rate.
	Duration time.Duration
	// MaxConns is the number of writer connections for the rate "max".
	MaxConns int
	// BigRows is the size of the one transaction of the memory measurement.
	BigRows int
	// Wide makes the memory measurement's rows 100 columns wide, four of
	// them TOASTed text, refreshed by the rule (memory phase only).
	Wide bool
	// Phases selects the measurements: "catchup", "latency", "memory".
	Phases []string
	// LatencyControl runs the latency writes again with pg_recvlogical as
	// the only consumer and reports its walsender's delay.
	LatencyControl bool

	// Engine is the cdcinvalidate binary to run (default: this executable).
	Engine string
	// PgRecvLogical is pg_recvlogical (default: next to the throwaway
	// server's binaries, on PATH, or in /usr/lib/postgresql/*/bin).
	PgRecvLogical string
	// ProfileDir, when set, receives pprof profiles of the engine: CPU per
	// catch-up workload, taken in one extra run after the measured ones,
	// CPU per latency rate, taken during its writes, and the heap
	// (allocations) after the memory phase's transaction.
	ProfileDir string

	// Redis topology, distance and instances (topology.go, instances.go).
	// RedisTopology is standalone (also ""), cluster or sentinel; with
	// given servers RedisAddr then lists the seed nodes or the sentinels,
	// comma-separated, and RedisMasterName names the Sentinel master.
	RedisTopology   string
	RedisMasterName string
	// RedisRTT is the round trip the delay proxy adds between the engine
	// and Redis (standalone only).
	RedisRTT time.Duration
	// WaitReplicas is the engine's redis.wait_replicas.
	WaitReplicas int
	// Instances >= 2: the catch-up phase measures that many engines, each
	// on its own table, publication and slot.
	Instances int

	// JSON prints the report as JSON instead of the table.
	JSON bool
	// Progress forces the progress display on stderr; by default it is
	// shown only when stderr is a terminal.
	Progress bool

	// WorkloadOptions choose the catch-up variants (workload_options.go).
	WorkloadOptions
}

// Phase names.
const (
	PhaseCatchUp = "catchup"
	PhaseLatency = "latency"
	PhaseMemory  = "memory"
)

var allPhases = []string{PhaseCatchUp, PhaseLatency, PhaseMemory}

// DefaultOptions are the defaults of the flags.
func DefaultOptions() Options {
	rates, _ := ParseRates("500,2000,max")
	return Options{
		Rows:     200_000,
		Batch:    1000,
		Repeat:   3,
		Rates:    rates,
		Duration: 10 * time.Second,
		MaxConns: 2,
		BigRows:  2_000_000,
		Phases:   allPhases,

		LatencyControl: true,

		WorkloadOptions: defaultWorkloadOptions(),

		RedisTopology: TopologyStandalone,
		Instances:     1,
	}
}

// Usage introduces the flags in --help.
const Usage = `Usage: cdcinvalidate bench [flags]

Measures the engine against the ceiling of logical replication, the
walsender (pg_recvlogical reading the same WAL into /dev/null):

  catch-up   --rows row changes (batched --batch rows a transaction, and
             single-row transactions) read from a slot by the engine, until
             it confirmed the end, and by pg_recvlogical; median of --repeat
             runs, changes/s, the ratio, and engine CPU per 100,000 changes
  latency    single-row UPDATEs in autocommit at each of --rates for
             --duration; the time from the commit (Exec returned) to the
             key's deletion seen in Redis (keyspace notifications)
  memory     the engine's peak RSS (VmHWM) through one transaction of
             --big-rows rows

Without --postgres-dsn and --redis-addr it starts a throwaway PostgreSQL
and Redis on free loopback ports (as the tests do). With them it uses the
table cdcbench_items, the publication cdcbench_pub, the slots cdcbench_*
and the Redis keys item:N of --redis-db, and drops them at the end. The
role needs LOGIN REPLICATION and CREATE on the database; the bench changes
Redis's notify-keyspace-events during the latency phase and restores it.

The engine runs as a child process: this executable with run --config.
Exit status: 0 when every measurement completed (targets missed or not),
1 when a measurement failed or an invalidation was lost, 2 on bad flags or
a missing pg_recvlogical.

Flags:
`

// RegisterFlags defines the bench's flags on fs, with the defaults of
// DefaultOptions, storing into o.
func (o *Options) RegisterFlags(fs *flag.FlagSet) {
	*o = DefaultOptions()
	fs.StringVar(&o.PostgresDSN, "postgres-dsn", "", "use this PostgreSQL (wal_level=logical) instead of a throwaway one; needs --redis-addr")
	fs.StringVar(&o.RedisAddr, "redis-addr", "", "use this Redis (host:port) instead of a throwaway one; needs --postgres-dsn; CDC_REDIS_USERNAME and CDC_REDIS_PASSWORD are used if set")
	fs.IntVar(&o.RedisDB, "redis-db", o.RedisDB, "Redis database `number`")
	fs.IntVar(&o.Rows, "rows", o.Rows, "row changes of each catch-up workload (also the bench table's size)")
	fs.IntVar(&o.Batch, "batch", o.Batch, "rows per transaction of the batched catch-up workload")
	fs.IntVar(&o.Repeat, "repeat", o.Repeat, "runs of each catch-up measurement; the median is quoted")
	fs.Var(&o.Rates, "rates", "commit `rates` of the latency measurement, per second, comma-separated; max = as fast as --max-conns connections go")
	fs.DurationVar(&o.Duration, "duration", o.Duration, "how long the writer runs at each rate")
	fs.IntVar(&o.MaxConns, "max-conns", o.MaxConns, "writer connections for the rate max")
	fs.IntVar(&o.BigRows, "big-rows", o.BigRows, "rows of the one transaction of the memory measurement")
	fs.BoolVar(&o.Wide, "wide", false, "memory phase only: rows of 100 columns (four of them 3.2 KB text, TOASTed) that the rule refreshes (SET of the row as JSON) instead of deleting; pg_recvlogical then reads the same WAL, for the walsender's time")
	fs.Var((*phaseList)(&o.Phases), "phases", "`phases` to run, comma-separated: catchup, latency, memory")
	fs.BoolVar(&o.LatencyControl, "latency-control", o.LatencyControl, "after the engine's latency run, run the same writes with pg_recvlogical as the only consumer and report its walsender's delay beside the engine's")
	fs.StringVar(&o.Engine, "engine", "", "cdcinvalidate `binary` to measure (default: this executable)")
	fs.StringVar(&o.PgRecvLogical, "pg-recvlogical", "", "pg_recvlogical `binary` (default: next to the PostgreSQL server binaries, on PATH, or in /usr/lib/postgresql/*/bin)")
	fs.StringVar(&o.ProfileDir, "profile", "", "write pprof profiles of the engine into `dir`: CPU per catch-up "+
		"workload (from one extra run) and per latency rate, and for the memory phase CPU over the 20 s after its commit and the heap after its transaction "+
		"(go tool pprof BINARY FILE); the engine then also serves metrics")
	o.registerTopologyFlags(fs)
	fs.BoolVar(&o.JSON, "json", false, "print the report as JSON on stdout instead of the table")
	fs.BoolVar(&o.Progress, "progress", false, "show progress on stderr even when it is not a terminal")
	o.registerWorkloadFlags(fs)
}

// Validate checks the options and returns every problem.
func (o *Options) Validate() error {
	var errs []error
	if (o.PostgresDSN == "") != (o.RedisAddr == "") {
		errs = append(errs, errors.New("--postgres-dsn and --redis-addr go together: give both to use existing servers, or neither for throwaway ones"))
	}
	if o.RedisDB < 0 {
		errs = append(errs, fmt.Errorf("--redis-db %d: must be 0 or more", o.RedisDB))
	}
	if o.Rows < 1 {
		errs = append(errs, fmt.Errorf("--rows %d: must be at least 1", o.Rows))
	}
	if o.Batch < 1 {
		errs = append(errs, fmt.Errorf("--batch %d: must be at least 1", o.Batch))
	}
	if o.Repeat < 1 {
		errs = append(errs, fmt.Errorf("--repeat %d: must be at least 1", o.Repeat))
	}
	if o.has(PhaseLatency) && len(o.Rates) == 0 {
		errs = append(errs, errors.New("--rates: give at least one rate"))
	}
	if o.Duration <= 0 {
		errs = append(errs, fmt.Errorf("--duration %s: must be positive", o.Duration))
	}
	if o.MaxConns < 1 {
		errs = append(errs, fmt.Errorf("--max-conns %d: must be at least 1", o.MaxConns))
	}
	if o.Wide && (len(o.Phases) != 1 || o.Phases[0] != PhaseMemory) {
		errs = append(errs, fmt.Errorf("--wide: only with --phases memory (the other phases measure deletes)"))
	}
	if o.BigRows < 1 {
		errs = append(errs, fmt.Errorf("--big-rows %d: must be at least 1", o.BigRows))
	}
	if len(o.Phases) == 0 {
		errs = append(errs, errors.New("--phases: give at least one of catchup, latency, memory"))
	}
	errs = append(errs, o.validateWorkload()...)
	errs = append(errs, o.validateTopology()...)
	if o.Engine != "" {
		if _, err := exec.LookPath(o.Engine); err != nil {
			errs = append(errs, fmt.Errorf("--engine: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (o *Options) has(phase string) bool {
	for _, p := range o.Phases {
		if p == phase {
			return true
		}
	}
	return false
}

// Rate is a target commit rate; Max means as fast as the writer goes.
type Rate struct {
	PerSecond float64
	Max       bool
}

func (r Rate) String() string {
	if r.Max {
		return "max"
	}
	return strconv.FormatFloat(r.PerSecond, 'f', -1, 64)
}

// Rates is a comma-separated list of rates (a flag.Value).
type Rates []Rate

func (rs *Rates) String() string {
	if rs == nil {
		return ""
	}
	parts := make([]string, len(*rs))
	for i, r := range *rs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// Set parses a comma-separated list of rates.
func (rs *Rates) Set(s string) error {
	v, err := ParseRates(s)
	if err != nil {
		return err
	}
	*rs = v
	return nil
}

// ParseRates parses "500,2000,max": positive numbers of commits per
// second, and max.
func ParseRates(s string) (Rates, error) {
	var out Rates
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if strings.EqualFold(part, "max") {
			out = append(out, Rate{Max: true})
			continue
		}
		if part == "" {
			return nil, fmt.Errorf("rates %q: empty entry (want numbers of commits per second or max, e.g. 500,2000,max)", s)
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(part, "/s"), 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || v <= 0 {
			return nil, fmt.Errorf("rates %q: %q is not a positive number of commits per second or max", s, part)
		}
		out = append(out, Rate{PerSecond: v})
	}
	return out, nil
}

// phaseList is the --phases flag.
type phaseList []string

func (p *phaseList) String() string {
	if p == nil {
		return ""
	}
	return strings.Join(*p, ",")
}

func (p *phaseList) Set(s string) error {
	var out []string
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.ToLower(strings.TrimSpace(part))
		ok := false
		for _, known := range allPhases {
			ok = ok || part == known
		}
		if !ok {
			return fmt.Errorf("unknown phase %q (want catchup, latency, memory)", part)
		}
		if !seen[part] {
			seen[part] = true
			out = append(out, part)
		}
	}
	*p = out
	return nil
}
