package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/cacheaside"
)

// ---- values: what a key holds, computed the same way by readers and checker

type userRow struct {
	id    int64
	email *string
	name  string
	rev   int64
}

type orderRow struct {
	id     int64
	userID *int64
	note   string
}

func userValue(u *userRow) string {
	if u == nil {
		return "u|none"
	}
	email := "NULL"
	if u.email != nil {
		email = *u.email
	}
	return fmt.Sprintf("u|%d|%s|%s|%d", u.id, email, u.name, u.rev)
}

func orderValue(o *orderRow) string {
	if o == nil {
		return "o|none"
	}
	uid := "NULL"
	if o.userID != nil {
		uid = strconv.FormatInt(*o.userID, 10)
	}
	return fmt.Sprintf("o|%d|%s|%s", o.id, uid, o.note)
}

func idsValue(tag string, ids []int64) string {
	ids = append([]int64(nil), ids...)
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var b strings.Builder
	b.WriteString(tag)
	b.WriteByte('|')
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(id, 10))
	}
	return b.String()
}

func bigValue(payload *string) string {
	if payload == nil {
		return "b|none"
	}
	return "b|" + *payload
}

// keyKind splits a managed key into its kind (user, email, order,
// ordersof, big) and its argument; lib: keys map to the same kinds.
func keyKind(key string) (kind, arg string, ok bool) {
	k := key
	if rest, lib := strings.CutPrefix(key, "lib:"); lib {
		k = rest
		if e, ok := strings.CutPrefix(k, "email:"); ok {
			return "email", e, true
		}
	} else if e, ok := strings.CutPrefix(k, "user:email:"); ok {
		return "email", e, true
	}
	for _, p := range []struct{ prefix, kind string }{
		{"orders:user:", "ordersof"}, {"user:", "user"}, {"order:", "order"}, {"big:", "big"},
	} {
		if a, ok := strings.CutPrefix(k, p.prefix); ok {
			return p.kind, a, true
		}
	}
	return "", "", false
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// loadKey reads one key's value from the database, as an application's
// cache-aside loader would.
func loadKey(ctx context.Context, q querier, key string) (string, error) {
	kind, arg, ok := keyKind(key)
	if !ok {
		return "", fmt.Errorf("unknown key %q", key)
	}
	ids := func(sql string, arg any) ([]int64, error) {
		rows, err := q.Query(ctx, sql, arg)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[int64])
	}
	switch kind {
	case "email":
		l, err := ids(`SELECT id FROM users WHERE email = $1`, arg)
		return idsValue("e", l), err
	case "ordersof":
		id, _ := strconv.ParseInt(arg, 10, 64)
		l, err := ids(`SELECT id FROM orders WHERE user_id = $1`, id)
		return idsValue("ou", l), err
	case "user":
		id, _ := strconv.ParseInt(arg, 10, 64)
		var u userRow
		err := q.QueryRow(ctx, `SELECT id, email, name, rev FROM users WHERE id = $1`, id).Scan(&u.id, &u.email, &u.name, &u.rev)
		if errors.Is(err, pgx.ErrNoRows) {
			return userValue(nil), nil
		}
		return userValue(&u), err
	case "order":
		id, _ := strconv.ParseInt(arg, 10, 64)
		var o orderRow
		err := q.QueryRow(ctx, `SELECT id, user_id, note FROM orders WHERE id = $1`, id).Scan(&o.id, &o.userID, &o.note)
		if errors.Is(err, pgx.ErrNoRows) {
			return orderValue(nil), nil
		}
		return orderValue(&o), err
	default: // big
		id, _ := strconv.ParseInt(arg, 10, 64)
		var p string
		err := q.QueryRow(ctx, `SELECT payload FROM big WHERE id = $1`, id).Scan(&p)
		if errors.Is(err, pgx.ErrNoRows) {
			return bigValue(nil), nil
		}
		return bigValue(&p), err
	}
}

// snapshot is the whole database, read in one transaction.
type snapshot struct {
	users   map[int64]*userRow
	byEmail map[string][]int64
	orders  map[int64]*orderRow
	byUser  map[int64][]int64
	big     map[int64]string
}

