package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cdcinvalidate/cdcinvalidate/mapping"
)

var (
	slotRE  = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

// SplitTable splits "schema.table" (default schema public).
func SplitTable(t string) (schema, table string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

func (c *Config) validate(loc locator) []Problem {
	var ps []Problem
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	if c.Postgres.DSN == "" {
		add("postgres.dsn", "postgres.dsn is required (or set CDC_POSTGRES_DSN), "+
			"e.g. postgres://app@127.0.0.1:5432/app?sslmode=disable")
	} else if _, err := pgconn.ParseConfig(c.Postgres.DSN); err != nil {
		// pgconn quotes the connection string after its own best-effort
		// redaction, which misses passwords such as "p@ss" in a URL or
		// "se\ cret" in keyword/value form: redact it first.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			pe.ConnString = Redact(pe.ConnString)
		}
		add("postgres.dsn", "postgres.dsn is not a valid connection string: %s", Redact(err.Error()))
	}
	if !slotRE.MatchString(c.Postgres.Slot) {
		add("postgres.slot", "slot name %q is invalid: "+
			"use 1-63 lower-case letters, digits and underscores", c.Postgres.Slot)
	}
	if !identRE.MatchString(c.Postgres.Publication) {
		add("postgres.publication", "publication name %q is invalid: use a lower-case identifier "+
			"(letters, digits, underscores; not starting with a digit)", c.Postgres.Publication)
	}
	if c.Postgres.StatusInterval < 100*time.Millisecond || c.Postgres.StatusInterval > 30*time.Second {
		add("postgres.status_interval", "status_interval %s is out of range: use 100ms to 30s "+
			"(it must stay well below the server's wal_sender_timeout)", c.Postgres.StatusInterval)
	}
	if c.Postgres.TxnBufferMB < 1 {
		add("postgres.txn_buffer_mb", "txn_buffer_mb must be at least 1")
	}
	if c.Postgres.MaxBackoff < 0 {
		add("postgres.max_backoff", "max_backoff must not be negative")
	}
	if c.Postgres.StandbyRetry < 100*time.Millisecond {
		add("postgres.standby_retry", "standby_retry must be at least 100ms")
	}
	if c.Postgres.CatalogCheckInterval < 100*time.Millisecond {
		add("postgres.catalog_check_interval", "catalog_check_interval must be at least 100ms")
	}
	if w := c.Postgres.WALSenderTimeout; w != 0 && w < 2*c.Postgres.StatusInterval {
		add("postgres.wal_sender_timeout", "wal_sender_timeout %s must be at least twice status_interval (%s), "+
			"or the server drops the engine between two status updates", w, c.Postgres.StatusInterval)
	}
	c.Verify.validate(add)
	enum := func(path, msg string) {
		if msg != "" {
			add(path, "%s", msg)
		}
	}
	enum("consistency.on_history_lost",
		oneOf("on_history_lost", c.Consistency.OnHistoryLost, onHistoryLostValues))
	enum("consistency.on_first_start", oneOf("on_first_start", c.Consistency.OnFirstStart, onFirstStartValues))
	validateRedisTopology(c.Redis, add)
	for _, f := range []struct{ path, name string }{
		{c.Redis.TLSCAFile, "redis.tls_ca_file"},
		{c.Redis.TLSCertFile, "redis.tls_cert_file"},
		{c.Redis.TLSKeyFile, "redis.tls_key_file"},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			add(f.name, "%s: %v", f.name, err)
		}
	}
	if (c.Redis.TLSCertFile == "") != (c.Redis.TLSKeyFile == "") {
		add("redis.tls_cert_file", "tls_cert_file and tls_key_file go together: "+
			"set both for a client certificate, or neither")
	}
	if c.Redis.DB < 0 {
		add("redis.db", "redis.db must not be negative")
	}
	enum("sink.delete_command", oneOf("delete_command", c.Sink.DeleteCommand, deleteCommandValues))
	if c.Sink.MaxBatchKeys < 1 {
		add("sink.max_batch_keys", "max_batch_keys must be at least 1")
	}
	if c.Sink.MaxBackoff < 0 {
		add("sink.max_backoff", "max_backoff must not be negative")
	}
	if c.Postgres.TxnBufferMB > 1<<20 {
		add("postgres.txn_buffer_mb", "txn_buffer_mb %d is larger than 1 TiB", c.Postgres.TxnBufferMB)
	}
	if c.Sink.MaxInFlight < 1 || c.Sink.MaxInFlight > 64 {
		add("sink.max_in_flight", "max_in_flight must be between 1 (one pipeline at a time) and 64")
	}
	if c.Sink.MaxKeyBytes < 1 {
		add("sink.max_key_bytes", "max_key_bytes must be at least 1")
	}
	enum("sink.on_long_key", oneOf("on_long_key", c.Sink.OnLongKey, onLongKeyValues))
	if c.Sink.ScanCount < 1 {
		add("sink.scan_count", "scan_count must be at least 1")
	}
	if c.Metrics.Listen != "" {
		if _, _, err := net.SplitHostPort(c.Metrics.Listen); err != nil {
			add("metrics.listen", "metrics.listen %q is not host:port "+
				"(e.g. 127.0.0.1:9187 or :9187)", c.Metrics.Listen)
		}
	}
	if f := c.Client.LeaseFence; f != nil && (*f < 0 || *f > time.Minute || (*f > 0 && *f < time.Millisecond)) {
		add("client.lease_fence", "lease_fence %s must be 0 (delete leases) or between 1ms and 1m", *f)
	}
	if c.Client.LeaseFence != nil && !c.Client.Leases {
		add("client.lease_fence", "lease_fence is set, but client.leases is off: "+
			"turn leases on, or remove lease_fence")
	}
	if c.Metrics.ReadyMaxLag < 0 {
		add("metrics.ready_max_lag", "ready_max_lag must not be negative")
	}
	if c.Metrics.SlotPollInterval < time.Second {
		add("metrics.slot_poll_interval", "slot_poll_interval must be at least 1s")
	}
	enum("log.level", oneOf("log level", c.Log.Level, logLevelValues))
	enum("log.format", oneOf("log format", c.Log.Format, logFormatValues))
	if len(c.Rules) == 0 {
		add("rules", "no rules: add at least one, e.g.\n"+
			"      rules:\n"+
			"        - table: users\n"+
			"          keys: [\"user:{id}\"]")
	}
	for i, r := range c.Rules {
		base := fmt.Sprintf("rules[%d]", i)
		if r.Table == "" {
			add(base, "rule has no table")
		} else {
			s, t := SplitTable(r.Table)
			if !identRE.MatchString(s) || !identRE.MatchString(t) {
				add(base+".table", "table %q is not a plain lower-case name or schema.name", r.Table)
			}
		}
		onlyGeneration := len(r.Actions) > 0 &&
			slices.Equal(slices.Compact(slices.Clone(r.Actions)), []string{ActionGeneration})
		if len(r.Keys) == 0 && !onlyGeneration {
			add(base+".keys", "rule for table %q has no keys "+
				"(only a rule whose actions are [generation] may leave keys out)", r.Table)
		}
		seen := map[string]bool{}
		for j, k := range r.Keys {
			kp := fmt.Sprintf("%s.keys[%d]", base, j)
			if seen[k] {
				add(kp, "key template %q is listed twice", k)
				continue
			}
			seen[k] = true
			if _, err := mapping.ParseTemplate(k); err != nil {
				add(kp, "%s", err.Error())
			}
		}
		ps = append(ps, c.validateRuleOptions(loc, i)...)
	}
	return ps
}

