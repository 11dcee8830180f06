package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"
)

// What the catch-up variants (workload_options.go) do in Redis, how the
// bench prepares it, watches it, and checks it afterwards.

// Redis names of the action variants. row:{id} is the refreshed key of the
// variant "all", whose delete rule owns item:{id}.
const (
	publishChannel = "cdcbench:events"
	streamKey      = "cdcbench:stream"
	generationKey  = "cdcbench:gen"
	versionSuffix  = ":v" // the default version_key "{key}:v"
	refreshPrefix  = "row:"
	prefilled      = "cached"
)

// multiTable names the bench tables of a variant with several tables.
func multiTable(t int) string { return fmt.Sprintf("cdcbench_t%d", t) }

// has reports whether the variant's rules use action a.
func (v variant) has(a string) bool { return v.action == a || v.action == ActionAll }

// deletes reports whether the variant's rules delete item:{id} keys.
func (v variant) deletes() bool { return v.has(ActionDelete) }

// keyFormats are the keys per row the delete rule produces ("%d" the id):
// item:%d, item:%d:1, ... item:%d:(fanout-1).
func (v variant) keyFormats() []string {
	out := []string{keyPrefix + "%d"}
	for i := 1; i < v.fanout; i++ {
		out = append(out, keyPrefix+"%d:"+strconv.Itoa(i))
	}
	return out
}

// refreshFormat is the key the refresh rule writes.
func (v variant) refreshFormat() string {
	if v.action == ActionAll {
		return refreshPrefix + "%d"
	}
	return keyPrefix + "%d"
}

// rulesYAML is the rules section of the engine's configuration.
func (v variant) rulesYAML() string {
	var s strings.Builder
	s.WriteString("rules:\n")
	quoted := func(formats []string) string {
		q := make([]string, len(formats))
		for i, f := range formats {
			q[i] = strconv.Quote(strings.ReplaceAll(f, "%d", "{id}"))
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	if v.tables > 1 || v.rules > 1 {
		for j := 0; j < v.rules; j++ {
			t := table
			if v.tables > 1 {
				t = multiTable(j%v.tables + 1)
			}
			fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n", t, quoted(v.keyFormats()))
		}
		return s.String()
	}
	item := quoted(v.keyFormats())
	switch v.action {
	case ActionDelete:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n", table, item)
	case ActionVersion:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [version]\n", table, item)
	case ActionRefresh:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [refresh]\n", table, item)
	case ActionPublish:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [publish]\n    publish_channel: %q\n", table, item, publishChannel)
	case ActionStream:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [stream]\n    stream_key: %q\n", table, item, streamKey)
	case ActionGeneration:
		fmt.Fprintf(&s, "  - table: %s\n    actions: [generation]\n    generation_key: %q\n", table, generationKey)
	case ActionAll:
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [delete, version, publish, stream, generation]\n"+
			"    publish_channel: %q\n    stream_key: %q\n    generation_key: %q\n", table, item, publishChannel, streamKey, generationKey)
		fmt.Fprintf(&s, "  - table: %s\n    keys: %s\n    actions: [refresh]\n", table, quoted([]string{refreshPrefix + "%d"}))
	}
	return s.String()
}

// verifyYAML is the verify section: the online verifier at 1 in rate.
func verifyYAML(rate int) string {
	if rate <= 0 {
		return ""
	}
	return fmt.Sprintf("verify:\n  enabled: true\n  sample_rate: %d\n", rate)
}

// prepareRedis sets up Redis for one run of v: the keys the rules act on
// (and item:0, which no row maps to: gone afterwards means the engine
// flushed), no version keys, stream or generation key of an earlier run.
func (b *bench) prepareRedis(ctx context.Context, v variant) error {
	rows := b.opts.Rows
	b.noteKeys(v)
	if err := b.rdb.Set(ctx, keyPrefix+"0", prefilled, 0).Err(); err != nil {
		return fmt.Errorf("redis: set %s0: %w", keyPrefix, err)
	}
	var set, del []string
	if v.deletes() {
		set = append(set, v.keyFormats()...)
	}
	if v.has(ActionRefresh) {
		set = append(set, v.refreshFormat())
	}
	if v.has(ActionVersion) {
		del = append(del, keyPrefix+"%d"+versionSuffix)
	}
	if err := b.pipeKeys(ctx, 1, rows, set, true); err != nil {
		return err
	}
	if err := b.pipeKeys(ctx, 1, rows, del, false); err != nil {
		return err
	}
	pipe := b.rdb.Pipeline()
	b.unlinkCmds(ctx, pipe, []string{streamKey, generationKey}) // one per key on a cluster
	_, err := pipe.Exec(ctx)
	return err
}

// noteKeys records which keys a run may create, for cleanup with given
// servers.
func (b *bench) noteKeys(v variant) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.keysSet = max(b.keysSet, b.opts.Rows)
	b.maxFanout = max(b.maxFanout, v.fanout)
	b.usedActions = b.usedActions || v.action != ActionDelete
}

