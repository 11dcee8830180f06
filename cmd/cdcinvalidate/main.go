// Command cdcinvalidate keeps Redis caches consistent with PostgreSQL by
// reading the database's logical replication stream and invalidating the
// cache keys that rules.yaml derives from each row change.
//
//	cdcinvalidate run --config FILE
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/cdcinvalidate/cdcinvalidate/bench"
	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/engine"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

const usage = `cdcinvalidate keeps Redis caches consistent with PostgreSQL through logical replication.

Usage:
  cdcinvalidate run --config FILE [--log-level LEVEL] [--log-format json|console]
  cdcinvalidate status --config FILE
  cdcinvalidate check --config FILE    (check rules, database, slot and Redis; changes nothing)
  cdcinvalidate explain --config FILE --table T [--op OP] [--old JSON] [--new JSON]
                                       (the keys the rules produce for one change)
  cdcinvalidate verify --config FILE [--sample N] [--table T] [--settle D]
                                       (audit: are cached values consistent with their rows?
                                        exit 0 none stale, 1 stale found (each on a line
                                        "STALE key"), 2 could not run; changes nothing)
  cdcinvalidate bench [FLAGS]          (measure the engine; cdcinvalidate bench --help)
  cdcinvalidate version

Environment variables override the file: CDC_POSTGRES_DSN, CDC_REDIS_ADDR,
CDC_REDIS_PASSWORD and every other CDC_<SECTION>_<OPTION> (see docs/configuration.md).
`

var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return runEngine(args[1:], stderr)
	case "status":
		return runStatus(args[1:], stdout, stderr)
	case "check":
		return runCheck(args[1:], stdout, stderr)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "verify":
		return runVerify(args[1:], stdout, stderr)
	case "bench":
		return runBench(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "cdcinvalidate", version)
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
	return 2
}

func runEngine(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "configuration file (YAML)")
	level := fs.String("log-level", "", "log level: debug, info, warn, error (overrides log.level)")
	format := fs.String("log-format", "", "log format: json or console (overrides log.format)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "cdcinvalidate run: --config FILE is required")
		return 2
	}
	env := func(name string) (string, bool) {
		switch {
		case name == "CDC_LOG_LEVEL" && *level != "":
			return *level, true
		case name == "CDC_LOG_FORMAT" && *format != "":
			return *format, true
		}
		return os.LookupEnv(name)
	}
	cfg, err := config.Load(*file, env)
	if err != nil {
		fmt.Fprintln(stderr, config.Redact(err.Error()))
		return 2
	}
	log, err := newLogger(cfg.Log, stderr)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	setMemoryLimit(cfg, log)

	// SIGHUP reloads the rules; registered before anything else, so an
	// early one does not kill the process (its default action).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	eng, err := engine.New(cfg, *file, log)
	if err != nil {
		log.Error("invalid rules", zap.String("error", config.Redact(err.Error())))
		return 2
	}
	go reloadOnHUP(ctx, hup, eng, *file, env, log)
	if err := eng.Run(ctx); err != nil {
		var setup *engine.SetupError
		if errors.As(err, &setup) {
			log.Error("cannot start", zap.Strings("problems", config.RedactAll(setup.Problems)))
			fmt.Fprintln(stderr, config.Redact(setup.Error()))
			return 2
		}
		log.Error("stopped on an error; the slot keeps every change not yet applied, so a restart loses nothing", zap.String("error", config.Redact(err.Error())))
		return 1
	}
	return 0
}

// reloadOnHUP reloads the rules from file on every SIGHUP (several while
// one runs make one more), with the same environment overrides as at
// start. A file that does not load keeps the running rules; Reload logs
// its own outcome.
func reloadOnHUP(ctx context.Context, hup <-chan os.Signal, eng *engine.Engine, file string, env func(string) (string, bool), log *zap.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		log.Info("SIGHUP: reloading the rules", zap.String("config", file))
		cfg, err := config.Load(file, env)
		if err != nil {
			eng.RejectReload(err)
			continue
		}
		_ = eng.Reload(ctx, cfg)
	}
}

func newLogger(c config.Log, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(string(c.Level))
	if err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if c.Format == config.LogConsole {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	core := zapcore.NewCore(enc, zapcore.AddSync(w), lvl)
	return zap.New(core), nil
}

// loadForCommand parses a command's only flag, --config, and loads the
// configuration. On failure it has said why and returns nil and the exit
// status.
func loadForCommand(name string, args []string, stderr io.Writer) (*config.Config, string, int) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return nil, "", 2
	}
	if *file == "" {
		fmt.Fprintf(stderr, "cdcinvalidate %s: --config FILE is required\n", name)
		return nil, "", 2
	}
	cfg, err := config.Load(*file, nil)
	if err != nil {
		fmt.Fprintln(stderr, config.Redact(err.Error()))
		return nil, "", 2
	}
	return cfg, *file, 0
}

