package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
	"github.com/cdcinvalidate/cdcinvalidate/sink"
)

// Redis topologies of --redis-topology.
const (
	TopologyStandalone = "standalone"
	TopologyCluster    = "cluster"
	TopologySentinel   = "sentinel"
)

// registerTopologyFlags defines the flags of the Redis topology, the
// distance to Redis and the instances (RegisterFlags calls it).
func (o *Options) registerTopologyFlags(fs *flag.FlagSet) {
	fs.DurationVar(&o.RedisRTT, "redis-rtt", o.RedisRTT, "round-trip `time` added between the engine and Redis by an in-process TCP delay proxy "+
		"(e.g. 1ms; standalone only); the bench's own Redis clients connect directly")
	fs.StringVar(&o.RedisTopology, "redis-topology", o.RedisTopology, "`topology` of the throwaway Redis: standalone, cluster (3 masters + 3 replicas) "+
		"or sentinel (1 master, 1 replica, 3 sentinels); with --redis-addr: cluster takes the seed nodes, sentinel the sentinels (comma-separated)")
	fs.StringVar(&o.RedisMasterName, "redis-master-name", o.RedisMasterName, "master `name` the sentinels of a given Sentinel deployment monitor (--redis-topology sentinel --redis-addr ...)")
	fs.IntVar(&o.WaitReplicas, "wait-replicas", o.WaitReplicas, "set the engine's redis.wait_replicas to `N` (WAIT N after every batch); "+
		"a throwaway standalone Redis then gets N replicas, a throwaway Sentinel deployment has 1")
	fs.IntVar(&o.Instances, "instances", o.Instances, "with `N` >= 2 the catch-up phase measures N engines, each on its own table, publication and slot, "+
		"against one engine and against N pg_recvlogical over the same total rows")
}

// validateTopology checks the topology options.
func (o *Options) validateTopology() []error {
	var errs []error
	switch o.RedisTopology {
	case "", TopologyStandalone, TopologyCluster, TopologySentinel:
	default:
		errs = append(errs, fmt.Errorf("--redis-topology %q: want standalone, cluster or sentinel", o.RedisTopology))
	}
	if o.RedisRTT < 0 {
		errs = append(errs, fmt.Errorf("--redis-rtt %s: must be 0 or more", o.RedisRTT))
	}
	if o.RedisRTT > 0 && o.topology() != TopologyStandalone {
		errs = append(errs, fmt.Errorf("--redis-rtt works with --redis-topology standalone only: cluster and Sentinel clients learn "+
			"the nodes' addresses from the servers, which would bypass the delay proxy"))
	}
	if o.topology() == TopologyCluster && o.RedisDB != 0 {
		errs = append(errs, fmt.Errorf("--redis-db %d: a Redis Cluster has only database 0", o.RedisDB))
	}
	if o.WaitReplicas < 0 {
		errs = append(errs, fmt.Errorf("--wait-replicas %d: must be 0 or more", o.WaitReplicas))
	}
	if o.WaitReplicas > 1 && o.topology() == TopologySentinel && o.RedisAddr == "" {
		errs = append(errs, fmt.Errorf("--wait-replicas %d: the throwaway Sentinel deployment has 1 replica", o.WaitReplicas))
	}
	if o.WaitReplicas > 0 && o.topology() == TopologyCluster && o.RedisAddr == "" {
		// Allowed: the throwaway cluster has one replica per master; the
		// engine says whether it supports wait_replicas on a cluster.
		if o.WaitReplicas > 1 {
			errs = append(errs, fmt.Errorf("--wait-replicas %d: the throwaway cluster has 1 replica per master", o.WaitReplicas))
		}
	}
	if o.Instances < 1 {
		errs = append(errs, fmt.Errorf("--instances %d: must be at least 1", o.Instances))
	}
	if o.Instances > 1 && o.Rows < o.Instances {
		errs = append(errs, fmt.Errorf("--instances %d: needs at least as many --rows (%d)", o.Instances, o.Rows))
	}
	return errs
}