// cleanupVariantKeys deletes, with given servers, the keys of the action
// and fan-out variants (item:N itself is deleted by cleanup).
func (b *bench) cleanupVariantKeys(ctx context.Context) {
	if b.throwaway || b.rdb == nil || (b.maxFanout <= 1 && !b.usedActions) {
		return
	}
	formats := variant{fanout: b.maxFanout}.keyFormats()[1:]
	if b.usedActions {
		formats = append(formats, keyPrefix+"%d"+versionSuffix, refreshPrefix+"%d")
	}
	if err := b.pipeKeys(ctx, 0, b.keysSet, formats, false); err != nil {
		b.warn("could not delete the bench's keys (%s): %v", strings.Join(formats, ", "), err)
	}
	pipe := b.rdb.Pipeline()
	b.unlinkCmds(ctx, pipe, []string{streamKey, generationKey}) // one per key on a cluster
	if _, err := pipe.Exec(ctx); err != nil {
		b.warn("could not delete %s and %s: %v", streamKey, generationKey, err)
	}
}

// pipeKeys sets (to "cached") or unlinks the keys of formats for ids
// from..to.
func (b *bench) pipeKeys(ctx context.Context, from, to int, formats []string, set bool) error {
	if len(formats) == 0 {
		return nil
	}
	const chunk = 5000
	pipe := b.rdb.Pipeline()
	n := 0
	flush := func() error {
		if n == 0 {
			return nil
		}
		n = 0
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("redis: prepare keys: %w", err)
		}
		return nil
	}
	for i := from; i <= to; i++ {
		for _, f := range formats {
			k := fmt.Sprintf(f, i)
			if set {
				pipe.Set(ctx, k, prefilled, 0)
			} else {
				pipe.Unlink(ctx, k)
			}
			if n++; n >= chunk {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	return flush()
}

// countFormats counts which keys of formats exist for ids from..to.
func (b *bench) countFormats(ctx context.Context, from, to int, formats []string) (int, error) {
	const chunk = 1000
	pipe := b.rdb.Pipeline()
	var cmds []*redis.IntCmd
	keys := make([]string, 0, chunk)
	for i := from; i <= to; i++ {
		for _, f := range formats {
			keys = append(keys, fmt.Sprintf(f, i))
			if len(keys) == chunk {
				cmds = append(cmds, b.existsCmds(ctx, pipe, keys)...)
				keys = make([]string, 0, chunk)
			}
		}
	}
	if len(keys) > 0 {
		cmds = append(cmds, b.existsCmds(ctx, pipe, keys)...)
	}
	if len(cmds) == 0 {
		return 0, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redis: count keys: %w", err)
	}
	n := 0
	for _, c := range cmds {
		n += int(c.Val())
	}
	return n, nil
}

// subscriber counts the messages published on publishChannel during a run.
type subscriber struct {
	ps      *redis.PubSub
	mu      sync.Mutex
	msgs    []string
	n       atomic.Int64
	done    chan struct{}
	lastMsg atomic.Int64 // unix nanoseconds of the last message
}

// subscribe listens on publishChannel when v publishes; nil otherwise.
func (b *bench) subscribe(ctx context.Context, v variant) (*subscriber, error) {
	if !v.has(ActionPublish) {
		return nil, nil
	}
	ps := b.rdb.Subscribe(ctx, publishChannel)
	if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
		_ = ps.Close()
		return nil, fmt.Errorf("redis: subscribe %s: %w", publishChannel, err)
	}
	s := &subscriber{ps: ps, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			m, err := ps.ReceiveMessage(context.Background())
			if err != nil {
				return // closed
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, m.Payload)
			s.mu.Unlock()
			s.n.Add(1)
			s.lastMsg.Store(time.Now().UnixNano())
		}
	}()
	return s, nil
}

