package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/config"
	"github.com/cdcinvalidate/cdcinvalidate/mapping"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// The start-up checks that `run` and `check` share: the server, the rules
// against the catalog, and the publication. They only read.

// catalogCheck is what checkCatalog found.
type catalogCheck struct {
	walLevel   string
	version    int
	inRecovery bool // a standby
	infos      map[string]mapping.TableInfo
	problems   []mapping.Problem // wal_level and every rule against its table
}

// checkCatalog reads wal_level, the server version and every rule table,
// and checks the rules against them.
func checkCatalog(ctx context.Context, conn *pgx.Conn, m *mapping.Mapper) (*catalogCheck, error) {
	c := &catalogCheck{infos: map[string]mapping.TableInfo{}}
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), current_setting('server_version_num')::int, pg_is_in_recovery()").Scan(&c.walLevel, &c.version, &c.inRecovery); err != nil {
		return nil, fmt.Errorf("read server settings: %w", err)
	}
	if c.walLevel != "logical" {
		c.problems = append(c.problems, mapping.Problem{
			Msg: fmt.Sprintf("the server runs with wal_level=%s; logical replication needs wal_level=logical", c.walLevel),
			Fix: "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL"})
	}
	for _, t := range m.Tables() {
		info, err := tableInfo(ctx, conn, t)
		if err != nil {
			return nil, err
		}
		c.infos[t] = info
		for _, r := range m.Rules(t) {
			c.problems = append(c.problems, mapping.CheckTableProblems(r, info)...)
		}
	}
	return c, nil
}

func tableInfo(ctx context.Context, conn *pgx.Conn, qualified string) (mapping.TableInfo, error) {
	schema, table := config.SplitTable(qualified)
	var info mapping.TableInfo
	var kind, ident string
	var oid uint32
	var isPartition bool
	err := conn.QueryRow(ctx, `
SELECT c.oid, c.relkind::text, c.relreplident::text, c.relispartition,
       array(SELECT a.attname::text FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       array(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum),
       array(SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = c.oid
               AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2`, schema, table).Scan(&oid, &kind, &ident, &isPartition, &info.Columns, &info.Types, &info.IdentityColumns)
	if errors.Is(err, pgx.ErrNoRows) {
		return info, nil
	}
	if err != nil {
		return info, fmt.Errorf("read catalog of %s: %w", qualified, err)
	}
	info.Exists = true
	info.OID = oid
	info.Kind = kind[0]
	info.ReplicaIdentity = ident[0]
	if isPartition {
		// The root of its partition tree (pg_inherits: PostgreSQL 10+).
		err := conn.QueryRow(ctx, `
WITH RECURSIVE up(relid) AS (
  SELECT $1::oid
  UNION SELECT i.inhparent FROM pg_inherits i JOIN up ON i.inhrelid = up.relid)
SELECT n.nspname || '.' || c.relname FROM up
JOIN pg_class c ON c.oid = up.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = up.relid)`, oid).Scan(&info.PartitionOf)
		if err != nil {
			return info, fmt.Errorf("read the partition root of %s: %w", qualified, err)
		}
	}
	if info.Kind != 'p' {
		return info, nil
	}
	// The leaves' replica identities decide what old images carry.
	rows, err := conn.Query(ctx, `
SELECT n.nspname || '.' || c.relname, c.relreplident::text,
       array(SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = c.oid
               AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
FROM (WITH RECURSIVE down(relid) AS (
        SELECT $1::oid
        UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN down ON i.inhparent = down.relid)
      SELECT relid FROM down) t
JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
ORDER BY 1`, oid)
	if err != nil {
		return info, fmt.Errorf("read partitions of %s: %w", qualified, err)
	}
	for rows.Next() {
		var p mapping.PartitionInfo
		var pident string
		if err := rows.Scan(&p.Name, &pident, &p.IdentityColumns); err != nil {
			rows.Close()
			return info, fmt.Errorf("read partitions of %s: %w", qualified, err)
		}
		p.ReplicaIdentity = pident[0]
		info.Partitions = append(info.Partitions, p)
	}
	if err := rows.Err(); err != nil {
		return info, fmt.Errorf("read partitions of %s: %w", qualified, err)
	}
	return info, nil
}

