package faults

import (
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

// takeoverAfterRewind runs one "takeover after Redis went back in time"
// run: a leader streams and a standby waits; Redis's AOF is copied while
// every plain key is cached; the workload changes rows (the leader deletes
// their keys); then the leader is frozen (SIGSTOP: it cannot notice
// anything), Redis restarts from the old AOF (the old values and the old
// watermark are back), and the leader is killed. The standby takes over;
// its session's checks must find the watermark below the slot's confirmed
// position and flush. It returns the check and the new leader.
func takeoverAfterRewind(t *testing.T, sc *scenario, f *fixture, rng *rand.Rand, leader *harness.Process, i int) (checkResult, *harness.Process) {
	aof := f.aofDir()
	saved := filepath.Join(t.TempDir(), "aof")
	standby := f.startEngine()
	harness.WaitFor(t, 60*time.Second, "the second engine to wait as standby", func() bool {
		return strings.Contains(standby.Output(), "waiting as standby")
	})
	r := f.cycle(sc, rng, defaultLoad, fmt.Sprintf("run %d", i), func(l *load) {
		f.saveAOF(aof, saved)
		sleepRand(rng, 800*time.Millisecond, 1500*time.Millisecond)
	}, func() {
		f.barrier(60 * time.Second) // the leader applied everything
		if err := leader.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		f.restartFromAOF(aof, saved)
		leader.KillT(t)
		sc.fault("leader frozen, Redis restarted from an older AOF, leader killed: standby takes over")
	})
	return r, standby
}

// TestTakeoverAfterRedisRewind: Redis goes back in time while the leader
// is frozen, and a standby takes over. Every start-up check runs again
// when a session acquires the slot, so the new leader flushes.
func TestTakeoverAfterRedisRewind(t *testing.T) {
	sc := newScenario(t, "standby takes over after Redis restarted from an older AOF", "takeover is a start: the history checks run again", false)
	f := newFixture(t, fixtureOpts{redisArgs: aofArgs, walSenderTimeout: "3s"})
	rng := rngFor(t)
	leader := f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		var r checkResult
		r, leader = takeoverAfterRewind(t, sc, f, rng, leader, i)
		if !strings.Contains(leader.Output(), "below the slot's confirmed position") {
			t.Errorf("run %d: the new leader did not flush for the rewind (%s); output:\n%s", i, r, leader.Tail(20))
		} else {
			sc.note("run %d: the new leader flushed at takeover (watermark below the slot)", i)
		}
	}
}

// TestNegativeTakeoverAfterRedisRewindWithoutWatermark is the negative
// control: with sink.watermark: false no session can see the rewind, and
// the checker must find the stale values the old AOF brought back.
func TestNegativeTakeoverAfterRedisRewindWithoutWatermark(t *testing.T) {
	sc := newScenario(t, "NEGATIVE: takeover after Redis back in time, sink.watermark: false", "the checker sees values Redis brought back", true)
	f := newFixture(t, fixtureOpts{redisArgs: aofArgs, walSenderTimeout: "3s", noWatermark: true})
	rng := rngFor(t)
	leader := f.startStreaming()
	for i := 1; i <= runs(1); i++ {
		var r checkResult
		r, leader = takeoverAfterRewind(t, sc, f, rng, leader, i)
		if r.stale() == 0 {
			t.Fatalf("negative control run %d: the checker found no stale key after the takeover (%s): the suite cannot see this loss", i, r)
		}
		sc.note("run %d: checker found %d stale keys, e.g. %s", i, r.stale(), r.examples(1)[0])
	}
}