// close stops the subscriber and returns the messages it received.
func (s *subscriber) close() []string {
	if s == nil {
		return nil
	}
	_ = s.ps.Close()
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs
}

// settle waits until no message came for quiet (delivery to the
// subscriber may trail the PUBLISH), at most a minute.
func (s *subscriber) settle(quiet time.Duration) {
	if s == nil {
		return
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		last := time.Unix(0, s.lastMsg.Load())
		if time.Since(last) >= quiet {
			return
		}
		time.Sleep(quiet / 4)
	}
}

// probe watches, every pollEvery while the engine runs, the Redis state
// that the last changes of the workload alter: the last row's keys, the
// stream's length, the generation, the messages received. The time of its
// last change is when the engine's last effect became visible in Redis.
type probe struct {
	stop     chan struct{}
	done     chan struct{}
	last     time.Time // of the last change of the state seen
	commands int64     // Redis commands the probe sent
	read     func() string
	prev     string
}

func (b *bench) startProbe(ctx context.Context, v variant, sub *subscriber) *probe {
	p := &probe{stop: make(chan struct{}), done: make(chan struct{})}
	rows := b.opts.Rows
	var cmds []func(redis.Pipeliner) redis.Cmder
	if v.deletes() {
		fs := v.keyFormats()
		last := fmt.Sprintf(fs[len(fs)-1], rows)
		cmds = append(cmds, func(p redis.Pipeliner) redis.Cmder { return p.Exists(ctx, last) })
	}
	if v.has(ActionRefresh) {
		k := fmt.Sprintf(v.refreshFormat(), rows)
		cmds = append(cmds, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, k) })
	}
	if v.has(ActionVersion) {
		k := fmt.Sprintf(keyPrefix+"%d"+versionSuffix, rows)
		cmds = append(cmds, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, k) })
	}
	if v.has(ActionStream) {
		cmds = append(cmds, func(p redis.Pipeliner) redis.Cmder { return p.XLen(ctx, streamKey) })
	}
	if v.has(ActionGeneration) {
		cmds = append(cmds, func(p redis.Pipeliner) redis.Cmder { return p.Get(ctx, generationKey) })
	}
	read := func() string {
		state := ""
		if len(cmds) > 0 {
			pipe := b.rdb.Pipeline()
			for _, c := range cmds {
				c(pipe)
			}
			res, _ := pipe.Exec(ctx)
			p.commands += int64(len(cmds))
			var sb strings.Builder
			for _, r := range res {
				sb.WriteString(r.String())
				sb.WriteByte('|')
			}
			state = sb.String()
		}
		if sub != nil {
			state += strconv.FormatInt(sub.n.Load(), 10)
		}
		return state
	}
	// The state before the engine starts, read here: a first read in the
	// goroutine could come late on a busy machine, after the change.
	p.read, p.prev = read, read()
	go func() {
		defer close(p.done)
		tick := time.NewTicker(pollEvery)
		defer tick.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			state := read()
			if state != p.prev {
				p.last = time.Now()
			}
			p.prev = state
		}
	}()
	return p
}

// finish stops the probe and returns the time of the last change it saw
// (zero if none) and the Redis commands it sent. A publish variant's last
// message is taken from the subscriber, which times it exactly.
func (p *probe) finish(sub *subscriber) (time.Time, int64) {
	close(p.stop)
	<-p.done
	// A change after the last tick, before the confirmation was seen.
	if p.read() != p.prev {
		p.last = time.Now()
	}
	last := p.last
	if sub != nil {
		if t := time.Unix(0, sub.lastMsg.Load()); sub.n.Load() > 0 && t.After(last) {
			last = t
		}
	}
	return last, p.commands
}

// runCheck is what the checks of one run found.
type runCheck struct {
	keysLeft int
	problems []string
}

