#!/usr/bin/env bash
# GOGC under the engine's soft memory limit (issue 15): the engine's CPU in
# the all-six catch-up and its peak RSS in both memory phases, with the
# runtime's default (100) and GOGC=200 / 400 in the engine's environment.
# The bench strips only CDC_* from the engine's environment, so a wrapper
# script passed as --engine sets GOGC. Each run writes JSON (stdout) and its
# table (stderr) into $OUT. About 45 min.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/gogc}; mkdir -p "$O"
go build -o "$O/cdc" ./cmd/cdcinvalidate || exit 1
printf '#!/bin/sh\nexec %s "$@"\n' "$O/cdc" > "$O/gcdef"
for g in 200 400; do printf '#!/bin/sh\nGOGC=%s exec %s "$@"\n' $g "$O/cdc" > "$O/gc$g"; done
chmod +x "$O"/gc*
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$O/cdc" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  for g in def 200 400; do
    run cu-$g-$i --phases catchup --actions all --rows 100000 --repeat 3 --engine "$O/gc$g"
  done
done
for g in def 200 400; do run mem-$g --phases memory --engine "$O/gc$g"; done
for g in def 200 400; do run wide-$g --phases memory --wide --big-rows 1000000 --engine "$O/gc$g"; done
echo "== done $(date +%T)"