func readSnapshot(ctx context.Context, db *pgxpool.Pool) (*snapshot, error) {
	s := &snapshot{users: map[int64]*userRow{}, byEmail: map[string][]int64{}, orders: map[int64]*orderRow{}, byUser: map[int64][]int64{}, big: map[int64]string{}}
	err := pgx.BeginTxFunc(ctx, db, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, _ := tx.Query(ctx, `SELECT id, email, name, rev FROM users`)
		var u userRow
		if _, err := pgx.ForEachRow(rows, []any{&u.id, &u.email, &u.name, &u.rev}, func() error {
			c := u
			s.users[c.id] = &c
			if c.email != nil {
				s.byEmail[*c.email] = append(s.byEmail[*c.email], c.id)
			}
			return nil
		}); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT id, user_id, note FROM orders`)
		var o orderRow
		if _, err := pgx.ForEachRow(rows, []any{&o.id, &o.userID, &o.note}, func() error {
			c := o
			s.orders[c.id] = &c
			if c.userID != nil {
				s.byUser[*c.userID] = append(s.byUser[*c.userID], c.id)
			}
			return nil
		}); err != nil {
			return err
		}
		rows, _ = tx.Query(ctx, `SELECT id, payload FROM big`)
		var id int64
		var p string
		_, err := pgx.ForEachRow(rows, []any{&id, &p}, func() error {
			s.big[id] = p
			return nil
		})
		return err
	})
	return s, err
}

// expect is the value a fresh read of the database gives for key.
func (s *snapshot) expect(key string) (string, bool) {
	kind, arg, ok := keyKind(key)
	if !ok {
		return "", false
	}
	id, _ := strconv.ParseInt(arg, 10, 64)
	switch kind {
	case "email":
		return idsValue("e", s.byEmail[arg]), true
	case "ordersof":
		return idsValue("ou", s.byUser[id]), true
	case "user":
		return userValue(s.users[id]), true
	case "order":
		return orderValue(s.orders[id]), true
	default:
		if p, ok := s.big[id]; ok {
			return bigValue(&p), true
		}
		return bigValue(nil), true
	}
}

// plainKeys are every key of the plain namespace the workload can touch.
func (f *fixture) plainKeys() []string {
	var keys []string
	for id := 1; id <= maxUserID; id++ {
		keys = append(keys, fmt.Sprintf("user:%d", id), fmt.Sprintf("orders:user:%d", id))
	}
	for e := 0; e < numEmails; e++ {
		keys = append(keys, fmt.Sprintf("user:email:e%d", e))
	}
	for id := 1; id <= maxOrderID; id++ {
		keys = append(keys, fmt.Sprintf("order:%d", id))
	}
	for id := 1; id <= f.o.bigRows; id++ {
		keys = append(keys, fmt.Sprintf("big:%d", id))
	}
	return keys
}

// fill caches every plain key from one snapshot of the database, with a
// plain SET. Only while no writer has a transaction in flight (stopped,
// or paused by load.pause): the values are then current when written.
func (f *fixture) fill() int {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := readSnapshot(ctx, f.db)
	if err != nil {
		f.t.Fatalf("fill: read snapshot: %v", err)
	}
	keys := f.plainKeys()
	for i := 0; i < len(keys); i += 1000 {
		pipe := f.rdb.Pipeline()
		for _, k := range keys[i:min(i+1000, len(keys))] {
			v, _ := s.expect(k)
			pipe.Set(ctx, k, v, 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			f.t.Fatalf("fill: %v", err)
		}
	}
	return len(keys)
}

// ---- the checker

type checkResult struct {
	plain, lib           int      // keys compared
	stalePlain, staleLib []string // "key: cached X, database Y"
	unknown              []string
}

func (r checkResult) stale() int { return len(r.stalePlain) + len(r.staleLib) }

func (r checkResult) String() string {
	s := fmt.Sprintf("%d plain and %d library keys compared, %d and %d stale", r.plain, r.lib, len(r.stalePlain), len(r.staleLib))
	if len(r.unknown) > 0 {
		s += fmt.Sprintf(", %d unknown keys", len(r.unknown))
	}
	return s
}

func (r checkResult) examples(n int) []string {
	all := append(append([]string(nil), r.stalePlain...), r.staleLib...)
	return all[:min(n, len(all))]
}

// check compares every managed key in Redis with a fresh read of the
// database. The caller has made the system quiescent (see quiesce).
func (f *fixture) check() checkResult {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := readSnapshot(ctx, f.db)
	if err != nil {
		f.t.Fatalf("check: read snapshot: %v", err)
	}
	all, err := f.allKeys(ctx, "*")
	if err != nil {
		f.t.Fatalf("check: scan: %v", err)
	}
	var keys []string
	for _, k := range all {
		if strings.HasPrefix(k, "lease:{") || strings.HasPrefix(k, "cdcinvalidate:") || strings.HasPrefix(k, "barrier:") {
			continue
		}
		if f.o.actions && isActionKey(k) {
			continue // checked by checkActions
		}
		keys = append(keys, k)
	}
	var r checkResult
	for i := 0; i < len(keys); i += 500 {
		batch := keys[i:min(i+500, len(keys))]
		vals, err := f.mget(ctx, batch)
		if err != nil {
			f.t.Fatalf("check: mget: %v", err)
		}
		for j, k := range batch {
			got, ok := vals[j].(string)
			if !ok {
				continue // gone meanwhile (absent is always fine)
			}
			want, known := s.expect(k)
			if !known {
				r.unknown = append(r.unknown, k)
				continue
			}
			lib := strings.HasPrefix(k, "lib:")
			if _, v, stamped := cacheaside.ParseStamp([]byte(got)); lib && stamped {
				got = string(v) // the library's stamp for the verifier
			}
			if lib {
				r.lib++
			} else {
				r.plain++
			}
			if got != want {
				d := fmt.Sprintf("%s: cached %q, database %q", k, got, want)
				if lib {
					r.staleLib = append(r.staleLib, d)
				} else {
					r.stalePlain = append(r.stalePlain, d)
				}
			}
		}
	}
	sort.Strings(r.stalePlain)
	sort.Strings(r.staleLib)
	return r
}

// allKeys lists the keys matching pattern, on every master of a cluster.
func (f *fixture) allKeys(ctx context.Context, pattern string) ([]string, error) {
	scan := func(ctx context.Context, c redis.Cmdable) ([]string, error) {
		var keys []string
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		return keys, iter.Err()
	}
	cc, ok := f.rdb.(*redis.ClusterClient)
	if !ok {
		return scan(ctx, f.rdb)
	}
	var mu sync.Mutex
	var keys []string
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		k, err := scan(ctx, c)
		mu.Lock()
		keys = append(keys, k...)
		mu.Unlock()
		return err
	})
	return keys, err
}

// mget reads keys (nil for an absent one); on a cluster, GET by GET in a
// pipeline (the keys span slots).
func (f *fixture) mget(ctx context.Context, keys []string) ([]any, error) {
	if _, ok := f.rdb.(*redis.ClusterClient); !ok {
		return f.rdb.MGet(ctx, keys...).Result()
	}
	cmds := make([]*redis.StringCmd, len(keys))
	_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]any, len(keys))
	for i, c := range cmds {
		v, err := c.Result()
		switch {
		case err == nil:
			out[i] = v
		case !errors.Is(err, redis.Nil):
			return nil, fmt.Errorf("GET %s: %w", keys[i], err) // not read: never counted as absent
		}
	}
	return out, nil
}

// quiesce waits until the engine applied everything committed so far
// (the writers must be stopped) and then checks.
func (f *fixture) quiesce() checkResult {
	f.t.Helper()
	f.barrier(90 * time.Second)
	return f.check()
}

// ---- writers and readers

type loadOpts struct {
	writers int // random small transactions
	readers int // cacheaside readers of lib: keys
	bulk    int // writers of large transactions on table big
	// bulkRows bounds the rows one statement of a bulk transaction updates.
	bulkRows [2]int
	// bulkHold is how long a bulk transaction stays open between its
	// statements (interleaving with the small ones).
	bulkHold time.Duration
}

type loadStats struct {
	commits, rollbacks, failed, bulkCommits atomic.Int64
	truncates                               atomic.Int64
	reads, readErrs                         atomic.Int64
}

// load is the concurrent workload of one run.
type load struct {
	f        *fixture
	o        loadOpts
	gate     sync.RWMutex // writers hold it shared per transaction; pause takes it
	stopping atomic.Bool
	noBulk   atomic.Bool // the bulk writers stop after their transaction
	paused   atomic.Bool
	// rollbackBulk: after stopBulk, a large transaction rolls back
	// instead of committing.
	rollbackBulk atomic.Bool
	bwg          sync.WaitGroup
	wg           sync.WaitGroup
	rwg          sync.WaitGroup
	libs         []*cacheaside.Client
	rcli         []redis.UniversalClient
	stats        *loadStats
	once         sync.Once
}

// startLoad starts writers and readers; stats accumulates their counts.
func (f *fixture) startLoad(rng *rand.Rand, o loadOpts, stats *loadStats) *load {
	f.t.Helper()
	l := &load{f: f, o: o, stats: stats}
	wdb, rdb := f.wdb, f.rdbPG
	f.t.Cleanup(l.halt) // also when the test fails half-way
	for i := 0; i < o.writers; i++ {
		r := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for !l.stopping.Load() {
				l.gate.RLock()
				err := l.smallTxn(wdb, r)
				l.gate.RUnlock()
				if err != nil {
					time.Sleep(time.Duration(10+r.IntN(40)) * time.Millisecond)
				}
				time.Sleep(time.Duration(r.IntN(6)) * time.Millisecond)
			}
		}()
	}
	for i := 0; i < o.bulk; i++ {
		r := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		l.wg.Add(1)
		l.bwg.Add(1)
		go func() {
			defer l.wg.Done()
			defer l.bwg.Done()
			for !l.stopping.Load() && !l.noBulk.Load() {
				l.gate.RLock()
				err := l.bulkTxn(wdb, r)
				l.gate.RUnlock()
				if err != nil {
					time.Sleep(time.Duration(10+r.IntN(40)) * time.Millisecond)
				}
			}
		}()
	}
	for i := 0; i < o.readers; i++ {
		// Readers talk to Redis directly, never through the engine's proxy.
		var cli redis.UniversalClient
		if f.cl != nil {
			cli = redis.NewClusterClient(&redis.ClusterOptions{Addrs: f.cl.Addrs(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, PoolSize: 4,
				DialerRetries: 1, MaxRetryBackoff: 64 * time.Millisecond})
		} else {
			cli = redis.NewClient(&redis.Options{Addr: f.rd.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second, PoolSize: 4})
		}
		// Fills are stamped with the engine's watermark (when it keeps one,
		// on a single Redis), so that its verifier can judge library keys: a
		// stamp below the watermark before a delete that survived it would
		// be a lease that failed to fence a load.
		libOpts := cacheaside.Options{TTL: 10 * time.Minute, MaxWait: 300 * time.Millisecond}
		if !f.o.noWatermark && f.cl == nil {
			libOpts.StampKey = f.markKey()
		}
		lib, err := cacheaside.New(cli, libOpts)
		if err != nil {
			f.t.Fatal(err)
		}
		l.rcli = append(l.rcli, cli)
		l.libs = append(l.libs, lib)
		r := rand.New(rand.NewPCG(rng.Uint64(), rng.Uint64()))
		l.rwg.Add(1)
		go func() {
			defer l.rwg.Done()
			for !l.stopping.Load() {
				key := randomLibKey(r, f.o.bigRows)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := lib.Get(ctx, key, func(ctx context.Context) ([]byte, error) {
					v, err := loadKey(ctx, rdb, key)
					return []byte(v), err
				})
				cancel()
				l.stats.reads.Add(1)
				if err != nil {
					l.stats.readErrs.Add(1)
					time.Sleep(20 * time.Millisecond)
				}
				time.Sleep(time.Duration(r.IntN(3)) * time.Millisecond)
			}
		}()
	}
	return l
}

// pause waits until no writer has a transaction in flight and keeps them
// from starting one until resume.
func (l *load) pause() {
	l.gate.Lock()
	l.paused.Store(true)
}

func (l *load) resume() {
	l.paused.Store(false)
	l.gate.Unlock()
}

// pauseFill fills the plain keys while the writers are paused.
func (l *load) pauseFill() {
	l.pause()
	defer l.resume()
	l.f.fill()
}

// stop ends the writers (each after its current transaction) and readers,
// and waits until the server has finished every writer session's work, so
// that no commit can land after the barrier that follows.
func (l *load) stop() {
	l.f.t.Helper()
	l.halt()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var n int
		err := l.f.db.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'faults-writer' AND state <> 'idle'`, l.f.name).Scan(&n)
		cancel()
		if err == nil && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			l.f.t.Fatalf("writer sessions still busy 30s after the writers stopped (%d, %v)", n, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopBulk ends the writers of large transactions, so that later large
// transactions cannot re-invalidate, and so hide, keys whose invalidation
// a fault may have lost. A transaction in progress commits (commitOpen)
// or rolls back.
func (l *load) stopBulk(commitOpen bool) {
	l.rollbackBulk.Store(!commitOpen)
	l.noBulk.Store(true)
	l.bwg.Wait()
}

// halt stops the writers and readers and waits for them.
func (l *load) halt() {
	l.once.Do(func() {
		l.stopping.Store(true)
		if l.paused.Load() {
			// A test that failed while the writers were paused (only the
			// test's goroutine pauses and resumes, and it has ended).
			l.resume()
		}
		l.wg.Wait()
		l.rwg.Wait()
		for i := range l.libs {
			_ = l.libs[i].Close()
			_ = l.rcli[i].Close()
		}
	})
}

func randomLibKey(r *rand.Rand, bigRows int) string {
	switch n := r.IntN(10); {
	case n < 3:
		return fmt.Sprintf("lib:user:%d", 1+r.IntN(maxUserID))
	case n < 4:
		return fmt.Sprintf("lib:email:e%d", r.IntN(numEmails))
	case n < 6:
		return fmt.Sprintf("lib:order:%d", 1+r.IntN(maxOrderID))
	case n < 8 || bigRows == 0:
		return fmt.Sprintf("lib:orders:user:%d", 1+r.IntN(maxUserID))
	default:
		return fmt.Sprintf("lib:big:%d", 1+r.IntN(bigRows))
	}
}

func randEmail(r *rand.Rand) *string {
	if r.IntN(10) == 0 {
		return nil
	}
	e := fmt.Sprintf("e%d", r.IntN(numEmails))
	return &e
}

func randUserRef(r *rand.Rand) *int64 {
	if r.IntN(12) == 0 {
		return nil
	}
	id := 1 + r.Int64N(maxUserID)
	return &id
}

// smallTxn runs one random transaction: a few random changes, each in its
// own savepoint (a failed one is rolled back alone), or many changes to
// one row, or a TRUNCATE with new rows; 5% end in ROLLBACK.
func (l *load) smallTxn(db *pgxpool.Pool, r *rand.Rand) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	tx, err := db.Begin(ctx)
	if err != nil {
		l.stats.failed.Add(1)
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit a no-op
	// TRUNCATE invalidates a whole table, which would hide any loss in
	// it, so it is rare (about one run in five has one).
	k := r.IntN(6000)
	truncated := k < 2
	switch {
	case k < 1:
		_, err = tx.Exec(ctx, `TRUNCATE orders`)
		if err == nil {
			_, err = tx.Exec(ctx, `INSERT INTO orders SELECT g, 1 + (g * 7 + $1) % $2, 'o' || g FROM generate_series(1, $3) g`, r.IntN(100), seedUsers, seedOrders)
		}
	case k < 2:
		_, err = tx.Exec(ctx, `TRUNCATE users`)
		if err == nil {
			_, err = tx.Exec(ctx, `INSERT INTO users SELECT g, 'e' || ((g + $1) % $2), 'n' || g, 0 FROM generate_series(1, $3) g`, r.IntN(100), numEmails, seedUsers)
		}
	case k < 150:
		err = manyChangesToOneRow(ctx, tx, r, 20+r.IntN(120))
	default:
		for n := 1 + r.IntN(5); n > 0 && err == nil; n-- {
			err = l.randomChange(ctx, tx, r)
		}
		if err == nil && l.f.o.actions && l.f.o.bigRows > 0 && r.IntN(8) == 0 {
			err = docChange(ctx, tx, r, l.f.o.bigRows)
		}
	}
	if err != nil {
		l.stats.failed.Add(1)
		return err
	}
	if r.IntN(100) < 5 {
		l.stats.rollbacks.Add(1)
		return tx.Rollback(ctx)
	}
	if err := tx.Commit(ctx); err != nil {
		l.stats.failed.Add(1)
		return err
	}
	l.stats.commits.Add(1)
	if truncated {
		l.stats.truncates.Add(1)
	}
	return nil
}

// inSavepoint runs one statement in a savepoint; a statement error (a
// duplicate key, a lock timeout, a deadlock) rolls back only it.
func inSavepoint(ctx context.Context, tx pgx.Tx, sql string, args ...any) error {
	if _, err := tx.Exec(ctx, `SAVEPOINT op`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		if ctx.Err() != nil {
			return err
		}
		_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT op`)
		return err
	}
	_, err := tx.Exec(ctx, `RELEASE SAVEPOINT op`)
	return err
}

func (l *load) randomChange(ctx context.Context, tx pgx.Tx, r *rand.Rand) error {
	uid := 1 + r.Int64N(maxUserID)
	oid := 1 + r.Int64N(maxOrderID)
	name := fmt.Sprintf("n%d", r.IntN(1_000_000))
	switch k := r.IntN(100); {
	case k < 24:
		return inSavepoint(ctx, tx, `UPDATE users SET name = $2, rev = rev + 1 WHERE id = $1`, uid, name)
	case k < 38:
		return inSavepoint(ctx, tx, `UPDATE users SET email = $2 WHERE id = $1`, uid, randEmail(r))
	case k < 43: // primary key change
		return inSavepoint(ctx, tx, `UPDATE users SET id = $2 WHERE id = $1`, uid, 1+r.Int64N(maxUserID))
	case k < 50:
		return inSavepoint(ctx, tx, `INSERT INTO users VALUES ($1, $2, $3, 0) ON CONFLICT (id) DO UPDATE SET name = excluded.name, email = excluded.email`, uid, randEmail(r), name)
	case k < 55:
		return inSavepoint(ctx, tx, `DELETE FROM users WHERE id = $1`, uid)
	case k < 65:
		return inSavepoint(ctx, tx, `UPDATE orders SET user_id = $2 WHERE id = $1`, oid, randUserRef(r))
	case k < 72:
		return inSavepoint(ctx, tx, `UPDATE orders SET note = $2 WHERE id = $1`, oid, name)
	case k < 76: // primary key change
		return inSavepoint(ctx, tx, `UPDATE orders SET id = $2 WHERE id = $1`, oid, 1+r.Int64N(maxOrderID))
	case k < 83:
		return inSavepoint(ctx, tx, `INSERT INTO orders VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING`, oid, randUserRef(r), name)
	case k < 87:
		return inSavepoint(ctx, tx, `DELETE FROM orders WHERE id = $1`, oid)
	case k < 93: // a savepoint rolled back: its changes never happened
		if _, err := tx.Exec(ctx, `SAVEPOINT undo`); err != nil {
			return err
		}
		_, _ = tx.Exec(ctx, `UPDATE users SET name = 'rolled back', email = 'e-rolled-back' WHERE id = $1`, uid)
		_, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT undo`)
		return err
	case k < 97 || l.f.o.bigRows == 0:
		return inSavepoint(ctx, tx, `UPDATE users SET rev = rev + 1 WHERE id BETWEEN $1 AND $1 + 8`, uid)
	default:
		// Small writers stay in the upper tenth of big, so that they seldom
		// wait for the row locks of large transactions.
		n := l.f.o.bigRows
		return inSavepoint(ctx, tx, `UPDATE big SET payload = $2 WHERE id = $1`, n-r.IntN(max(1, n/10)), name)
	}
}

// manyChangesToOneRow changes one user and one order n times in one
// transaction: names, emails (key columns), the order's user (a key
// column), and primary keys moved away and back.
func manyChangesToOneRow(ctx context.Context, tx pgx.Tx, r *rand.Rand, n int) error {
	uid := 1 + r.Int64N(maxUserID)
	oid := 1 + r.Int64N(maxOrderID)
	for i := 0; i < n; i++ {
		var err error
		switch i % 6 {
		case 0, 3:
			_, err = tx.Exec(ctx, `UPDATE users SET name = $2, rev = rev + 1 WHERE id = $1`, uid, fmt.Sprintf("m%d", i))
		case 1:
			_, err = tx.Exec(ctx, `UPDATE users SET email = $2 WHERE id = $1`, uid, randEmail(r))
		case 2:
			_, err = tx.Exec(ctx, `UPDATE orders SET user_id = $2, note = $3 WHERE id = $1`, oid, randUserRef(r), fmt.Sprintf("m%d", i))
		case 4:
			if r.IntN(4) == 0 { // away to a free id and maybe back
				to := 1 + r.Int64N(maxUserID)
				if err = inSavepoint(ctx, tx, `UPDATE users SET id = $2 WHERE id = $1`, uid, to); err == nil && r.IntN(2) == 0 {
					err = inSavepoint(ctx, tx, `UPDATE users SET id = $2 WHERE id = $1`, to, uid)
				}
			}
		case 5:
			_, err = tx.Exec(ctx, `UPDATE orders SET note = note || '.' WHERE id = $1`, oid)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// bulkTxn updates thousands of rows of big in one transaction, stays open
// a while, and sometimes rolls a large savepoint back (or everything).
func (l *load) bulkTxn(db *pgxpool.Pool, r *rand.Rand) error {
	rows := l.f.o.bigRows
	if rows == 0 {
		return errors.New("bulk writer without table big")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	tx, err := db.Begin(ctx)
	if err != nil {
		l.stats.failed.Add(1)
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	span := func() (int, int) {
		lo, hi := l.o.bulkRows[0], l.o.bulkRows[1]
		n := lo + r.IntN(max(1, hi-lo))
		a := 1 + r.IntN(max(1, rows-n))
		return a, a + n - 1
	}
	tag := fmt.Sprintf("q%d", r.IntN(1_000_000))
	a, b := span()
	_, err = tx.Exec(ctx, `UPDATE big SET payload = $3 || id WHERE id BETWEEN $1 AND $2`, a, b, tag)
	if err == nil && l.o.bulkHold > 0 {
		time.Sleep(time.Duration(r.Int64N(int64(l.o.bulkHold))))
	}
	if err == nil && r.IntN(3) == 0 {
		a, b := span()
		if _, err = tx.Exec(ctx, `SAVEPOINT big`); err == nil {
			if _, err = tx.Exec(ctx, `UPDATE big SET payload = 'rolled back' WHERE id BETWEEN $1 AND $2`, a, b); err == nil {
				_, err = tx.Exec(ctx, `ROLLBACK TO SAVEPOINT big`)
			}
		}
	}
	if err == nil {
		a, b := span()
		_, err = tx.Exec(ctx, `UPDATE big SET payload = $3 || id WHERE id BETWEEN $1 AND $2`, a, b, tag+"b")
	}
	if err != nil {
		l.stats.failed.Add(1)
		return err
	}
	if r.IntN(10) == 0 || (l.noBulk.Load() && l.rollbackBulk.Load()) {
		l.stats.rollbacks.Add(1)
		return tx.Rollback(ctx)
	}
	if err := tx.Commit(ctx); err != nil {
		l.stats.failed.Add(1)
		return err
	}
	l.stats.bulkCommits.Add(1)
	l.stats.commits.Add(1)
	return nil
}