func (o *Options) topology() string {
	if o.RedisTopology == "" {
		return TopologyStandalone
	}
	return o.RedisTopology
}

// RedisSettings describe the Redis the engine wrote to.
type RedisSettings struct {
	Topology string `json:"topology"`
	// Servers: "1", "3 masters + 3 replicas", "1 master + 1 replica + 3 sentinels".
	Servers string `json:"servers,omitempty"`
	// RTTMs is the round trip added between the engine and Redis
	// (--redis-rtt), in milliseconds.
	RTTMs        float64 `json:"rtt_ms"`
	WaitReplicas int     `json:"wait_replicas"`
}

// describe is a line for the report's header.
func (s RedisSettings) describe() string {
	if s.Topology == "" {
		return ""
	}
	out := "Redis: " + s.Topology
	if s.Servers != "" {
		out += " (" + s.Servers + ")"
	}
	if s.RTTMs > 0 {
		out += fmt.Sprintf("; the engine reaches it through a delay proxy adding %s ms of round trip "+
			"(the bench's own clients do not: latencies include the RTT once, the engine's delete)", trimFloat(s.RTTMs))
	}
	if s.WaitReplicas > 0 {
		out += fmt.Sprintf("; engine with redis.wait_replicas: %d", s.WaitReplicas)
	}
	return out
}

// topo is the Redis side of a run beyond a single standalone server.
type topo struct {
	cluster  *harness.Cluster
	sentinel *harness.Sentinel
	replicas []*harness.Redis // of a throwaway standalone Redis (--wait-replicas)
	proxy    *rttProxy        // --redis-rtt

	// addrs are the seed nodes (cluster) or the sentinels; masterName the
	// Sentinel master's name.
	addrs      []string
	masterName string

	keyspaceOld map[string]string // cluster: notify-keyspace-events per master address
}

// startRedis starts the throwaway Redis of the topology and sets
// b.redisAddr (a standalone server or the master at the start) and b.topo.
func (b *bench) startRedis(ctx context.Context) error {
	var err error
	switch b.opts.topology() {
	case TopologyCluster:
		b.prog.Step("starting a throwaway Redis Cluster (3 masters + 3 replicas)")
		if b.topo.cluster, err = harness.StartCluster(ctx, harness.ClusterOptions{}); err != nil {
			return err
		}
		b.topo.addrs = b.topo.cluster.Addrs()
		b.redisAddr = b.topo.addrs[0]
	case TopologySentinel:
		b.prog.Step("starting a throwaway Redis master, replica and 3 sentinels")
		if b.topo.sentinel, err = harness.StartSentinel(ctx, harness.SentinelOptions{}); err != nil {
			return err
		}
		b.topo.addrs = b.topo.sentinel.Addrs()
		b.topo.masterName = b.topo.sentinel.Name
		b.redisAddr = b.topo.sentinel.Master.Addr()
	default:
		if b.rd, err = harness.StartRedis(ctx, harness.RedisOptions{}); err != nil {
			return err
		}
		b.redisAddr = b.rd.Addr()
		for i := 0; i < b.opts.WaitReplicas; i++ {
			r, err := harness.StartRedis(ctx, harness.RedisOptions{Args: []string{"--replicaof", "127.0.0.1", strconv.Itoa(b.rd.Port())}})
			if err != nil {
				return fmt.Errorf("start replica %d for --wait-replicas: %w", i+1, err)
			}
			b.topo.replicas = append(b.topo.replicas, r)
		}
	}
	return nil
}

// givenRedis sets the topology's addresses from --redis-addr.
func (b *bench) givenRedis() {
	b.redisAddr = b.opts.RedisAddr
	switch b.opts.topology() {
	case TopologyCluster, TopologySentinel:
		for _, a := range strings.Split(b.opts.RedisAddr, ",") {
			if a = strings.TrimSpace(a); a != "" {
				b.topo.addrs = append(b.topo.addrs, a)
			}
		}
		b.topo.masterName = b.opts.RedisMasterName
		if b.topo.masterName == "" {
			b.topo.masterName = "mymaster"
		}
	}
}

