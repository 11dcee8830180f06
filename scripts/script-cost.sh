#!/usr/bin/env bash
# Redis's instructions per key for the refresh and version scripts and for
# UNLINK (the delete rule), counted by cachegrind on a throwaway
# redis-server: deterministic, unlike timings on a shared machine. For
# each kind it starts redis-server under valgrind on a free loopback port,
# runs sink's TestScriptCost driver against it (25,600 keys in 100 calls
# of 256; see its comment), shuts the server down and subtracts an idle
# run's count (the same connection and setup, no keys).
#   scripts/script-cost.sh          # items of 1,000-row transactions
#   TXN=1 scripts/script-cost.sh    # single-row transactions
#   SETGET=0 scripts/script-cost.sh # order keys by GET and SET (Redis < 6.2)
#   KINDS=update scripts/script-cost.sh  # (see TestScriptCost)
#   TTL=1h scripts/script-cost.sh   # refresh writes with a TTL, jittered
# Needs valgrind and redis-server. Output: one line per kind.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go test -c -o "$dir/sink.test" ./sink

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

count() { # kind -> total instructions of redis-server
	local kind=$1 port pid
	port=$(free_port)
	valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$dir/cg.$kind" \
		redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --hz 1 \
		>"$dir/redis.$kind.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && break
		sleep 0.2
	done
	CDC_SCRIPT_COST_ADDR=127.0.0.1:$port CDC_SCRIPT_COST=$kind CDC_SCRIPT_COST_TXN=${TXN:-1000} \
		CDC_SCRIPT_COST_SETGET=${SETGET:-1} CDC_SCRIPT_COST_TTL=${TTL:-} \
		"$dir/sink.test" -test.run '^TestScriptCost$' -test.count=1 >"$dir/test.$kind.log" 2>&1 ||
		{ cat "$dir/test.$kind.log" >&2; kill "$pid"; exit 1; }
	redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
	wait "$pid" || true
	awk '/^summary:/ {print $2}' "$dir/cg.$kind"
}

idle=$(count idle)
for kind in ${KINDS:-refresh version unlink}; do
	n=$(count "$kind")
	echo "$kind: $(((n - idle) / 25600)) instructions per key (total $n, idle $idle)"
done
