// Package replication streams a PostgreSQL logical replication slot
// (pgoutput, protocol 1, or 2 with in-progress streaming on 14+) and hands
// the changes, mapped to cache keys and actions, to the sink as Events in
// commit order.
//
// One goroutine owns the replication connection: it reads messages, answers
// keepalives at once, and sends every status update. Guarantees:
//
//   - A position is confirmed only after the sink reported it applied
//     (Positions); a transaction's end LSN, never a received position.
//   - A streamed transaction is buffered per xid (spilled to disk past its
//     memory bound) and handed over only at its commit; a rolled-back
//     subtransaction drops only its own changes.
//   - A new session restarts at the slot's confirmed position and tells the
//     sink (Event.Restart), which then runs the start-up consistency checks.
//   - A table that stops matching its rules (renamed, moved, no longer
//     published through its root) stops the stream with an UnboundError
//     before its change is confirmed.
//   - A connection silent for twice wal_sender_timeout is treated as dead.
//
// Protocol reference:
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
package replication
