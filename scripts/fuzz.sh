#!/usr/bin/env bash
# Runs every fuzz target of the decoders and parsers for a bounded time each
# (FUZZTIME, default 15s), one after the other. Plain `go test` already runs
# their seed corpora; this explores beyond them. New crashers are written to
# the package's testdata/fuzz/ and make this script fail.
#   FUZZTIME=5m scripts/fuzz.sh     # a longer session
# Each package's test binary is built once, with the fuzzer's coverage
# instrumentation (go test -c -fuzz), and runs each of its targets in the
# package's directory with go test's cache dir, as go test -fuzz would: the
# same fuzzing, without a link and a go command start per target.
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
work=$(mktemp -d)
log="$work/log"
trap 'rm -rf "$work"' EXIT
gocache=$(go env GOCACHE)
# go test -fuzz keeps the fuzzer's cache (the inputs it found interesting)
# in $GOCACHE/fuzz/<import path>; so does this.
declare -A bins=() cachedirs=()
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	[[ -n ${bins[$pkg]:-} ]] && continue
	bin="$work/${pkg//\//_}.fuzz"
	echo "fuzz: build $pkg (with the fuzzer's instrumentation)"
	go test -c -fuzz '^Fuzz' -o "$bin" "$pkg"
	bins[$pkg]=$bin
	cachedirs[$pkg]="$gocache/fuzz/$(go list -f '{{.ImportPath}}' "$pkg")"
done
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz: $name ($pkg) for $fuzztime"
	if (cd "$pkg" && "${bins[$pkg]}" -test.run '^$' -test.fuzz "^${name}\$" -test.fuzztime "$fuzztime" \
		-test.fuzzcachedir "${cachedirs[$pkg]}" -test.paniconexit0 -test.timeout 30m) 2>&1 | tee "$log"; then
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