// publication is what the catalog says about a publication.
type publication struct {
	Exists                           bool
	Insert, Update, Delete, Truncate bool
	ViaRoot                          bool
	AllTables                        bool
	Tables                           map[string]bool // as pg_publication_tables lists them
}

func readPublication(ctx context.Context, conn *pgx.Conn, pub string, version int) (publication, error) {
	var p publication
	viaRoot := "false"
	if version >= 130000 {
		viaRoot = "pubviaroot"
	}
	err := conn.QueryRow(ctx, `SELECT true, pubinsert, pubupdate, pubdelete, pubtruncate, `+viaRoot+`, puballtables FROM pg_publication WHERE pubname = $1`, pub).
		Scan(&p.Exists, &p.Insert, &p.Update, &p.Delete, &p.Truncate, &p.ViaRoot, &p.AllTables)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read publication %q: %w", pub, err)
	}
	rows, err := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1`, pub)
	if err != nil {
		return p, fmt.Errorf("read tables of publication %q: %w", pub, err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return p, fmt.Errorf("read tables of publication %q: %w", pub, err)
	}
	p.Tables = map[string]bool{}
	for _, t := range published {
		p.Tables[t] = true
	}
	return p, nil
}

// createPublicationSQL is the statement the engine runs when the
// publication does not exist.
func createPublicationSQL(pub string, tables []string, version int) string {
	quoted := make([]string, len(tables))
	for i, t := range tables {
		s, n := config.SplitTable(t)
		quoted[i] = pgx.Identifier{s, n}.Sanitize()
	}
	sql := fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", pgx.Identifier{pub}.Sanitize(), strings.Join(quoted, ", "))
	if version >= 130000 {
		sql += " WITH (publish_via_partition_root = true)"
	}
	return sql
}

// publicationProblems checks the publication (as it is, or as the engine
// would create it) against the rule tables.
func publicationProblems(pub string, p publication, version int, tables []string, infos map[string]mapping.TableInfo) []mapping.Problem {
	var ps []mapping.Problem
	add := func(msg, fix string) { ps = append(ps, mapping.Problem{Msg: msg, Fix: fix}) }
	viaRoot := p.ViaRoot || (!p.Exists && version >= 130000)
	var partitioned []string
	for _, t := range tables {
		info := infos[t]
		if info.Kind == 'p' {
			partitioned = append(partitioned, t)
		}
		if info.PartitionOf != "" && viaRoot {
			add(fmt.Sprintf("table %s, which a rule names, is a partition of %s; the publication publishes its changes as %s (publish_via_partition_root), so the rule would never see them", t, info.PartitionOf, info.PartitionOf),
				fmt.Sprintf("name %s in the rule instead (it covers all its partitions)", info.PartitionOf))
		}
	}
	if len(partitioned) > 0 && version < 130000 {
		add(fmt.Sprintf("rules name partitioned tables (%s), which PostgreSQL before 13 cannot publish through their root", strings.Join(partitioned, ", ")),
			"upgrade PostgreSQL to 13 or later, or name the partitions in the rules")
		return ps
	}
	if !p.Exists {
		return ps
	}
	var missingOps []string
	for _, op := range []struct {
		on   bool
		name string
	}{{p.Insert, "insert"}, {p.Update, "update"}, {p.Delete, "delete"}, {p.Truncate, "truncate"}} {
		if !op.on {
			missingOps = append(missingOps, op.name)
		}
	}
	if len(missingOps) > 0 {
		add(fmt.Sprintf("publication %q does not publish %s, so those changes would never invalidate anything", pub, strings.Join(missingOps, ", ")),
			fmt.Sprintf("run ALTER PUBLICATION %s SET (publish = 'insert, update, delete, truncate')", pub))
	}
	if len(partitioned) > 0 && !p.ViaRoot {
		add(fmt.Sprintf("publication %q publishes the changes of partitioned tables (%s) as their partitions "+
			"(publish_via_partition_root is false), so rules naming the partitioned table would never see them",
			pub, strings.Join(partitioned, ", ")),
			fmt.Sprintf("run ALTER PUBLICATION %s SET (publish_via_partition_root = true)", pub))
	}
	for _, t := range tables {
		if p.Tables[t] || (infos[t].Kind == 'p' && !p.ViaRoot) || (infos[t].PartitionOf != "" && p.ViaRoot) || !infos[t].Exists {
			continue // reported above, or as a missing table
		}
		add(fmt.Sprintf("publication %q does not include table %s, which a rule names, so its changes would be missed", pub, t),
			fmt.Sprintf("run ALTER PUBLICATION %s ADD TABLE %s", pub, t))
	}
	return ps
}

// Severity of a finding of `cdcinvalidate check`.
type Severity string

// Severities, from fine to fatal.
const (
	SeverityOK    Severity = "OK"
	SeverityWarn  Severity = "WARN"
	SeverityError Severity = "ERROR"
)

// Finding is one line of `cdcinvalidate check`.
type Finding struct {
	Severity Severity
	Subject  string
	Finding  string
	Fix      string
}

// CheckReport is what `cdcinvalidate check` found.
type CheckReport struct {
	Findings []Finding
}

// Failed reports whether any finding is an ERROR.
func (r *CheckReport) Failed() bool {
	return slices.ContainsFunc(r.Findings, func(f Finding) bool { return f.Severity == SeverityError })
}

func (r *CheckReport) add(sev Severity, subject, finding, fix string) {
	r.Findings = append(r.Findings, Finding{sev, subject, finding, fix})
}

// Print writes the findings as a table.
func (r *CheckReport) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tSUBJECT\tFINDING\tFIX")
	counts := map[Severity]int{}
	for _, f := range r.Findings {
		counts[f.Severity]++
		fix := f.Fix
		if fix == "" {
			fix = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Severity, f.Subject, oneLine(f.Finding), oneLine(fix))
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d OK, %d WARN, %d ERROR\n", counts[SeverityOK], counts[SeverityWarn], counts[SeverityError])
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// Check runs every start-up check of `run` and more (the role's
// privileges, the slot's state, Redis), and changes nothing: its
// PostgreSQL session is read-only. file names the configuration in
// messages. An error means the checks could not run; what they found is
// in the report.
func Check(ctx context.Context, cfg *config.Config, file string) (*CheckReport, error) {
	rep := &CheckReport{}
	m, err := mapping.New(cfg.MappingRules(file))
	if err != nil {
		rep.add(SeverityError, "rules", err.Error(), "fix "+file)
		return rep, nil
	}
	e := &Engine{cfg: cfg, file: file, mapper: m}
	if err := e.checkPostgres(ctx, rep); err != nil {
		return rep, err
	}
	e.checkRedis(ctx, rep)
	return rep, nil
}

func (e *Engine) checkPostgres(ctx context.Context, rep *CheckReport) error {
	ccfg, err := pgx.ParseConfig(e.cfg.Postgres.DSN)
	if err != nil {
		rep.add(SeverityError, "postgres", "postgres.dsn: "+config.Redact(err.Error()), "fix postgres.dsn or CDC_POSTGRES_DSN")
		return nil
	}
	if ccfg.RuntimeParams == nil {
		ccfg.RuntimeParams = map[string]string{}
	}
	ccfg.RuntimeParams["application_name"] = "cdcinvalidate-check"
	ccfg.RuntimeParams["default_transaction_read_only"] = "on" // check changes nothing
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, ccfg)
	if err != nil {
		msg := config.Redact(explainPgError(err).Error())
		rep.add(SeverityError, "postgres", "cannot connect: "+msg, "check postgres.dsn, that the server runs, and pg_hba.conf")
		return nil
	}
	defer conn.Close(context.Background())
	subject := fmt.Sprintf("postgres %s@%s:%d/%s", ccfg.User, ccfg.Host, ccfg.Port, ccfg.Database)

	cat, err := checkCatalog(ctx, conn, e.mapper)
	if err != nil {
		return err
	}
	rep.add(SeverityOK, subject, fmt.Sprintf("connected; server version %d, wal_level=%s", cat.version, cat.walLevel), "")
	if cat.inRecovery {
		for _, p := range standbyProblems(cat.version, cat.inRecovery, e.cfg.Postgres.FailoverSlot) {
			rep.add(SeverityError, subject, p, "see above")
		}
		feedback, primarySlot, err := standbySettings(ctx, conn)
		if err != nil {
			return err
		}
		if advice := standbySettingsAdvice(feedback, primarySlot); advice != "" {
			rep.add(SeverityWarn, subject, "a standby: "+advice, "set hot_standby_feedback = on and primary_slot_name on the standby")
		} else {
			rep.add(SeverityOK, subject, "a standby with hot_standby_feedback and primary_slot_name "+primarySlot+"; the publication must be created on the primary", "")
		}
	}

	// The role.
	var super, replication bool
	var user string
	if err := conn.QueryRow(ctx, `SELECT current_user, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super, &replication); err != nil {
		return fmt.Errorf("read role: %w", err)
	}
	switch {
	case super:
		rep.add(SeverityOK, "role "+user, "superuser (a role with only LOGIN REPLICATION is enough)", "")
	case replication:
		rep.add(SeverityOK, "role "+user, "has REPLICATION", "")
	default:
		rep.add(SeverityError, "role "+user, "has neither REPLICATION nor superuser, so it cannot create or stream from a replication slot",
			fmt.Sprintf("ALTER ROLE %s REPLICATION", pgx.Identifier{user}.Sanitize()))
	}

	// The rules against the catalog.
	byWhere := map[string][]mapping.Problem{}
	for _, p := range cat.problems {
		if p.Where == "" {
			rep.add(SeverityError, "server", p.Msg, p.Fix)
			continue
		}
		byWhere[p.Where] = append(byWhere[p.Where], p)
	}
	for i, r := range e.mapper.AllRules() {
		t := r.QualifiedTable()
		subject := fmt.Sprintf("rules[%d] %s", i, t)
		ps := byWhere[r.Where]
		for _, p := range ps {
			rep.add(SeverityError, subject, p.Msg, p.Fix)
		}
		for _, p := range mapping.TableWarnings(r, cat.infos[t]) {
			rep.add(SeverityWarn, subject, p.Msg, p.Fix)
		}
		info := cat.infos[t]
		if len(ps) > 0 {
			continue
		}
		if info.Kind == 'p' {
			rep.add(SeverityWarn, subject, "with publish_via_partition_root, PostgreSQL does not publish a TRUNCATE of a single partition (only of the partitioned table), so it invalidates nothing",
				"truncate the partitioned table, or emit an explicit invalidation in the same transaction: SELECT pg_logical_emit_message(true, 'cdcinvalidate', '{\"patterns\":[...]}')")
		}
		what := "table"
		if info.Kind == 'p' {
			what = fmt.Sprintf("partitioned table with %d partitions", len(info.Partitions))
		}
		rep.add(SeverityOK, subject, fmt.Sprintf("%s, replica identity %s; the rule's columns exist and old keys can be computed", what, mapping.IdentityName(info.ReplicaIdentity)), "")
	}

	// The publication.
	pub := e.cfg.Postgres.Publication
	tables := e.mapper.Tables()
	p, err := readPublication(ctx, conn, pub, cat.version)
	if err != nil {
		return err
	}
	pubProblems := publicationProblems(pub, p, cat.version, tables, cat.infos)
	for _, pp := range pubProblems {
		rep.add(SeverityError, "publication "+pub, pp.Msg, pp.Fix)
	}
	switch {
	case p.Exists && len(pubProblems) == 0:
		rep.add(SeverityOK, "publication "+pub, fmt.Sprintf("exists, publishes insert, update, delete and truncate of every rule table (publish_via_partition_root = %v)", p.ViaRoot), "")
	case !p.Exists:
		sql := createPublicationSQL(pub, tables, cat.version)
		notOwned, canCreateDB, err := e.publicationPrivileges(ctx, conn, tables, cat.infos)
		if err != nil {
			return err
		}
		switch {
		case super || (len(notOwned) == 0 && canCreateDB):
			rep.add(SeverityOK, "publication "+pub, "does not exist; the engine will create it at start-up: "+sql, "")
		case len(notOwned) > 0:
			rep.add(SeverityError, "publication "+pub, fmt.Sprintf("does not exist, and role %s cannot create it: it does not own %s", user, strings.Join(notOwned, ", ")),
				"as the tables' owner (or a superuser) run: "+sql)
		default:
			rep.add(SeverityError, "publication "+pub, fmt.Sprintf("does not exist, and role %s cannot create it: it lacks CREATE on the database", user),
				fmt.Sprintf("GRANT CREATE ON DATABASE %s TO %s, or as the tables' owner run: %s", pgx.Identifier{conn.Config().Database}.Sanitize(), pgx.Identifier{user}.Sanitize(), sql))
		}
	}

	return e.checkSlot(ctx, conn, rep)
}