// standaloneOptions are the bench's options for a client of one Redis
// server at addr, with CDC_REDIS_USERNAME and CDC_REDIS_PASSWORD.
func (b *bench) standaloneOptions(addr string, pool int) *redis.Options {
	return &redis.Options{Addr: addr, DB: b.opts.RedisDB, PoolSize: pool,
		Username: os.Getenv("CDC_REDIS_USERNAME"), Password: os.Getenv("CDC_REDIS_PASSWORD")}
}

// connectRedis opens the bench's own client (directly, never through the
// delay proxy), waits for --wait-replicas replicas of a throwaway
// standalone Redis, and starts the delay proxy for the engine.
func (b *bench) connectRedis(ctx context.Context) error {
	user, pass := os.Getenv("CDC_REDIS_USERNAME"), os.Getenv("CDC_REDIS_PASSWORD")
	switch b.opts.topology() {
	case TopologyCluster:
		b.rdb = redis.NewClusterClient(&redis.ClusterOptions{Addrs: b.topo.addrs, Username: user, Password: pass, PoolSize: 16})
	case TopologySentinel:
		// The failover client logs every master it selects on stderr,
		// through the package's one logger; in the bench process it would
		// only break into the progress display and the report.
		redis.SetLogger(quietRedisLog{})
		b.rdb = redis.NewFailoverClient(&redis.FailoverOptions{MasterName: b.topo.masterName, SentinelAddrs: b.topo.addrs,
			DB: b.opts.RedisDB, Username: user, Password: pass, PoolSize: 16})
	default:
		b.rdb = redis.NewClient(b.standaloneOptions(b.redisAddr, 16))
	}
	if len(b.topo.replicas) > 0 {
		if err := waitReplicas(ctx, b.rdb, len(b.topo.replicas)); err != nil {
			return err
		}
	}
	if b.opts.RedisRTT > 0 {
		p, err := startRTTProxy(b.redisAddr, b.opts.RedisRTT)
		if err != nil {
			return err
		}
		b.topo.proxy = p
	}
	return nil
}

// waitReplicas waits until the master has n replicas online.
func waitReplicas(ctx context.Context, rdb redis.UniversalClient, n int) error {
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil && strings.Count(info, "state=online") >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis: %d replica(s) not online after a minute (INFO replication: %v %q)", n, err, info)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// redisSettings describes the topology for the report.
func (b *bench) redisSettings() RedisSettings {
	s := RedisSettings{Topology: b.opts.topology(), RTTMs: ms(b.opts.RedisRTT), WaitReplicas: b.opts.WaitReplicas}
	switch {
	case b.topo.cluster != nil:
		s.Servers = "3 masters + 3 replicas"
	case b.topo.sentinel != nil:
		s.Servers = fmt.Sprintf("1 master + 1 replica + %d sentinels", len(b.topo.sentinel.Sentinels))
	case b.throwaway:
		s.Servers = "1"
		if n := len(b.topo.replicas); n > 0 {
			s.Servers = fmt.Sprintf("1 master + %d replica%s", n, plural(n))
		}
	}
	return s
}

// engineRedisYAML is the engine's redis section (without the header line).
func (b *bench) engineRedisYAML() string {
	q := func(v string) string { return strconv.Quote(v) } // a JSON string is a YAML scalar
	var s strings.Builder
	switch b.opts.topology() {
	case TopologyCluster, TopologySentinel:
		qs := make([]string, len(b.topo.addrs))
		for i, a := range b.topo.addrs {
			qs[i] = q(a)
		}
		fmt.Fprintf(&s, "  addrs: [%s]\n", strings.Join(qs, ", "))
		if b.opts.topology() == TopologyCluster {
			s.WriteString("  cluster: true\n")
		} else {
			fmt.Fprintf(&s, "  master_name: %s\n  db: %d\n", q(b.topo.masterName), b.opts.RedisDB)
		}
	default:
		addr := b.redisAddr
		if b.topo.proxy != nil {
			addr = b.topo.proxy.Addr()
		}
		fmt.Fprintf(&s, "  addr: %s\n  db: %d\n", q(addr), b.opts.RedisDB)
	}
	if b.opts.WaitReplicas > 0 {
		fmt.Fprintf(&s, "  wait_replicas: %d\n", b.opts.WaitReplicas)
	}
	return s.String()
}

// isCluster: multi-key commands must not span hash slots.
func (b *bench) isCluster() bool { return b.opts.topology() == TopologyCluster }

// forEachMaster runs fn on every master: the one server, or each master
// of a cluster (in parallel).
func (b *bench) forEachMaster(ctx context.Context, fn func(ctx context.Context, c *redis.Client) error) error {
	switch c := b.rdb.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, fn)
	case *redis.Client:
		return fn(ctx, c)
	}
	return fmt.Errorf("redis: unexpected client %T", b.rdb)
}

