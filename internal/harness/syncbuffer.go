package harness

import (
	"bytes"
	"strings"
	"sync"
)

// SyncBuffer is a buffer that one goroutine may write (a child process's
// output, a log) while another reads it. With Limit > 0 it keeps only
// about the last Limit bytes, cut at a line boundary where one is near;
// the zero value keeps everything.
type SyncBuffer struct {
	Limit int

	mu sync.Mutex
	b  []byte
}

// Write appends p. Beyond twice Limit, it drops all but the last Limit
// bytes (so that a full buffer is not copied on every write).
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b = append(s.b, p...)
	if s.Limit > 0 && len(s.b) > 2*s.Limit {
		s.b = append(s.b[:0], s.b[s.cut():]...)
	}
	return len(p), nil
}

// String returns what the buffer holds: with Limit > 0, about the last
// Limit bytes.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return string(s.b[s.cut():])
}

// cut is where the kept bytes start: Limit from the end, moved to just
// after a newline where one comes soon after.
func (s *SyncBuffer) cut() int {
	over := len(s.b) - s.Limit
	if s.Limit <= 0 || over <= 0 {
		return 0
	}
	if i := bytes.IndexByte(s.b[over:min(len(s.b), over+256)], '\n'); i >= 0 {
		over += i + 1
	}
	return over
}

// LastLines is the last n lines of s, without surrounding blank space;
// for failure messages that quote a log.
func LastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.TrimSpace(strings.Join(lines, "\n"))
}

// Indent puts prefix before every line of s, to set quoted output apart
// in a message.
func Indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// Abbreviate folds the white space of s (a SQL statement, say) and cuts it
// after n bytes, for a message.
func Abbreviate(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
