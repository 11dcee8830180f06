// Package failpoint lets fault-injection tests stop the engine at exact
// points, and run deliberately broken variants as negative controls.
//
// It is compiled in only with the build tag "failpoints"; without it every
// function is an empty stub the compiler removes, so release builds carry
// no test hooks. With the tag, the environment variable CDC_FAILPOINT
// selects a point and what happens there:
//
//	CDC_FAILPOINT=sink-after-ack          SIGKILL itself at the first hit
//	CDC_FAILPOINT=sink-after-ack:3        ... at the third hit
//	CDC_FAILPOINT_ACTION=stop             SIGSTOP instead: frozen there until SIGCONT
//
// Points of the write-behind flusher (package writebehind): wb-before-commit
// (a window is written, not committed), wb-after-commit (committed, not yet
// acknowledged in Redis), wb-after-ack (acknowledged, not yet trimmed), and
// with CDC_UNSAFE=wb-ack-before-commit (the negative control: acknowledge
// first) wb-after-early-ack (acknowledged, not yet committed).
// CDC_UNSAFE=wb-drop-read makes the flusher ignore one read's entries, as
// if the reply had been lost: the check before each commit must notice.
//
// Points: sink-after-ack (Redis acknowledged a batch, the position is not
// yet recorded), sink-mid-txn (a chunk of a large transaction was applied,
// its commit not yet), stream-after-stop (a Stream Stop arrived while a
// streamed transaction is open, before its Stream Commit),
// sink-before-refresh (a batch with refresh writes is ready, not yet sent:
// with the stop action, a leader frozen with work in hand, a zombie when it
// wakes up after a standby took over), sink-before-truncate (a TRUNCATE or
// an explicit pattern of a transaction is about to be applied).
//
// CDC_UNSAFE=confirm-received makes the stream confirm the received
// position instead of the applied one: the bug the checker must catch.
// CDC_UNSAFE=unordered-refresh makes refresh writes plain SETs that ignore
// commit order across instances (the negative control of the zombie test).
// CDC_UNSAFE=unfenced-truncate applies a TRUNCATE without checking the
// watermark first (the negative control of the zombie TRUNCATE test).
// CDC_UNSAFE=unfenced-actions makes version raises and refresh writes
// ignore the watermark (the negative control of the zombie refresh test
// with a TRUNCATE while the old leader is paused).
// CDC_UNSAFE=skip-deletes makes the sink skip its plain deletes: the bug
// the consistency verifier must catch.
// CDC_UNSAFE=ignore-unbound makes the stream skip the changes of a table
// that left its rules (renamed, moved, a partition published as itself or
// with a narrow replica identity) instead of stopping: the old silent bug.
// CDC_UNSAFE=drop-redirects makes the engine's cluster client follow no
// MOVED or ASK and the sink take a command refused with MOVED, ASK or
// TRYAGAIN as done: the deletes a slot migration redirects are lost (the
// negative control of the resharding scenario).
package failpoint
