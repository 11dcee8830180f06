#!/usr/bin/env bash
# Quiet-machine measurements for issues 13-16; each writes a table and JSON.
cd /work/main
B=/tmp/m/cdc
go build -o $B ./cmd/cdcinvalidate || exit 1
run() { name=$1; shift; echo "== $name: $* ($(date +%T), load $(cut -d' ' -f1 /proc/loadavg))"; s=$(date +%s)
  $B bench "$@" --json > /tmp/m/$name.json 2> /tmp/m/$name.err; echo "   exit $? in $(( $(date +%s)-s )) s"; }
run m1-delete   --phases catchup,latency,memory --repeat 3 --rates 500,2000,max --duration 10s
run m2-actions  --phases catchup --actions delete,version,refresh,publish,stream,generation,all --rows 100000 --repeat 3
run m5-rtt      --phases catchup,latency --rates 2000 --redis-rtt 1ms --rows 100000 --repeat 3 --latency-control=false
run m3-fanout   --phases catchup --fanout 1,10 --rows 100000 --repeat 3
run m4-rules    --phases catchup --tables 500 --rules 1000 --rows 100000 --repeat 3
run m8-verify   --phases catchup,latency --rates 2000 --verify-rate 1000 --rows 100000 --repeat 3 --latency-control=false
run m6-cluster  --phases catchup,latency --rates 2000 --redis-topology cluster --rows 100000 --repeat 3 --latency-control=false
run m6b-cluster-wait --phases catchup,latency --rates 2000 --redis-topology cluster --wait-replicas 1 --rows 100000 --repeat 3 --latency-control=false
run m7-instances --phases catchup --instances 2 --rows 200000 --repeat 3
echo "== go benchmarks ($(date +%T))"
go test ./writebehind -run '^$' -bench 'BenchmarkIncr/callers=256$' -benchtime 1000000x -count 3 > /tmp/m/wb.txt 2>&1; echo "   wb exit $?"
go test ./mapping -run '^$' -bench MapManyRules -benchmem -count 5 > /tmp/m/mapping.txt 2>&1; echo "   mapping exit $?"
run m9-wide     --phases memory --wide --big-rows 1000000
echo "== done $(date +%T)"