// runStatus prints the slot, the publication and the applied watermark.
func runStatus(args []string, stdout, stderr io.Writer) int {
	cfg, _, code := loadForCommand("status", args, stderr)
	if cfg == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := engine.ReadStatus(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate status:", config.Redact(err.Error()))
		return 1
	}
	st.Print(stdout)
	return 0
}

// runBench measures the engine against pg_recvlogical (see bench/doc.go).
func runBench(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var opts bench.Options
	opts.RegisterFlags(fs)
	fs.Usage = func() {} // a bad flag gets its error and a pointer to --help
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, bench.Usage)
			fs.SetOutput(stdout)
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintln(stderr, "see cdcinvalidate bench --help")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdcinvalidate bench: unexpected argument %q (see cdcinvalidate bench --help)\n", fs.Arg(0))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return bench.Command(ctx, opts, stdout, stderr)
}

// runCheck checks the rules, the database, the slot and Redis without
// changing anything; exit status 1 when any finding is an ERROR.
func runCheck(args []string, stdout, stderr io.Writer) int {
	cfg, file, code := loadForCommand("check", args, stderr)
	if cfg == nil {
		return code
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	rep, err := engine.Check(ctx, cfg, file)
	rep.Print(stdout)
	if err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate check:", config.Redact(err.Error()))
		return 1
	}
	if rep.Failed() {
		return 1
	}
	return 0
}

// runVerify audits a sample of rows against their cached values. Exit
// status 0 when no stale value was found, 1 when one was (each printed on a
// line "STALE key"), 2 when the audit could not run.
func runVerify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "configuration file (YAML)")
	var opts engine.VerifyOptions
	fs.IntVar(&opts.Sample, "sample", engine.DefaultVerifySample, "rows read per rule table")
	fs.StringVar(&opts.Table, "table", "", "audit only the rules of this table (table or schema.table)")
	fs.DurationVar(&opts.Settle, "settle", engine.DefaultVerifySettle, "time a differing value gets to catch up before it counts as stale")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "cdcinvalidate verify: --config FILE is required")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdcinvalidate verify: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := config.Load(*file, nil)
	if err != nil {
		fmt.Fprintln(stderr, config.Redact(err.Error()))
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rep, err := engine.Verify(ctx, cfg, *file, opts)
	if err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate verify:", config.Redact(err.Error()))
		return 2
	}
	rep.Print(stdout)
	if rep.Failed() {
		return 1
	}
	return 0
}

// runExplain prints the keys the rules produce for one change, without
// connecting to anything. Exit status 2 on bad input, 1 when the engine
// would stop on the change (a when condition fails to evaluate).
func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "configuration file (YAML)")
	table := fs.String("table", "", "table of the change: table or schema.table")
	op := fs.String("op", "", "insert, update, delete or truncate (default: insert with --new, delete with --old, update with both)")
	oldRow := fs.String("old", "", `old row as a JSON object, e.g. '{"id":1,"email":"a@x"}'; absent columns are unknown`)
	newRow := fs.String("new", "", "new row as a JSON object; on update, absent columns are unchanged")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" || *table == "" {
		fmt.Fprintln(stderr, "cdcinvalidate explain: --config FILE and --table T are required")
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cdcinvalidate explain: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := config.Load(*file, nil)
	if err != nil {
		fmt.Fprintln(stderr, config.Redact(err.Error()))
		return 2
	}
	m, err := mapping.New(cfg.MappingRules(*file))
	if err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate explain:", err)
		return 2
	}
	ch, err := m.ChangeFromJSON(*table, *op, *oldRow, *newRow)
	if err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate explain:", err)
		return 2
	}
	var ex *mapping.Explanation
	if *op == "truncate" {
		ex = m.ExplainTruncate(ch.Rel)
	} else if ex, err = m.Explain(ch); err != nil {
		fmt.Fprintln(stderr, "cdcinvalidate explain:", err)
		return 2
	}
	ex.Print(stdout)
	if ex.Failed {
		return 1
	}
	return 0
}

// setMemoryLimit gives the garbage collector a soft limit of the streamed
// transaction buffer plus 32 MiB, unless GOMEMLIMIT says otherwise: with
// the default GOGC alone a full 64 MB key buffer let the heap grow to about
// twice that before a collection (bench --phases memory: peak RSS 148 MB
// without the limit, 115 MB with it).
func setMemoryLimit(cfg *config.Config, log *zap.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit := cfg.SoftMemoryLimit()
	debug.SetMemoryLimit(limit)
	log.Debug("soft memory limit", zap.Int64("bytes", limit))
}