// existsCmds queues EXISTS of keys on pipe: one command for all of them,
// or one per key on a cluster (keys in different slots).
func (b *bench) existsCmds(ctx context.Context, pipe redis.Pipeliner, keys []string) []*redis.IntCmd {
	if !b.isCluster() {
		return []*redis.IntCmd{pipe.Exists(ctx, keys...)}
	}
	out := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		out[i] = pipe.Exists(ctx, k)
	}
	return out
}

// mget reads keys as MGET does (nil for a missing key); on a cluster one
// GET per key, pipelined (keys in different slots).
func (b *bench) mget(ctx context.Context, keys []string) ([]any, error) {
	if !b.isCluster() {
		return b.rdb.MGet(ctx, keys...).Result()
	}
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make([]any, len(keys))
	for i, c := range cmds {
		if v, err := c.Result(); err == nil {
			out[i] = v
		}
	}
	return out, nil
}

// unlinkCmds queues UNLINK of keys on pipe, one per key on a cluster.
func (b *bench) unlinkCmds(ctx context.Context, pipe redis.Pipeliner, keys []string) {
	if !b.isCluster() {
		pipe.Unlink(ctx, keys...)
		return
	}
	for _, k := range keys {
		pipe.Unlink(ctx, k)
	}
}

// clusterRedisCounters sums INFO stats and cpu over a cluster's masters.
func (b *bench) clusterRedisCounters(ctx context.Context) redisCounters {
	var mu sync.Mutex
	sum := redisCounters{ok: true}
	err := b.forEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		info, err := c.Info(ctx, "stats", "cpu").Result()
		if err != nil {
			return err
		}
		rc := parseRedisCounters(info)
		mu.Lock()
		defer mu.Unlock()
		sum.ok = sum.ok && rc.ok
		sum.commands += rc.commands + 1 // the INFO: since subtracts one
		sum.cpu += rc.cpu
		return nil
	})
	if err != nil || !sum.ok {
		return redisCounters{}
	}
	sum.commands--
	return sum
}