// publicationPrivileges reports the rule tables the role does not own
// (creating a publication FOR TABLE needs ownership) and whether it has
// CREATE on the database.
func (e *Engine) publicationPrivileges(ctx context.Context, conn *pgx.Conn, tables []string, infos map[string]mapping.TableInfo) (notOwned []string, canCreate bool, err error) {
	for _, t := range tables {
		if !infos[t].Exists {
			continue
		}
		s, n := config.SplitTable(t)
		var owns bool
		if err := conn.QueryRow(ctx, `SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = $1 AND c.relname = $2`, s, n).Scan(&owns); err != nil {
			return nil, false, fmt.Errorf("read owner of %s: %w", t, err)
		}
		if !owns {
			notOwned = append(notOwned, t)
		}
	}
	if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE')`).Scan(&canCreate); err != nil {
		return nil, false, fmt.Errorf("read database privileges: %w", err)
	}
	return notOwned, canCreate, nil
}

func (e *Engine) checkSlot(ctx context.Context, conn *pgx.Conn, rep *CheckReport) error {
	slot := e.cfg.Postgres.Slot
	subject := "slot " + slot
	var plugin, slotType, db, walStatus, reason string
	var active, conflicting bool
	var pid *int
	var retained, safe *int64
	err := conn.QueryRow(ctx, `
SELECT coalesce(plugin, ''), slot_type, coalesce(database, ''), active, active_pid, coalesce(wal_status, ''),
       CASE WHEN restart_lsn IS NOT NULL THEN pg_wal_lsn_diff(`+currentLSNSQL+`, restart_lsn)::bigint END,
       safe_wal_size, `+slotInvalidatedSQL+`
FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&plugin, &slotType, &db, &active, &pid, &walStatus, &retained, &safe, &reason, &conflicting)
	if errors.Is(err, pgx.ErrNoRows) {
		var used, max int
		if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots)::int, current_setting('max_replication_slots')::int`).Scan(&used, &max); err != nil {
			return fmt.Errorf("read slot settings: %w", err)
		}
		if used >= max {
			rep.add(SeverityError, subject, fmt.Sprintf("does not exist, and all %d replication slots (max_replication_slots) are in use, so the engine cannot create it", max),
				"drop an unused slot (pg_drop_replication_slot), or raise max_replication_slots and restart PostgreSQL")
		} else {
			rep.add(SeverityOK, subject, fmt.Sprintf("does not exist; the engine will create it at start-up (%d of %d slots in use)", used, max), "")
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read slot %q: %w", slot, err)
	}
	database := conn.Config().Database
	switch {
	case slotType != "logical" || plugin != "pgoutput":
		rep.add(SeverityError, subject, fmt.Sprintf("is a %s slot with plugin %q; cdcinvalidate needs a logical slot with plugin pgoutput", slotType, plugin),
			fmt.Sprintf("choose another postgres.slot, or drop it (SELECT pg_drop_replication_slot('%s')) if nothing uses it", slot))
	case db != database:
		rep.add(SeverityError, subject, fmt.Sprintf("belongs to database %q, not %q", db, database), "choose another postgres.slot")
	default:
		rep.add(SeverityOK, subject, "logical slot with plugin pgoutput in database "+db, "")
	}
	lost, cause := slotInvalidation(walStatus, reason, conflicting)
	switch {
	case lost:
		rep.add(SeverityError, subject, "was invalidated by PostgreSQL ("+cause+"), and the changes it had not confirmed are gone",
			fmt.Sprintf("the engine flushes the managed keys (consistency.on_history_lost: flush) or stops; to recover by hand, flush the managed keys and drop the slot (SELECT pg_drop_replication_slot('%s'))", slot))
	case walStatus == "unreserved":
		rep.add(SeverityWarn, subject, "wal_status is unreserved: the slot is about to lose WAL it needs", "start the engine (or let it catch up) now, or raise max_slot_wal_keep_size")
	case walStatus == "extended":
		rep.add(SeverityWarn, subject, "wal_status is extended: the slot holds more WAL than max_wal_size", "let the engine catch up; watch the retained WAL")
	case walStatus == "":
	default:
		rep.add(SeverityOK, subject, "wal_status is "+walStatus, "")
	}
	if active {
		who := "another process"
		if pid != nil {
			who = fmt.Sprintf("walsender PID %d", *pid)
		}
		rep.add(SeverityWarn, subject, fmt.Sprintf("is active (%s): another engine or consumer streams from it; a new engine waits as a standby", who),
			"nothing, if that is another cdcinvalidate of this deployment; else stop the other consumer")
	} else {
		rep.add(SeverityOK, subject, "not active (no consumer is streaming from it)", "")
	}
	if retained != nil {
		finding := "retains " + bytesText(*retained) + " of WAL"
		if safe != nil {
			finding += fmt.Sprintf("; %s more can be written before max_slot_wal_keep_size invalidates it", bytesText(*safe))
		} else {
			finding += " (max_slot_wal_keep_size is unlimited: set it, or a stopped engine can fill the disk)"
		}
		sev := SeverityOK
		if safe != nil && *safe < *retained/10 {
			sev = SeverityWarn
		}
		rep.add(sev, subject, finding, "")
	}
	return nil
}

