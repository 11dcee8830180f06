// Package harness starts throwaway PostgreSQL and Redis servers for the
// end-to-end tests, the demo and the benchmark of cdcinvalidate, and holds
// what they share besides: child processes (Process), bounded waits (Poll,
// WaitFor, WaitStreaming), the barrier that proves an engine applied
// everything committed before it (AwaitBarrier), and output helpers for
// failure messages. Only the functions that take a TB (a *testing.T)
// are for tests; the demo and the bench use the others.
//
// Guarantees:
//   - Every server listens on 127.0.0.1 only, on a free port picked at start
//     (never the default 5432 or 6379, so a server already running on the
//     machine is left alone).
//   - Every server lives in its own fresh temporary directory, removed by
//     Close.
//   - Only processes started by this package are ever signalled, by their
//     own PID (Redis) or through pg_ctl on the package's own data directory
//     (PostgreSQL); nothing is ever killed by name.
//   - PostgreSQL runs with wal_level=logical, so logical replication slots
//     using pgoutput can be created. When the caller is root, it runs as the
//     OS user postgres, because PostgreSQL refuses to run as root.
//   - A missing server binary is an error that names the package to install.
package harness
