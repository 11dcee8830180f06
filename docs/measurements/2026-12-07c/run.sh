#!/usr/bin/env bash
# Quiet-machine measurements of the third issue-15 follow-up (session of the
# night of 2026-12-07): batches in flight (sink.max_in_flight) against one
# pipeline at a time, the cheaper refresh/version scripts, and the figures
# not re-measured since 6a122f4 (fan-out, verifier overhead, two instances).
# Each run writes JSON (stdout) and its table (stderr) into $OUT.
set -u
cd "$(dirname "$0")/../../.."
O=${OUT:-/tmp/m3}; mkdir -p "$O"
B=$O/cdc
go build -o "$B" ./cmd/cdcinvalidate || exit 1
# The same binary with one pipeline at a time (the engine before a33db12),
# and with four in flight. (Measured on d4e1473, whose default was 4; the
# default is 1 since, so the runs named "four" now need four.sh.)
printf '#!/bin/sh\nCDC_SINK_MAX_IN_FLIGHT=1 exec %s "$@"\n' "$B" > "$O/one.sh"; chmod +x "$O/one.sh"
printf '#!/bin/sh\nCDC_SINK_MAX_IN_FLIGHT=4 exec %s "$@"\n' "$B" > "$O/four.sh"; chmod +x "$O/four.sh"
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  "$B" bench "$@" --json > "$O/$name.json" 2> "$O/$name.err"; echo "   exit $? in $(( $(date +%s)-s )) s"; }
for i in 1 2 3; do
  run rtt2000-four-$i --phases latency --rates 2000 --redis-rtt 1ms --latency-control=false --engine "$O/four.sh"
  run rtt2000-one-$i  --phases latency --rates 2000 --redis-rtt 1ms --latency-control=false --engine "$O/one.sh"
  run rtt1000-four-$i --phases latency --rates 1000 --redis-rtt 1ms --latency-control=false --engine "$O/four.sh"
  run rtt1000-one-$i  --phases latency --rates 1000 --redis-rtt 1ms --latency-control=false --engine "$O/one.sh"
done
for i in 1 2; do
  run lo2000-four-$i --phases latency --rates 2000 --latency-control=false --engine "$O/four.sh"
  run lo2000-one-$i  --phases latency --rates 2000 --latency-control=false --engine "$O/one.sh"
done
run rtt-catchup --phases catchup --redis-rtt 1ms --rows 100000 --repeat 3
run actions     --phases catchup --actions delete,all --rows 100000 --repeat 3
run fanout      --phases catchup --fanout 1,10 --rows 100000 --repeat 3
run verify      --phases catchup,latency --rates 2000 --verify-rate 1000 --rows 100000 --repeat 3
run instances   --phases catchup --instances 2 --rows 100000 --repeat 3
echo "== done $(date +%T)"