// watchDeletions turns on keyspace notifications for generic commands on
// every master (a cluster node notifies only of its own keys) and reports
// the deletion of every item:* key to tr. The subscriptions are the
// bench's own, direct connections, never through --redis-rtt's proxy.
// Stop them with the returned function.
func (b *bench) watchDeletions(ctx context.Context, tr *tracker) (stop func(), err error) {
	var mu sync.Mutex
	var subs []*redis.PubSub
	stop = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, s := range subs {
			_ = s.Close()
		}
		subs = nil
	}
	channelPrefix := fmt.Sprintf("__keyspace@%d__:", b.opts.RedisDB)
	err = b.forEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		old, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
		if err != nil {
			return fmt.Errorf("redis %s: CONFIG GET notify-keyspace-events: %w", c.Options().Addr, err)
		}
		flags := old["notify-keyspace-events"]
		mu.Lock()
		if b.isCluster() {
			if b.topo.keyspaceOld == nil {
				b.topo.keyspaceOld = map[string]string{}
			}
			b.topo.keyspaceOld[c.Options().Addr] = flags
		} else {
			b.keyspaceOld = &flags
		}
		mu.Unlock()
		if err := c.ConfigSet(ctx, "notify-keyspace-events", keyspaceFlags(flags)).Err(); err != nil {
			return fmt.Errorf("redis %s: CONFIG SET notify-keyspace-events: %w", c.Options().Addr, err)
		}
		sub := c.PSubscribe(ctx, channelPrefix+keyPrefix+"*")
		mu.Lock()
		subs = append(subs, sub)
		mu.Unlock()
		if _, err := sub.Receive(ctx); err != nil {
			return fmt.Errorf("redis %s: PSUBSCRIBE: %w", c.Options().Addr, err)
		}
		go func() {
			for {
				msg, err := sub.ReceiveMessage(context.Background())
				if err != nil {
					return // closed
				}
				at := time.Now()
				if msg.Payload == "del" || msg.Payload == "unlink" {
					tr.deleted(strings.TrimPrefix(msg.Channel, channelPrefix), at)
				}
			}
		}()
		return nil
	})
	if err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// restoreKeyspace puts back notify-keyspace-events where the bench
// changed it.
func (b *bench) restoreKeyspace(ctx context.Context) {
	if b.keyspaceOld != nil {
		if err := b.rdb.ConfigSet(ctx, "notify-keyspace-events", *b.keyspaceOld).Err(); err != nil {
			b.warn("could not restore Redis notify-keyspace-events to %q: %v", *b.keyspaceOld, err)
		}
	}
	if len(b.topo.keyspaceOld) == 0 {
		return
	}
	_ = b.forEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		if old, ok := b.topo.keyspaceOld[c.Options().Addr]; ok {
			if err := c.ConfigSet(ctx, "notify-keyspace-events", old).Err(); err != nil {
				b.warn("could not restore notify-keyspace-events of %s to %q: %v", c.Options().Addr, old, err)
			}
		}
		return nil
	})
}

// closeTopology stops the proxy and the throwaway servers beyond b.rd.
func (b *bench) closeTopology() {
	var errs []error
	if b.topo.proxy != nil {
		errs = append(errs, b.topo.proxy.Close())
	}
	for _, r := range b.topo.replicas {
		errs = append(errs, r.Close())
	}
	if b.topo.cluster != nil {
		errs = append(errs, b.topo.cluster.Close())
	}
	if b.topo.sentinel != nil {
		errs = append(errs, b.topo.sentinel.Close())
	}
	if err := errors.Join(errs...); err != nil {
		b.warn("%v", err)
	}
}

// setShardWatermarks sets, on a cluster, every master's watermark
// (sink.ShardWatermarkKey) to created as well, as an engine that had
// created the slot would have them: the engine compares each with the
// slot's position at start, and one left behind by an earlier run (below
// the new slot's position) would make it flush the managed keys.
func (b *bench) setShardWatermarks(ctx context.Context, main string, created pglogrepl.LSN) error {
	if !b.isCluster() {
		return nil
	}
	keys, err := sink.ShardWatermarkKeys(ctx, b.rdb, main)
	if err != nil {
		return fmt.Errorf("redis: list the masters for their watermarks: %w", err)
	}
	b.mu.Lock()
	b.watermarks = append(b.watermarks, keys...)
	b.mu.Unlock()
	pipe := b.rdb.Pipeline()
	for _, k := range keys {
		pipe.Set(ctx, k, created.String(), 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("redis: set the masters' watermarks: %w", err)
	}
	return nil
}

// quietRedisLog drops go-redis's log lines.
type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}
