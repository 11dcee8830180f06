package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of utime and stime in /proc/PID/stat (USER_HZ),
// 100 per second on every Linux platform Go supports.
const clockTick = 10 * time.Millisecond

// ProcCPU reads the user+system CPU time of a running process from
// /proc/PID/stat.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// parseStatCPU takes utime and stime (fields 14 and 15) from the text of
// /proc/PID/stat. The command (field 2) is in parentheses and may hold
// spaces and parentheses, so fields are counted after its last ')'.
func parseStatCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("/proc stat: no command field")
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields after the command, want at least 13", len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc stat: %w", err)
	}
	return time.Duration(ut+st) * clockTick, nil
}

// ProcMem reads VmHWM (peak RSS) and VmRSS of a running process in bytes.
func ProcMem(pid int) (hwm, rss int64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1, -1, err
	}
	hwm, err1 := statusBytes(data, "VmHWM")
	rss, err2 := statusBytes(data, "VmRSS")
	return hwm, rss, errors.Join(err1, err2)
}

// statusBytes reads a "Name:   1234 kB" line of /proc/PID/status.
func statusBytes(data []byte, name string) (int64, error) {
	for _, line := range strings.Split(string(data), "\n") {
		rest, ok := strings.CutPrefix(line, name+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return -1, fmt.Errorf("/proc status: unexpected %s line %q", name, line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return -1, fmt.Errorf("/proc status: %s: %w", name, err)
		}
		return kb * 1024, nil
	}
	return -1, fmt.Errorf("/proc status: no %s line", name)
}
