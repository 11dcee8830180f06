#!/usr/bin/env bash
# Runs every fuzz target of the decoders and parsers for a bounded time each
# (FUZZTIME, default 15s), one after the other. Plain `go test` already runs
# their seed corpora; this explores beyond them. New crashers are written to
# the package's testdata/fuzz/ and make this script fail.
#   FUZZTIME=5m scripts/fuzz.sh     # a longer session
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
fuzztime=${FUZZTIME:-15s}
targets=(
	"./replication FuzzDecode"
	"./replication FuzzParseExplicit"
	"./replication FuzzParseAction"
	"./replication FuzzParsePGDuration"
	"./internal/jsonstr FuzzAppend"
	"./mapping FuzzParseTemplate"
	"./mapping FuzzFilters"
	"./config FuzzParse"
	"./config FuzzRules"
	"./sink FuzzOrderKey"
	"./cacheaside FuzzParseStamp"
	"./writebehind FuzzTemplate"
)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz: $name ($pkg) for $fuzztime"
	if go test "$pkg" -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" 2>&1 | tee "$log"; then
		continue
	fi
	# Go's fuzzer sometimes reports "context deadline exceeded" when the time
	# runs out while a worker is busy; that is no finding. A real one names
	# the input it wrote under testdata/fuzz.
	if grep -q "context deadline exceeded" "$log" && ! grep -q "Failing input written" "$log"; then
		echo "fuzz: $name: the fuzzer stopped at its deadline with no failing input (Go fuzzer shutdown, not a finding)"
		continue
	fi
	echo "fuzz: $name FAILED" >&2
	exit 1
done
echo "fuzz: all targets ran without a failure"