// validateRuleOptions checks ops, when_changed and when of rule i, and
// compiles when.
func (c *Config) validateRuleOptions(loc locator, i int) []Problem {
	var ps []Problem
	r := &c.Rules[i]
	base := fmt.Sprintf("rules[%d]", i)
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	var ops mapping.OpSet
	if r.Ops != nil && len(r.Ops) == 0 {
		add(base+".ops", "ops is empty, so the rule would never invalidate anything: "+
			"list some of %s, or leave ops out for all of them", mapping.OpNames)
	}
	for j, o := range r.Ops {
		op, ok := mapping.ParseOp(o)
		switch {
		case !ok:
			add(fmt.Sprintf("%s.ops[%d]", base, j), "unknown operation %q in ops: use %s", o, mapping.OpNames)
		case ops&op != 0:
			add(fmt.Sprintf("%s.ops[%d]", base, j), "operation %q is listed twice in ops", o)
		}
		ops |= op
	}
	if r.WhenChanged != nil && len(r.WhenChanged) == 0 {
		add(base+".when_changed", "when_changed is empty, so no UPDATE would invalidate anything "+
			"through this rule: name columns, or leave when_changed out")
	}
	columnList(add, base, "when_changed", r.WhenChanged)
	if len(r.WhenChanged) > 0 && !ops.Has(mapping.OnUpdate) {
		add(base+".when_changed", "when_changed filters UPDATEs only, but the rule's ops %v leave out update: "+
			"remove when_changed or add update to ops", r.Ops)
	}
	ps = append(ps, c.validateRuleActions(loc, i, ops)...)
	if r.When != "" {
		cond, err := mapping.CompileCondition(r.When)
		var ce *mapping.ConditionError
		switch {
		case errors.As(err, &ce):
			for _, is := range ce.Issues {
				ps = append(ps, Problem{Where: loc.whereKey(base + ".when"),
					Msg: fmt.Sprintf("when condition %q: %s (line %d, column %d of the condition)",
						r.When, is.Msg, is.Line, is.Column)})
			}
		case err != nil:
			ps = append(ps, Problem{Where: loc.whereKey(base + ".when"), Msg: err.Error()})
		default:
			r.cond = cond
		}
	}
	return ps
}

