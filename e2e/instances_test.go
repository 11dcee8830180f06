package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/engine"
	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// instance is one engine process of the multi-instance pattern
// (docs/operations.md, "Several instances: beyond one slot", and
// docs/topologies.md, "Several Redis targets"): its own slot, publication,
// configuration and metrics port.
type instance struct {
	t       *testing.T
	name    string // slot and publication
	cfgPath string
	metrics string // http://127.0.0.1:PORT
	bin     string
	proc    *harness.Process
}

func newInstance(t *testing.T, bin, dsn, slot string, redisAddr string, rules string) *instance {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	in := &instance{t: t, name: slot, bin: bin, metrics: fmt.Sprintf("http://127.0.0.1:%d", port)}
	text := fmt.Sprintf("postgres:\n  dsn: %q\n  slot: %s\n  publication: %s\n  status_interval: 1s\nredis:\n  addr: %q\n"+
		"metrics:\n  listen: \"127.0.0.1:%d\"\n  slot_poll_interval: 1s\nrules:\n%s", dsn, slot, slot, redisAddr, port, rules)
	in.cfgPath = filepath.Join(t.TempDir(), slot+".yaml")
	if err := os.WriteFile(in.cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return in
}

// start runs the engine and waits until it streams.
func (in *instance) start(db *pgxpool.Pool) {
	in.t.Helper()
	in.proc = harness.StartProcessT(in.t, harness.Command{Name: "engine " + in.name, Path: in.bin, Args: []string{"run", "--config", in.cfgPath}, Env: os.Environ()})
	err := harness.WaitStreaming(context.Background(), db, in.name, 60*time.Second, func() error {
		if in.proc.Running() {
			return nil
		}
		return fmt.Errorf("engine %s exited, code %d:\n%s", in.name, in.proc.ExitCode(), in.proc.Output())
	})
	if err != nil {
		in.t.Fatal(err)
	}
	harness.WaitFor(in.t, 30*time.Second, in.name+" streaming", func() bool { return strings.Contains(in.proc.Output(), `"msg":"streaming"`) })
}

func (in *instance) stop() {
	in.t.Helper()
	if code, _ := in.proc.TermT(in.t, 30*time.Second); code != 0 {
		in.t.Fatalf("engine %s: exit code %d; output:\n%s", in.name, code, in.proc.Output())
	}
}

func (in *instance) status() *engine.Status {
	in.t.Helper()
	cfg, err := config.Load(in.cfgPath, func(string) (string, bool) { return "", false })
	if err != nil {
		in.t.Fatal(err)
	}
	st, err := engine.ReadStatus(context.Background(), cfg)
	if err != nil {
		in.t.Fatal(err)
	}
	return st
}

func slotConfirmed(t *testing.T, db *pgxpool.Pool, slot string) pglogrepl.LSN {
	t.Helper()
	l, err := harness.QueryLSN(context.Background(), db, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, slot)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func keyGone(rdb *redis.Client, key string) func() bool {
	return func() bool { n, err := rdb.Exists(context.Background(), key).Result(); return err == nil && n == 0 }
}

// Beyond one slot: two engines, two publications and slots over disjoint
// tables, one Redis. Each invalidates its own tables' keys, reports its
// own status and metrics, and one stopped holds back only its own slot:
// the other keeps invalidating and confirming. A standby of one instance
// takes over that instance's slot only.
func TestInstancesSplitTables(t *testing.T) {
	t.Parallel()
	bin := harness.BuildEngine(t)
	pg := harness.PostgresT(t, harness.PostgresOptions{})
	rd := harness.RedisT(t, harness.RedisOptions{})
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	t.Cleanup(func() { rdb.Close() })
	for _, sql := range []string{
		`CREATE TABLE ta (id bigint PRIMARY KEY, v text)`, `CREATE TABLE tb (id bigint PRIMARY KEY, v text)`,
		`INSERT INTO ta SELECT g, '' FROM generate_series(1, 3) g`, `INSERT INTO tb SELECT g, '' FROM generate_series(1, 3) g`,
		`CREATE PUBLICATION inst_a FOR TABLE ta`, `CREATE PUBLICATION inst_b FOR TABLE tb`,
	} {
		if _, err := db.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	a := newInstance(t, bin, pg.DSN("postgres"), "inst_a", rd.Addr(), "  - table: ta\n    keys: [\"a:{id}\"]\n")
	b := newInstance(t, bin, pg.DSN("postgres"), "inst_b", rd.Addr(), "  - table: tb\n    keys: [\"b:{id}\"]\n")
	a.start(db)
	b.start(db)

	set := func(keys ...string) {
		t.Helper()
		for _, k := range keys {
			if err := rdb.Set(ctx, k, "cached", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	set("a:1", "b:1")
	exec(`UPDATE ta SET v = 'x' WHERE id = 1`)
	exec(`UPDATE tb SET v = 'x' WHERE id = 1`)
	exec(`UPDATE tb SET v = 'y' WHERE id = 1`)
	harness.WaitFor(t, 20*time.Second, "a:1 and b:1 invalidated by their instances", func() bool { return keyGone(rdb, "a:1")() && keyGone(rdb, "b:1")() })

	// Metrics: each process counts the changes of its own tables only.
	for _, c := range []struct {
		in          *instance
		own, others string
		updates     float64
	}{{a, "public.ta", "public.tb", 1}, {b, "public.tb", "public.ta", 2}} {
		var body string
		harness.WaitFor(t, 10*time.Second, c.in.name+" metrics", func() bool {
			_, body = httpGet(t, c.in.metrics+"/metrics")
			return strings.Contains(body, `cdcinvalidate_changes_total{op="update",table="`+c.own+`"}`)
		})
		if got := metricValue(t, body, `cdcinvalidate_changes_total{op="update",table="`+c.own+`"}`); got != c.updates {
			t.Errorf("%s: %g updates of %s in its metrics, want %g", c.in.name, got, c.own, c.updates)
		}
		if strings.Contains(body, `table="`+c.others+`"`) {
			t.Errorf("%s: its metrics count the other instance's table %s", c.in.name, c.others)
		}
	}
	// Status: each names its own slot, publication, tables and watermark.
	for _, c := range []struct {
		in    *instance
		table string
	}{{a, "public.ta"}, {b, "public.tb"}} {
		st := c.in.status()
		if st.Slot != c.in.name || !st.Active || st.Publication != c.in.name || strings.Join(st.PubTables, ",") != c.table ||
			st.WatermarkKey != "cdcinvalidate:"+c.in.name+":lsn" || st.Watermark == 0 {
			t.Errorf("%s: status slot %s active %v publication %s %v watermark %s = %s; want its own slot, publication, table %s and watermark",
				c.in.name, st.Slot, st.Active, st.Publication, st.PubTables, st.WatermarkKey, st.Watermark, c.table)
		}
	}

	// One stopped: the other keeps invalidating and confirming; only the
	// stopped one's slot stays behind (and keeps its WAL).
	a.stop()
	aBefore := slotConfirmed(t, db, "inst_a")
	set("a:2", "b:2")
	exec(`UPDATE ta SET v = 'z' WHERE id = 2`)
	exec(`UPDATE tb SET v = 'z' WHERE id = 2`)
	after, err := harness.QueryLSN(ctx, db, `SELECT pg_current_wal_lsn()::text`)
	if err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 20*time.Second, "b:2 invalidated and inst_b confirmed past the writes while inst_a is stopped", func() bool {
		return keyGone(rdb, "b:2")() && slotConfirmed(t, db, "inst_b") >= after
	})
	if keyGone(rdb, "a:2")() {
		t.Error("a:2 was deleted while its instance was stopped: the other instance invalidated a table that is not its own")
	}
	if c := slotConfirmed(t, db, "inst_a"); c != aBefore {
		t.Errorf("inst_a's slot moved from %s to %s while its engine was stopped", aBefore, c)
	}
	if st := a.status(); st.Active || st.Confirmed >= after {
		t.Errorf("inst_a status while stopped: active %v confirmed %s; want inactive, behind %s", st.Active, st.Confirmed, after)
	}
	// Restarted, it catches up on its own slot.
	a.start(db)
	harness.WaitFor(t, 20*time.Second, "a:2 invalidated after inst_a restarted", keyGone(rdb, "a:2"))

	// HA is per instance: a second process of inst_a's configuration waits
	// as its standby (not inst_b's), and takes over when the leader dies.
	// (On another port: in production the standby runs on another host.)
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	standby := harness.StartProcessT(t, harness.Command{Name: "engine inst_a standby", Path: bin, Args: []string{"run", "--config", a.cfgPath},
		Env: append(os.Environ(), fmt.Sprintf("CDC_METRICS_LISTEN=127.0.0.1:%d", port))})
	harness.WaitFor(t, 20*time.Second, "the second inst_a process to wait as standby", func() bool {
		return strings.Contains(standby.Output(), "waiting as standby")
	})
	if err := a.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	a.proc = standby
	set("a:3", "b:3")
	exec(`UPDATE ta SET v = 'w' WHERE id = 3`)
	exec(`UPDATE tb SET v = 'w' WHERE id = 3`)
	harness.WaitFor(t, 30*time.Second, "a:3 invalidated by inst_a's standby after the leader was killed, b:3 by inst_b", func() bool {
		return keyGone(rdb, "a:3")() && keyGone(rdb, "b:3")()
	})
	a.stop()
	b.stop()
}

// Several Redis targets, one process per target: two engines on one
// publication, each with its own slot and Redis. Every change reaches
// both; a target that is unreachable holds back only its own slot, the
// other target keeps being served, and the held-back one catches up.
func TestInstancesPerRedisTarget(t *testing.T) {
	t.Parallel()
	bin := harness.BuildEngine(t)
	pg := harness.PostgresT(t, harness.PostgresOptions{})
	rd1 := harness.RedisT(t, harness.RedisOptions{})
	rd2 := harness.RedisT(t, harness.RedisOptions{})
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	r1 := redis.NewClient(&redis.Options{Addr: rd1.Addr()})
	r2 := redis.NewClient(&redis.Options{Addr: rd2.Addr()})
	t.Cleanup(func() { r1.Close(); r2.Close() })
	for _, sql := range []string{
		`CREATE TABLE items (id bigint PRIMARY KEY, v text)`, `INSERT INTO items SELECT g, '' FROM generate_series(1, 3) g`,
	} {
		if _, err := db.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	const rules = "  - table: items\n    keys: [\"item:{id}\"]\n"
	// Each creates its publication FOR TABLE items (same tables, so the
	// same changes); a shared, pre-created publication works the same.
	x := newInstance(t, bin, pg.DSN("postgres"), "target_1", rd1.Addr(), rules)
	y := newInstance(t, bin, pg.DSN("postgres"), "target_2", rd2.Addr(), rules)
	x.start(db)
	y.start(db)

	setBoth := func(key string) {
		t.Helper()
		for _, r := range []*redis.Client{r1, r2} {
			if err := r.Set(ctx, key, "cached", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	setBoth("item:1")
	if _, err := db.Exec(ctx, `UPDATE items SET v = 'x' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 20*time.Second, "item:1 invalidated on both targets", func() bool { return keyGone(r1, "item:1")() && keyGone(r2, "item:1")() })

	// Target 2 unreachable (its server frozen): target 1 is still served
	// and its slot confirmed; target 2's slot waits.
	setBoth("item:2")
	yBefore := slotConfirmed(t, db, "target_2")
	if err := rd2.Pause(); err != nil {
		t.Fatal(err)
	}
	paused := true
	t.Cleanup(func() {
		if paused {
			_ = rd2.Resume()
		}
	})
	if _, err := db.Exec(ctx, `UPDATE items SET v = 'x' WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	after, err := harness.QueryLSN(ctx, db, `SELECT pg_current_wal_lsn()::text`)
	if err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 20*time.Second, "item:2 invalidated on target 1 and its slot confirmed while target 2 is down", func() bool {
		return keyGone(r1, "item:2")() && slotConfirmed(t, db, "target_1") >= after
	})
	if c := slotConfirmed(t, db, "target_2"); c >= after || c < yBefore {
		t.Errorf("target_2's slot at %s while its Redis is down; want it held before %s", c, after)
	}
	if err := rd2.Resume(); err != nil {
		t.Fatal(err)
	}
	paused = false
	harness.WaitFor(t, 30*time.Second, "item:2 invalidated on target 2 once it is back, and its slot confirmed", func() bool {
		return keyGone(r2, "item:2")() && slotConfirmed(t, db, "target_2") >= after
	})
	x.stop()
	y.stop()
}
