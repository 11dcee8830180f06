#!/usr/bin/env bash
# The events' shared blocks (c384757) against the engine just before them
# (1bd667a): engine CPU of the all-six-actions catch-up, three interleaved
# pairs. Each run writes JSON (stdout) and its table (stderr) into $OUT.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/m5}; mkdir -p "$O"
for c in 1bd667a c384757; do
  [ -x "$O/cdc-$c" ] && continue
  git worktree add -q "$O/wt" "$c" || exit 1
  (cd "$O/wt" && go build -o "$O/cdc-$c" ./cmd/cdcinvalidate); rc=$?
  git worktree remove --force "$O/wt"; [ $rc = 0 ] || exit 1
done
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$O/cdc-c384757" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  run blocks-before-$i --phases catchup --actions all --rows 100000 --repeat 3 --engine "$O/cdc-1bd667a"
  run blocks-after-$i  --phases catchup --actions all --rows 100000 --repeat 3 --engine "$O/cdc-c384757"
done
echo "== done $(date +%T)"