// checkRun checks, after the engine confirmed the end of the workload,
// that Redis holds what the variant's rules should have done, so that a
// run of a broken path is reported rather than measured.
func (b *bench) checkRun(ctx context.Context, w workload, start, end pglogrepl.LSN, msgs []string) (runCheck, error) {
	var rc runCheck
	v, rows := w.v, b.opts.Rows
	if v.deletes() {
		n, err := b.countFormats(ctx, 1, rows, v.keyFormats())
		if err != nil {
			return rc, err
		}
		rc.keysLeft = n
		if n > 0 {
			rc.problems = append(rc.problems, fmt.Sprintf("the engine left %d of %d prefilled keys undeleted", n, rows*v.fanout))
		}
	}
	if v.has(ActionVersion) {
		bad, err := b.checkVersions(ctx, start, end)
		if err != nil {
			return rc, err
		}
		if bad != "" {
			rc.problems = append(rc.problems, bad)
		}
	}
	if v.has(ActionRefresh) {
		bad, err := b.checkRefreshed(ctx, v.refreshFormat())
		if err != nil {
			return rc, err
		}
		if bad != "" {
			rc.problems = append(rc.problems, bad)
		}
	}
	if v.has(ActionPublish) {
		keys, bad := countMessageKeys(msgs)
		switch {
		case bad > 0:
			rc.problems = append(rc.problems, fmt.Sprintf("%d of %d published messages are not the engine's JSON", bad, len(msgs)))
		case keys != rows:
			rc.problems = append(rc.problems, fmt.Sprintf("the published messages name %d keys, want %d (one per updated row)", keys, rows))
		}
	}
	if v.has(ActionStream) {
		events, err := b.streamEvents(ctx)
		if err != nil {
			return rc, err
		}
		if keys, bad := countMessageKeys(events); bad > 0 || keys != rows {
			rc.problems = append(rc.problems, fmt.Sprintf("stream %s: %d entries name %d keys (%d unreadable), want %d keys", streamKey, len(events), keys, bad, rows))
		}
	}
	if v.has(ActionGeneration) {
		g, err := b.rdb.Get(ctx, generationKey).Int64()
		if err != nil && err != redis.Nil {
			return rc, fmt.Errorf("redis: get %s: %w", generationKey, err)
		}
		// One increment per batch of changes the sink applies: a large
		// transaction may span several batches.
		if g < 1 || g > int64(rows) {
			rc.problems = append(rc.problems, fmt.Sprintf("generation %s is %d after %d changes, want 1 to %d", generationKey, g, rows, rows))
		}
	}
	return rc, nil
}

// checkVersions: every item:N:v holds an LSN in (start, end].
func (b *bench) checkVersions(ctx context.Context, start, end pglogrepl.LSN) (string, error) {
	missing, outside := 0, 0
	for lo := 1; lo <= b.opts.Rows; lo += 1000 {
		keys := make([]string, 0, 1000)
		for i := lo; i <= min(lo+999, b.opts.Rows); i++ {
			keys = append(keys, keyPrefix+strconv.Itoa(i)+versionSuffix)
		}
		vals, err := b.mget(ctx, keys)
		if err != nil {
			return "", fmt.Errorf("redis: read version keys: %w", err)
		}
		for _, v := range vals {
			s, ok := v.(string)
			if !ok {
				missing++
				continue
			}
			lsn, err := pglogrepl.ParseLSN(s)
			if err != nil || lsn <= start || lsn > end {
				outside++
			}
		}
	}
	if missing+outside == 0 {
		return "", nil
	}
	return fmt.Sprintf("version keys: %d missing, %d not an LSN in (%s, %s], of %d", missing, outside, start, end, b.opts.Rows), nil
}

// refreshColumns are the bench table's columns as text, in the order of
// its definition (benchTableSQL).
const refreshColumns = `id::text, n::text, payload, name, price::text, qty::text, active::text, updated_at::text, attrs::text, ref::text`

