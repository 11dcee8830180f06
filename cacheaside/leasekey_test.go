package cacheaside

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cdcinvalidate/cdcinvalidate/internal/keyslot"
)

// awkwardKeys are keys with every brace shape that matters to Redis
// Cluster hash tags, and random ones built from those characters.
func awkwardKeys(n int) []string {
	keys := []string{
		"", "{", "}", "{}", "{}}", "}{", "a{", "a}", "{a}", "a{}b", "a{}{b}", "user:42", "user:{42}:orders",
		"{user:42}", "user:{}:x", "user:{42", "user:42}", "}user:{42}", "lease:{user:1}", "lease:{x}:y",
		"x}:user:1", "{x}:user:1", "a{b{c}d}e", "*", "lease:{*}:x",
	}
	r := rand.New(rand.NewPCG(3, 4))
	const chars = "{}a1:*"
	for len(keys) < n {
		b := make([]byte, r.IntN(10))
		for i := range b {
			b[i] = chars[r.IntN(len(chars))]
		}
		keys = append(keys, string(b))
	}
	return keys
}

// TestLeaseKeySameSlotAndDistinct is the property the Cluster scripts need:
// a key and its lease share a hash slot, for every key, and no two keys
// share a lease, nor is a lease another key's lease.
func TestLeaseKeySameSlotAndDistinct(t *testing.T) {
	t.Parallel()
	owner := map[string]string{}
	for _, k := range awkwardKeys(50000) {
		l := LeaseKey(k)
		if keyslot.Slot(l) != keyslot.Slot(k) {
			t.Fatalf("LeaseKey(%q) = %q in slot %d, the key in slot %d", k, l, keyslot.Slot(l), keyslot.Slot(k))
		}
		if o, dup := owner[l]; dup && o != k {
			t.Fatalf("keys %q and %q share the lease %q", o, k, l)
		}
		owner[l] = k
	}
	// Unchanged for keys without '}': the name the library always used.
	for k, want := range map[string]string{"app:user:1": "lease:{app:user:1}", "a{b": "lease:{a{b}", "user:{42}:orders": "lease:{42}:user:{42}:orders"} {
		if got := LeaseKey(k); got != want {
			t.Errorf("LeaseKey(%q) = %q, want %q", k, got, want)
		}
	}
}

// TestLeasePatternsMatchEveryLease: the leases of the keys a TRUNCATE
// pattern matches are matched by one of LeasePatterns.
func TestLeasePatternsMatchEveryLease(t *testing.T) {
	t.Parallel()
	keys := awkwardKeys(5000)
	for _, p := range []string{"user:*", "*", "user:{*}:orders", "{*", "*}*", "a*"} {
		for _, k := range keys {
			if !globMatch(p, k) {
				continue
			}
			l := LeaseKey(k)
			matched := false
			for _, lp := range LeasePatterns(p) {
				matched = matched || globMatch(lp, l)
			}
			if !matched {
				t.Fatalf("key %q matches %q, but its lease %q matches none of %q", k, p, l, LeasePatterns(p))
			}
		}
	}
}

// globMatch is Redis's glob for patterns of literals, '*' and '?' (any
// bytes, '}' and '{' included).
func globMatch(p, s string) bool {
	if p == "" {
		return s == ""
	}
	switch p[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if globMatch(p[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return s != "" && globMatch(p[1:], s[1:])
	}
	return strings.HasPrefix(s, p[:1]) && globMatch(p[1:], s[1:])
}
