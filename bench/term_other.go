//go:build !linux

package bench

import "os"

// isTerminal reports whether f is a character device, which on a
// non-Linux system is taken for a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
