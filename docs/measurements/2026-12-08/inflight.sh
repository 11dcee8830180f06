#!/usr/bin/env bash
# sink.max_in_flight 1 (the default), 2 and 4 with Redis 1 ms away at
# 2,000 commits/s: three interleaved rounds. (The night before measured 4
# against 1; 2 was not tried.) JSON and tables go into $OUT.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/m6}; mkdir -p "$O"
B=$O/cdc
go build -o "$B" ./cmd/cdcinvalidate || exit 1
for n in 1 2 4; do
  printf '#!/bin/sh\nCDC_SINK_MAX_IN_FLIGHT=%s exec %s "$@"\n' "$n" "$B" > "$O/inflight$n.sh"; chmod +x "$O/inflight$n.sh"
done
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$B" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  for n in 1 2 4; do
    run inflight$n-rtt2000-$i --phases latency --rates 2000 --redis-rtt 1ms --latency-control=false --engine "$O/inflight$n.sh"
  done
done
echo "== done $(date +%T)"