// checkRefreshed: every refreshed key holds its row as JSON, field by
// field equal to the row read now.
func (b *bench) checkRefreshed(ctx context.Context, format string) (string, error) {
	rows, err := b.db.Query(ctx, `SELECT `+refreshColumns+` FROM `+table+` ORDER BY id`)
	if err != nil {
		return "", fmt.Errorf("postgres: read the bench rows: %w", err)
	}
	names := []string{"id", "n", "payload", "name", "price", "qty", "active", "updated_at", "attrs", "ref"}
	want := map[string][]*string{}
	var ids []string
	for rows.Next() {
		vals := make([]*string, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return "", err
		}
		id := *vals[0]
		ids = append(ids, id)
		want[id] = vals
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	differ, example := 0, ""
	for lo := 0; lo < len(ids); lo += 1000 {
		chunk := ids[lo:min(lo+1000, len(ids))]
		keys := make([]string, len(chunk))
		for i, id := range chunk {
			n, _ := strconv.Atoi(id)
			keys[i] = fmt.Sprintf(format, n)
		}
		got, err := b.mget(ctx, keys)
		if err != nil {
			return "", fmt.Errorf("redis: read refreshed keys: %w", err)
		}
		for i, g := range got {
			s, _ := g.(string)
			if why := rowDiffers(names, want[chunk[i]], s); why != "" {
				differ++
				if example == "" {
					example = keys[i] + ": " + why
				}
			}
		}
	}
	if differ == 0 {
		return "", nil
	}
	return fmt.Sprintf("%d of %d refreshed keys differ from their rows (e.g. %s)", differ, len(ids), example), nil
}

// rowDiffers compares a refreshed value (the engine's JSON: numbers and
// booleans as JSON, json/jsonb as JSON, the rest as text) with the row's
// columns as PostgreSQL text; it returns why they differ, "" if they don't.
func rowDiffers(names []string, want []*string, value string) string {
	var got map[string]json.RawMessage
	if err := json.Unmarshal([]byte(value), &got); err != nil {
		if len(value) > 40 {
			value = value[:40] + "..."
		}
		return fmt.Sprintf("not a JSON object: %q", value)
	}
	if len(got) != len(names) {
		return fmt.Sprintf("%d members, want %d", len(got), len(names))
	}
	for i, name := range names {
		raw, ok := got[name]
		if !ok {
			return "no member " + name
		}
		if !jsonEqualsText(raw, want[i]) {
			w := "NULL"
			if want[i] != nil {
				w = *want[i]
			}
			return fmt.Sprintf("%s is %s, the row has %s", name, raw, w)
		}
	}
	return ""
}

func jsonEqualsText(raw json.RawMessage, text *string) bool {
	raw = bytes.TrimSpace(raw)
	if text == nil {
		return string(raw) == "null"
	}
	switch {
	case len(raw) == 0:
		return false
	case raw[0] == '"':
		var s string
		return json.Unmarshal(raw, &s) == nil && s == *text
	case string(raw) == "true":
		return *text == "true" || *text == "t"
	case string(raw) == "false":
		return *text == "false" || *text == "f"
	case raw[0] == '{' || raw[0] == '[':
		var a, b bytes.Buffer
		return json.Compact(&a, raw) == nil && json.Compact(&b, []byte(*text)) == nil && a.String() == b.String()
	default: // a number, as PostgreSQL printed it
		return string(raw) == *text
	}
}

// countMessageKeys counts the keys named by publish/stream messages
// (sink.Message: {"lsn", "part", "last", "changes": [{"keys": [...]}]});
// bad counts messages that are not such JSON.
func countMessageKeys(msgs []string) (keys, bad int) {
	for _, m := range msgs {
		var msg struct {
			LSN     string `json:"lsn"`
			Changes []struct {
				Keys []string `json:"keys"`
			} `json:"changes"`
		}
		if err := json.Unmarshal([]byte(m), &msg); err != nil || msg.LSN == "" {
			bad++
			continue
		}
		for _, c := range msg.Changes {
			keys += len(c.Keys)
		}
	}
	return keys, bad
}

// streamEvents reads the event field of every entry of streamKey.
func (b *bench) streamEvents(ctx context.Context) ([]string, error) {
	var out []string
	from := "-"
	for {
		entries, err := b.rdb.XRangeN(ctx, streamKey, from, "+", 10000).Result()
		if err != nil {
			return nil, fmt.Errorf("redis: read stream %s: %w", streamKey, err)
		}
		for _, e := range entries {
			s, _ := e.Values["event"].(string)
			out = append(out, s)
		}
		if len(entries) < 10000 {
			return out, nil
		}
		from = "(" + entries[len(entries)-1].ID
	}
}