// columnList reports empty and repeated names in a rule's list of columns.
func columnList(add func(path, format string, args ...any), base, field string, cols []string) {
	seen := map[string]bool{}
	for j, col := range cols {
		p := fmt.Sprintf("%s.%s[%d]", base, field, j)
		switch {
		case strings.TrimSpace(col) == "":
			add(p, "%s has an empty column name", field)
		case seen[col]:
			add(p, "column %q is listed twice in %s", col, field)
		}
		seen[col] = true
	}
}

// validateRuleActions checks the actions of rule i and their options.
func (c *Config) validateRuleActions(loc locator, i int, ops mapping.OpSet) []Problem {
	var ps []Problem
	r := &c.Rules[i]
	base := fmt.Sprintf("rules[%d]", i)
	add := func(path, format string, args ...any) {
		ps = append(ps, Problem{Where: loc.where(path), Msg: fmt.Sprintf(format, args...)})
	}
	if r.Actions != nil && len(r.Actions) == 0 {
		add(base+".actions", "actions is empty, so the rule would do nothing: "+
			"list some of %s, or leave actions out to delete", mapping.ActionNames)
	}
	seen := map[string]bool{}
	for j, a := range r.Actions {
		p := fmt.Sprintf("%s.actions[%d]", base, j)
		switch a {
		case ActionDelete, ActionVersion, ActionPublish, ActionStream, ActionRefresh, ActionGeneration:
		default:
			add(p, "unknown action %q: use %s", a, mapping.ActionNames)
		}
		if seen[a] {
			add(p, "action %q is listed twice", a)
		}
		seen[a] = true
	}
	if r.hasAction(ActionDelete) && r.hasAction(ActionRefresh) {
		add(base+".actions", "delete and refresh are both listed: refresh writes the keys that delete "+
			"would remove (and deletes them when the row goes); keep one")
	}
	// An option of an action the rule does not list is a mistake.
	needs := func(path, action string, set bool) {
		if set && !r.hasAction(action) {
			add(base+"."+path, "%s is set, but actions does not list %s: "+
				"add %s to actions, or remove %s", path, action, action, path)
		}
	}
	needs("delete_command", ActionDelete, r.DeleteCommand != "")
	needs("version_key", ActionVersion, r.VersionKey != "")
	needs("version_ttl", ActionVersion, r.VersionTTL != 0)
	needs("publish_channel", ActionPublish, r.PublishChannel != "")
	needs("stream_key", ActionStream, r.StreamKey != "")
	needs("stream_maxlen", ActionStream, r.StreamMaxLen != nil)
	needs("refresh_columns", ActionRefresh, r.RefreshColumns != nil)
	needs("refresh_ttl", ActionRefresh, r.RefreshTTL != 0)
	needs("refresh_ttl_jitter", ActionRefresh, r.RefreshTTLJitter != 0)
	needs("generation_key", ActionGeneration, r.GenerationKey != "")
	if r.DeleteCommand != "" {
		if msg := oneOf("delete_command", r.DeleteCommand, deleteCommandValues); msg != "" {
			add(base+".delete_command", "%s", msg)
		}
	}
	if r.VersionKey != "" {
		if err := mapping.CheckVersionKey(r.VersionKey); err != nil {
			add(base+".version_key", "%v", err)
		}
	}
	if r.VersionTTL < 0 {
		add(base+".version_ttl", "version_ttl must not be negative")
	}
	if r.VersionTTL > 0 && r.VersionTTL < time.Millisecond {
		add(base+".version_ttl", "version_ttl must be at least 1ms")
	}
	if r.StreamMaxLen != nil && *r.StreamMaxLen < 0 {
		add(base+".stream_maxlen", "stream_maxlen must not be negative (0: no cap)")
	}
	if r.RefreshTTL < 0 || (r.RefreshTTL > 0 && r.RefreshTTL < time.Millisecond) {
		add(base+".refresh_ttl", "refresh_ttl must be 0 (no TTL) or at least 1ms")
	}
	if r.RefreshTTLJitter < 0 || r.RefreshTTLJitter > 0.9 {
		add(base+".refresh_ttl_jitter", "refresh_ttl_jitter %g must be between 0 and 0.9 "+
			"(a fraction of refresh_ttl)", r.RefreshTTLJitter)
	} else if r.RefreshTTLJitter > 0 && r.RefreshTTL == 0 {
		add(base+".refresh_ttl_jitter", "refresh_ttl_jitter needs refresh_ttl")
	}
	if r.RefreshColumns != nil && len(r.RefreshColumns) == 0 {
		add(base+".refresh_columns", "refresh_columns is empty: "+
			"name columns, or leave it out to write every column")
	}
	columnList(add, base, "refresh_columns", r.RefreshColumns)
	switch r.OnTruncate {
	case "", TruncateScan:
	case TruncateGeneration:
		if !r.hasAction(ActionGeneration) {
			add(base+".on_truncate", "on_truncate: generation needs generation in actions")
		}
		if !ops.Has(mapping.OnTruncate) {
			add(base+".on_truncate", "on_truncate is set, but the rule's ops %v leave out truncate", r.Ops)
		}
	default:
		add(base+".on_truncate", "%s", oneOf("on_truncate", r.OnTruncate, onTruncateValues))
	}
	return ps
}

