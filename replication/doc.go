// Package replication streams a PostgreSQL logical replication slot
// (pgoutput, protocol 1, or 2 with in-progress streaming on 14+) and hands
// the changes, mapped to cache keys and actions, to the sink as Events in
// commit order.
//
// One goroutine owns the replication connection: it reads messages, answers
// keepalives at once, and sends every status update. Each message of a
// transaction is mapped once and handed to the open transaction (openTxn,
// txn.go): a plain one (memTxn) hands its effects over in parts as they
// come, since pgoutput sends it only after it committed; a streamed one
// (streamTxn) buffers them and replays them at its commit through the same
// parts. Guarantees:
//
//   - A position is confirmed only after the sink reported it applied
//     (Positions); a transaction's end LSN, never a received position.
//     Only a transaction's last event carries its end (Event.End).
//   - Within a transaction, effects reach the sink in the transaction's
//     order: the keys and actions before a TRUNCATE's (or an invalidation
//     message's) patterns go first, the patterns in an event of their own,
//     then what follows (a TRUNCATE's own actions after its patterns); an
//     invalidation message's keys are delete actions in their place among
//     the refresh writes.
//   - Events hold whole changes and are bounded by Config.ChunkKeys and
//     Config.ChunkBytes (by one change more at most); the events queued
//     for the sink by Config.QueueBytes.
//   - A streamed transaction is handed over only at its commit, in the
//     same events the plain transaction would give; until then it is held
//     per xid in at most Config.TxnMemoryBytes for all of them (spilled to
//     Config.SpillDir past it); a rolled-back subtransaction drops only its
//     own changes.
//   - A non-transactional invalidation message is applied at once, at its
//     place in the stream; it moves no position itself.
//   - A new session restarts at the slot's confirmed position and tells the
//     sink (Event.Restart), which then runs the start-up consistency checks.
//   - A table that stops matching its rules (renamed, moved, no longer
//     published through its root, a partition whose replica identity lacks
//     a key column) stops the stream with an UnboundError before its change
//     is confirmed, unless the flush at this start covered it; in a
//     streamed transaction the verdict waits for its commit.
//   - A connection silent for twice wal_sender_timeout is treated as dead.
//
// Protocol reference:
// https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
package replication
