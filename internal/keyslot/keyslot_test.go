package keyslot

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cdcinvalidate/cdcinvalidate/internal/harness"
)

func TestCRC16(t *testing.T) {
	t.Parallel()
	// CRC-16/XMODEM check value, and the example of the cluster spec.
	if got := crc16("123456789"); got != 0x31C3 {
		t.Fatalf("crc16(123456789) = %#x, want 0x31c3", got)
	}
}

func TestHashPartAndSlot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		key, part string
	}{
		{"user:42", "user:42"},
		{"user:{42}:orders", "42"},
		{"{user1000}.following", "user1000"},
		{"foo{}{bar}", "foo{}{bar}"}, // the first '{' has an empty tag: whole key
		{"foo{{bar}}zap", "{bar"},
		{"foo{bar}{zap}", "bar"},
		{"a{b", "a{b"},
		{"a}b{c}", "c"},
		{"{}", "{}"},
		{"", ""},
	}
	for _, tc := range tests {
		if got := HashPart(tc.key); got != tc.part {
			t.Errorf("HashPart(%q) = %q, want %q", tc.key, got, tc.part)
		}
	}
	if Slot("{user1000}.following") != Slot("{user1000}.followers") {
		t.Error("keys with one hash tag in different slots")
	}
}

func TestSlotTagsCoverEverySlot(t *testing.T) {
	t.Parallel()
	for s := 0; s < Slots; s++ {
		tag := slotTag(s)
		if tag == "" || strings.ContainsAny(tag, "{}") || Slot(tag) != s {
			t.Fatalf("slotTag(%d) = %q (slot %d)", s, tag, Slot(tag))
		}
	}
}

// awkwardKeys are keys of every shape hash tags make special, and random
// ones built from the characters that matter.
func awkwardKeys(n int) []string {
	keys := []string{
		"", "{", "}", "{}", "{}}", "{{}}", "}{", "a{", "a}", "{a", "}a", "{a}", "a{b}c", "a{}b", "a{}{b}",
		"user:42", "user:{42}:orders", "{user:42}", "user:{}:x", "user:{42", "user:42}", "}user:{42}",
		"lease:{user:1}", "lease:{x}:y", "é{ü}", "x{\x00}", "{{{", "}}}", "a{b{c}d}e",
	}
	r := rand.New(rand.NewPCG(1, 2))
	const chars = "{}ab:1é"
	for len(keys) < n {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = chars[r.IntN(len(chars))]
		}
		keys = append(keys, string(b))
	}
	return keys
}

func TestTagKeepsTheSlot(t *testing.T) {
	t.Parallel()
	for _, k := range awkwardKeys(20000) {
		tag := Tag(k)
		if tag == "" || strings.Contains(tag, "}") {
			t.Fatalf("Tag(%q) = %q: empty or holds '}'", k, tag)
		}
		for _, other := range []string{"{" + tag + "}", "lease:{" + tag + "}:" + k, "x{" + tag + "}}{" + k} {
			if Slot(other) != Slot(k) {
				t.Fatalf("Tag(%q) = %q: %q is in slot %d, the key in %d", k, tag, other, Slot(other), Slot(k))
			}
		}
	}
}

func TestGroupBySlot(t *testing.T) {
	t.Parallel()
	keys := []string{"a{1}", "b", "c{1}", "b", "{1}"}
	got := GroupBySlot(len(keys), func(i int) string { return keys[i] })
	want := [][]int{{0, 2, 4}, {1, 3}}
	if len(got) != len(want) {
		t.Fatalf("GroupBySlot = %v, want %v", got, want)
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Fatalf("GroupBySlot = %v, want %v", got, want)
		}
		for j := range want[i] {
			if got[i][j] != want[i][j] {
				t.Fatalf("GroupBySlot = %v, want %v", got, want)
			}
		}
	}
}

// TestSlotMatchesRedis compares Slot with CLUSTER KEYSLOT of a real
// cluster-enabled redis-server over the awkward keys.
func TestSlotMatchesRedis(t *testing.T) {
	r := harness.RedisT(t, harness.RedisOptions{Cluster: true})
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys := awkwardKeys(3000)
	pipe := c.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.ClusterKeySlot(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if got, want := Slot(k), int(cmds[i].Val()); got != want {
			t.Errorf("Slot(%q) = %d, CLUSTER KEYSLOT says %d", k, got, want)
		}
	}
}