// validateRedisTopology checks that the Redis options name exactly one
// topology: addr (standalone), addrs with cluster (Redis Cluster), or addrs
// with master_name (Sentinel).
func validateRedisTopology(r Redis, add func(where, format string, args ...any)) {
	switch {
	case r.Addr == "" && len(r.Addrs) == 0:
		add("redis.addr", "redis.addr is required (or set CDC_REDIS_ADDR), e.g. 127.0.0.1:6379; for a Redis Cluster set redis.addrs and redis.cluster: true, for Sentinel redis.addrs (the sentinels) and redis.master_name")
		return
	case r.Addr != "" && len(r.Addrs) > 0:
		add("redis.addrs", "set redis.addr (one standalone server) or redis.addrs (cluster nodes or sentinels), not both")
		return
	case r.Cluster && r.MasterName != "":
		add("redis.master_name", "redis.cluster and redis.master_name exclude each other: a Redis Cluster is not run by sentinels")
		return
	case r.Addr != "" && r.Cluster:
		add("redis.cluster", "redis.cluster: true takes the seed nodes in redis.addrs, not redis.addr")
		return
	case r.Addr != "" && r.MasterName != "":
		add("redis.master_name", "redis.master_name takes the sentinels' addresses in redis.addrs, not redis.addr")
		return
	case len(r.Addrs) > 0 && !r.Cluster && r.MasterName == "":
		add("redis.addrs", "redis.addrs needs redis.cluster: true (the addresses are cluster nodes) or redis.master_name (they are sentinels); for one standalone server use redis.addr")
		return
	}
	if r.Addr != "" {
		if _, _, err := net.SplitHostPort(r.Addr); err != nil {
			add("redis.addr", "redis.addr %q is not host:port", r.Addr)
		}
	}
	for i, a := range r.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			add(fmt.Sprintf("redis.addrs[%d]", i), "redis.addrs entry %q is not host:port", a)
		}
	}
	if r.Cluster && r.DB != 0 {
		add("redis.db", "redis.db must be 0 with redis.cluster: a Redis Cluster has only database 0")
	}
	if r.WaitReplicas < 0 {
		add("redis.wait_replicas", "redis.wait_replicas must not be negative")
	}
	if r.WaitTimeout < 0 {
		add("redis.wait_timeout", "redis.wait_timeout must not be negative")
	}
	if r.MasterName == "" && (r.SentinelPassword != "" || r.SentinelUsername != "") {
		add("redis.sentinel_password", "redis.sentinel_username / sentinel_password are for sentinels: set redis.master_name and list the sentinels in redis.addrs, or remove them")
	}
}
