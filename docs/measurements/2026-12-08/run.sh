#!/usr/bin/env bash
# Quiet-machine measurements of the fourth issue-15 follow-up (session of
# 2026-12-07/08, night): (1) the cheaper refresh/version scripts (fec3d54)
# end to end, as three interleaved before/after pairs of the all-six-actions
# catch-up, the "before" engine built from c9aeb77 (main just before the
# merge, sink.max_in_flight already 1); (2) the online verifier's overhead
# on catch-up, 5 repeats, twice.
# Each run writes JSON (stdout) and its table (stderr) into $OUT.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/m4}; mkdir -p "$O"
B=$O/cdc
go build -o "$B" ./cmd/cdcinvalidate || exit 1
if [ ! -x "$O/cdc-before" ]; then
  git worktree add -q "$O/wt-before" c9aeb77 || exit 1
  (cd "$O/wt-before" && go build -o "$O/cdc-before" ./cmd/cdcinvalidate); rc=$?
  git worktree remove --force "$O/wt-before"; [ $rc = 0 ] || exit 1
fi
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$B" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  run actions-before-$i --phases catchup --actions delete,all --rows 100000 --repeat 3 --engine "$O/cdc-before"
  run actions-after-$i  --phases catchup --actions delete,all --rows 100000 --repeat 3 --engine "$B"
done
for i in 1 2; do
  run verify-$i --phases catchup --verify-rate 1000 --rows 100000 --repeat 5
done
echo "== done $(date +%T)"