func (e *Engine) checkRedis(ctx context.Context, rep *CheckReport) {
	subject := "redis " + e.cfg.Redis.Describe()
	rdb, err := newRedisClient(e.cfg.Redis, -1)
	if err != nil {
		rep.add(SeverityError, subject, err.Error(), "fix the redis.tls_* files")
		return
	}
	defer rdb.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := rdb.Ping(rctx).Err(); err != nil {
		fix := "check redis.addr (or redis.addrs), that Redis runs, and redis.username / redis.password"
		if perm := sink.Classify(err); perm != nil {
			err, fix = perm, "retrying does not help: fix what the finding names"
		}
		rep.add(SeverityError, subject, "PING failed: "+err.Error(), fix)
		return
	}
	rep.add(SeverityOK, subject, "PING answered", "")
	t, err := readTopology(rctx, e.cfg.Redis, rdb)
	if err != nil {
		rep.add(SeverityError, subject, "reading the topology failed: "+err.Error(), "check that the servers answer CLUSTER SLOTS / SENTINEL MASTER / INFO replication (ACL: +cluster|slots +info, +sentinel on the sentinels)")
		return
	}
	sev, fix := SeverityOK, ""
	if p := t.problem(); p != "" {
		sev, fix = SeverityError, p
	} else if w := t.warning(); w != "" {
		sev, fix = SeverityWarn, w
	}
	rep.add(sev, subject, t.String(), fix)
}

