package harness

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ClusterOptions configures StartCluster.
type ClusterOptions struct {
	// Masters is the number of masters (default 3, at least 3: redis-cli
	// refuses fewer).
	Masters int
	// Replicas is the number of replicas per master (default 1; -1: none).
	Replicas int
}

// Cluster is a throwaway Redis Cluster of redis-server children on
// loopback ports, created with redis-cli --cluster create. Nodes[i] are
// the servers in the order they were given to redis-cli, which makes the
// first Masters of them masters at creation.
type Cluster struct {
	Nodes    []*Redis
	replicas int // per master, at creation
}

const clusterReadyTimeout = 60 * time.Second

// StartCluster starts the nodes, creates the cluster and waits until every
// node reports cluster_state:ok and knows every other node. Call Close to
// stop it.
func StartCluster(ctx context.Context, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Replicas == 0 {
		opts.Replicas = 1
	}
	replicas := max(opts.Replicas, 0)
	if opts.Masters < 3 {
		return nil, fmt.Errorf("start cluster: %d masters; redis-cli --cluster create needs at least 3", opts.Masters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return nil, fmt.Errorf("start cluster: redis-cli not found on PATH; install it with: %s", redisInstallHint)
	}
	c := &Cluster{replicas: replicas}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	n := opts.Masters * (1 + replicas)
	addrs := make([]string, 0, n)
	for i := 0; i < n; i++ {
		r, err := StartRedis(ctx, RedisOptions{Cluster: true})
		if err != nil {
			return nil, fmt.Errorf("start cluster node %d: %w", i, err)
		}
		c.Nodes = append(c.Nodes, r)
		addrs = append(addrs, r.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", fmt.Sprint(replicas), "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "[OK] All 16384 slots covered") {
		return nil, fmt.Errorf("start cluster: redis-cli %s: %v\n%s", strings.Join(args, " "), err, LastLines(string(out), redisLogTailLines))
	}
	if err := c.WaitReady(ctx); err != nil {
		return nil, fmt.Errorf("start cluster: %w", err)
	}
	return c, nil
}

// Addrs lists the nodes' addresses (seed nodes for a cluster client).
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, r := range c.Nodes {
		out[i] = r.Addr()
	}
	return out
}

// Client returns a cluster client of the nodes; the caller closes it.
func (c *Cluster) Client() *redis.ClusterClient {
	return redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
}

// WaitReady waits until every running node says cluster_state:ok and
// knows as many nodes as the cluster has.
func (c *Cluster) WaitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, clusterReadyTimeout)
	defer cancel()
	for _, r := range c.Nodes {
		if !r.running() {
			continue
		}
		if err := waitClusterOK(ctx, r, len(c.Nodes), c.replicas); err != nil {
			return err
		}
	}
	return nil
}

// waitClusterOK waits until r says cluster_state:ok, knows nodes nodes,
// and (while all nodes run) lists replicas replicas with every slot range.
func waitClusterOK(ctx context.Context, r *Redis, nodes, replicas int) error {
	cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer cl.Close()
	var last string
	for {
		info, err := cl.ClusterInfo(ctx).Result()
		if err == nil {
			last = info
			if strings.Contains(info, "cluster_state:ok") && strings.Contains(info, fmt.Sprintf("cluster_known_nodes:%d\r", nodes)) {
				if n, ok := replicasPerRange(ctx, cl); replicas == 0 || ok && n >= replicas || !strings.Contains(info, fmt.Sprintf("cluster_size:%d\r", nodes/(1+replicas))) {
					return nil
				}
				last = "replicas not yet listed in CLUSTER SLOTS"
			}
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready (cluster_state:ok, %d known nodes): %w; last CLUSTER INFO: %s\nlast lines of its log:\n%s",
				r.Addr(), nodes, ctx.Err(), strings.ReplaceAll(last, "\r\n", " "), r.LogTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// replicasPerRange returns the fewest replicas CLUSTER SLOTS lists with a
// slot range.
func replicasPerRange(ctx context.Context, cl *redis.Client) (int, bool) {
	slots, err := cl.ClusterSlots(ctx).Result()
	if err != nil || len(slots) == 0 {
		return 0, false
	}
	fewest := -1
	for _, s := range slots {
		if n := len(s.Nodes) - 1; fewest < 0 || n < fewest {
			fewest = n
		}
	}
	return fewest, true
}

// MasterOf returns the node that serves slot as master now.
func (c *Cluster) MasterOf(ctx context.Context, slot int) (*Redis, error) {
	for _, r := range c.Nodes {
		if !r.running() {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		slots, err := cl.ClusterSlots(ctx).Result()
		cl.Close()
		if err != nil {
			continue
		}
		for _, s := range slots {
			if slot >= int(s.Start) && slot <= int(s.End) && len(s.Nodes) > 0 {
				for _, n := range c.Nodes {
					if n.Addr() == s.Nodes[0].Addr {
						return n, nil
					}
				}
			}
		}
		return nil, fmt.Errorf("slot %d: no master in CLUSTER SLOTS of %s", slot, r.Addr())
	}
	return nil, errors.New("no cluster node answers")
}

// Close stops every node. It is idempotent.
func (c *Cluster) Close() error {
	var errs []error
	for _, r := range c.Nodes {
		if err := r.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// running reports whether the server process is up (not killed or closed).
func (r *Redis) running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc != nil
}

// ReplicaOf returns a running node that replicates master (ROLE).
func (c *Cluster) ReplicaOf(ctx context.Context, master *Redis) (*Redis, error) {
	for _, r := range c.Nodes {
		if r == master || !r.running() {
			continue
		}
		cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		role, err := cl.Do(ctx, "role").Slice()
		cl.Close()
		if err != nil || len(role) < 3 || role[0] != "slave" {
			continue
		}
		if fmt.Sprintf("%v:%v", role[1], role[2]) == master.Addr() {
			return r, nil
		}
	}
	return nil, fmt.Errorf("no running replica of %s", master.Addr())
}

// WaitMaster waits until the cluster (as the running nodes see it)
// serves slot from want.
func (c *Cluster) WaitMaster(ctx context.Context, slot int, want *Redis) error {
	ctx, cancel := context.WithTimeout(ctx, clusterReadyTimeout)
	defer cancel()
	for {
		m, err := c.MasterOf(ctx, slot)
		if err == nil && m == want {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("slot %d not served by %s: %w (last: %v, %v)", slot, want.Addr(), ctx.Err(), m, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Reshard moves n slots from one master to another with redis-cli
// --cluster reshard (MIGRATE key by key: clients see MOVED and ASK).
func (c *Cluster) Reshard(ctx context.Context, from, to *Redis, n int) error {
	ids := make([]string, 2)
	for i, r := range []*Redis{from, to} {
		cl := redis.NewClient(&redis.Options{Addr: r.Addr(), MaxRetries: -1})
		id, err := cl.Do(ctx, "cluster", "myid").Text()
		cl.Close()
		if err != nil {
			return fmt.Errorf("reshard: CLUSTER MYID of %s: %w", r.Addr(), err)
		}
		ids[i] = id
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		return fmt.Errorf("reshard: redis-cli not found on PATH; install it with: %s", redisInstallHint)
	}
	args := []string{"--cluster", "reshard", from.Addr(), "--cluster-from", ids[0], "--cluster-to", ids[1],
		"--cluster-slots", fmt.Sprint(n), "--cluster-yes", "--cluster-pipeline", "10"}
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("reshard: redis-cli %s: %v\n%s", strings.Join(args, " "), err, LastLines(string(out), redisLogTailLines))
	}
	return nil
}
