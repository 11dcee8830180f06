//go:build !failpoints

package failpoint

// Hit is a no-op without the failpoints build tag.
func Hit(string) {}

// Unsafe reports false without the failpoints build tag.
func Unsafe(string) bool { return false }