// redisTopology is what check found about the Redis deployment.
type redisTopology struct {
	Mode     string // standalone, cluster, sentinel
	Masters  []string
	Replicas int
	Slots    int // slots covered by a master (cluster)
	Role     string
	// Sentinel: the quorum and how many sentinels know the master.
	Quorum, Sentinels int
	MasterFlags       string
	// ClusterNode: redis.addr is a node of a Redis Cluster.
	ClusterNode bool
}

func (t redisTopology) String() string {
	switch t.Mode {
	case "cluster":
		return fmt.Sprintf("mode cluster: %d masters (%s), %d replicas, %d of %d slots covered", len(t.Masters), strings.Join(t.Masters, ", "), t.Replicas, t.Slots, clusterSlots)
	case "sentinel":
		return fmt.Sprintf("mode sentinel: master %s (flags %s), %d replicas, %d sentinels, quorum %d", strings.Join(t.Masters, ""), t.MasterFlags, t.Replicas, t.Sentinels, t.Quorum)
	}
	return fmt.Sprintf("mode standalone: role %s, %d replicas", t.Role, t.Replicas)
}

// problem names what makes the topology unusable, with the fix; "" if none.
func (t redisTopology) problem() string {
	switch {
	case t.Mode == "cluster" && t.Slots < clusterSlots:
		return fmt.Sprintf("%d hash slots have no master: keys in them can be neither deleted nor cached; assign them (redis-cli --cluster fix HOST:PORT) and run check again", clusterSlots-t.Slots)
	case t.Mode == "sentinel" && strings.Contains(t.MasterFlags, "down"):
		return "the sentinels see the master down (" + t.MasterFlags + "): wait for the failover or repair the master"
	case t.Mode == "standalone" && t.ClusterNode:
		return "redis.addr is a node of a Redis Cluster, which answers MOVED for the keys of other nodes and refuses commands across slots: list the nodes in redis.addrs and set redis.cluster: true"
	case t.Mode == "standalone" && t.Role != "master":
		return "redis.addr is a " + t.Role + ", which refuses writes (READONLY): point redis.addr at the master, or use Sentinel (redis.master_name)"
	}
	return ""
}

