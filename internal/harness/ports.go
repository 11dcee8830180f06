package harness

import (
	"fmt"
	"net"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago: it
// listens on port 0, reads the port the kernel picked and closes the
// listener. Another process may take the port before the caller binds it,
// so callers retry with a new port when binding fails.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("free port: close listener: %w", err)
	}
	return port, nil
}

// pickPort picks the port of each start attempt; tests replace it to force
// a port collision.
var pickPort = FreePort
