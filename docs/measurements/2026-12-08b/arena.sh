#!/usr/bin/env bash
# The message buffer reused from batch to batch (8f2c9e5) against the
# engine before this session's changes (d9b1a31): engine CPU of the
# all-six catch-up, five pairs, the last two in reversed order (the second
# run of a pair tended to be the slower one). JSON and tables into $OUT.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/arena}; mkdir -p "$O"
for c in d9b1a31 8f2c9e5; do
  [ -x "$O/cdc-$c" ] && continue
  git worktree add -q "$O/wt" "$c" || exit 1
  (cd "$O/wt" && go build -o "$O/cdc-$c" ./cmd/cdcinvalidate); rc=$?
  git worktree remove --force "$O/wt"; [ $rc = 0 ] || exit 1
done
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$O/cdc-8f2c9e5" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3 4 5; do
  b=(ab-before-$i --engine "$O/cdc-d9b1a31"); a=(ab-after-$i --engine "$O/cdc-8f2c9e5")
  first=("${b[@]}"); second=("${a[@]}")
  if [ $i -gt 3 ]; then first=("${a[@]}"); second=("${b[@]}"); fi
  run "${first[0]}" --phases catchup --actions all --rows 100000 --repeat 3 "${first[@]:1}"
  run "${second[0]}" --phases catchup --actions all --rows 100000 --repeat 3 "${second[@]:1}"
done
echo "== done $(date +%T)"
