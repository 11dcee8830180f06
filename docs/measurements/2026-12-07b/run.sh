#!/usr/bin/env bash
# Quiet-machine measurements of the issue-15 follow-up (session of the
# evening of 2026-12-07); each run writes a table (stderr) and JSON.
# B is the engine at the commit measured; B2 the same binary held at two Ps
# (GOMAXPROCS=2), i.e. as before e00e511 made one P the default on 2 CPUs.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/m2}; mkdir -p $O
B=$O/cdc
go build -o $B ./cmd/cdcinvalidate || exit 1
printf '#!/bin/sh\nGOMAXPROCS=2 exec %s "$@"\n' "$B" > $O/two-p.sh; chmod +x $O/two-p.sh
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  $B bench "$@" --json > $O/$name.json 2> $O/$name.err; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  run lat-1p-$i --phases latency --rates 2000 --duration 10s
  run lat-2p-$i --phases latency --rates 2000 --duration 10s --engine $O/two-p.sh
done
run cu-1p   --phases catchup,memory --repeat 3
run cu-2p   --phases catchup --repeat 3 --engine $O/two-p.sh
run actions --phases catchup --actions delete,all --rows 100000 --repeat 3
run rules   --phases catchup --tables 500 --rules 1000 --rows 100000 --repeat 3
echo "== go benchmarks ($(date +%T))"
go test ./mapping -run '^$' -bench MapManyRules -benchmem -count 6 > $O/mapping.txt 2>&1; echo "   mapping exit $?"
echo "== done $(date +%T)"
# Added after the runs above (19:51-19:53 UTC, load 1.9-2.2, main at 9daa8b1, default scheduler):
# Redis 1 ms away through the bench's delay proxy.
#   $B bench --phases catchup,latency --rates 2000 --redis-rtt 1ms --rows 100000 --repeat 3 --latency-control=false --json > rtt-1.json
#   then twice with --repeat 1 > rtt-2.json, rtt-3.json
# Latency right after a catch-up phase (19:53-19:54 UTC, load 1.8-2.0, 9daa8b1), twice:
#   $B bench --phases catchup,latency --rates 2000 --repeat 1 --json > after-catchup-N.json