// warning names a weakness of the topology; "" if none.
func (t redisTopology) warning() string {
	if t.Mode == "sentinel" && t.Sentinels < t.Quorum {
		return fmt.Sprintf("only %d sentinels know the master, fewer than the quorum %d: no failover can happen", t.Sentinels, t.Quorum)
	}
	return ""
}

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// readTopology asks Redis how it is deployed: CLUSTER SLOTS on a cluster,
// SENTINEL MASTER on the sentinels, INFO replication on a standalone server.
func readTopology(ctx context.Context, c config.Redis, rdb redis.UniversalClient) (redisTopology, error) {
	t := redisTopology{Mode: c.Topology()}
	switch t.Mode {
	case "cluster":
		slots, err := rdb.ClusterSlots(ctx).Result()
		if err != nil {
			return t, fmt.Errorf("CLUSTER SLOTS: %w", err)
		}
		masters, replicas := map[string]bool{}, map[string]bool{}
		for _, s := range slots {
			if len(s.Nodes) == 0 {
				continue
			}
			t.Slots += int(s.End-s.Start) + 1
			if !masters[s.Nodes[0].Addr] {
				masters[s.Nodes[0].Addr] = true
				t.Masters = append(t.Masters, s.Nodes[0].Addr)
			}
			for _, n := range s.Nodes[1:] {
				replicas[n.Addr] = true
			}
		}
		slices.Sort(t.Masters)
		t.Replicas = len(replicas)
	case "sentinel":
		var errs []error
		for _, addr := range c.Addrs {
			o, err := redisOptions(c)
			if err != nil {
				return t, err
			}
			o.Addr, o.Username, o.Password, o.DB, o.MaxRetries = addr, c.SentinelUsername, c.SentinelPassword, 0, -1
			sc := redis.NewSentinelClient(o)
			m, err := sc.Master(ctx, c.MasterName).Result()
			sc.Close()
			if err != nil {
				errs = append(errs, fmt.Errorf("sentinel %s: SENTINEL MASTER %s: %w", addr, c.MasterName, err))
				continue
			}
			t.Masters = []string{net.JoinHostPort(m["ip"], m["port"])}
			t.MasterFlags = m["flags"]
			t.Replicas, _ = strconv.Atoi(m["num-slaves"])
			t.Quorum, _ = strconv.Atoi(m["quorum"])
			others, _ := strconv.Atoi(m["num-other-sentinels"])
			t.Sentinels = others + 1
			return t, nil
		}
		return t, errors.Join(errs...)
	default:
		info, err := rdb.Info(ctx, "replication").Result()
		if err != nil {
			return t, fmt.Errorf("INFO replication: %w", err)
		}
		if cinfo, err := rdb.Info(ctx, "cluster").Result(); err == nil && strings.Contains(cinfo, "cluster_enabled:1") {
			t.ClusterNode = true
		}
		for _, line := range strings.Split(info, "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			switch {
			case !ok:
			case k == "role":
				t.Role = v
			case k == "connected_slaves":
				t.Replicas, _ = strconv.Atoi(v)
			}
		}
		t.Masters = c.Servers()
	}
	return t, nil
}
