// Package mapping turns row changes into cache keys through the rules of
// rules.yaml.
//
// A rule names a table and key templates such as "user:{id}" or
// "user:email:{email|trim|lower}" (placeholders may pass their value
// through the filters lower, trim, urlencode, sha1 and default:TEXT). For
// an INSERT the keys of the new row are produced, for an UPDATE the keys of
// the old row and of the new row (so a changed email invalidates both the
// old and the new key), for a DELETE the keys of the old row, and for a
// TRUNCATE one SCAN pattern per template.
//
// A rule may limit itself to some operations (ops), to UPDATEs that change
// some columns (when_changed), and to changes for which a CEL condition
// holds (when; see Condition). Each rule of a table decides on its own.
//
// A rule's actions (see Actions) say what happens to its keys: deleted (the
// default), version keys raised, announced per transaction on a channel or
// a stream, rewritten with the new row as JSON (refresh), or a generation
// key bumped. Plain deletes come out as keys; everything else as
// replication.Action values, in rule order.
//
// Guarantees:
//   - A key is never rendered from a value the change does not carry. When an
//     old value is unavailable (a column outside the replica identity) the
//     change is refused with an error that names the fix, unless the rule
//     opted in with unsafe_allow_stale_old_keys, in which case that one key
//     is skipped and counted.
//   - Unchanged TOASTed values ('u') are taken from the old row image.
//   - A NULL value makes no key (never the text "<nil>" or "null"), unless
//     the placeholder has a default.
//   - Values are inserted once and never re-expanded.
//   - A refreshed value is never written from a partial row: when the change
//     does not carry a refreshed column, the key is deleted instead.
//   - Filters never decide a skip: when_changed counts a column whose old
//     value is unknown as changed, and a when condition whose result depends
//     on unknown values counts as true, so doubt invalidates.
package mapping
