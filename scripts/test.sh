#!/usr/bin/env bash
# The test command: installs missing PostgreSQL/redis-server (Debian/Ubuntu),
# then runs go vet and every test of the module: unit tests, fuzz seed
# corpora, and the end-to-end tests, which start their own throwaway
# PostgreSQL and Redis on free loopback ports (the machine's own servers
# are left alone). Extra arguments go to go test, e.g.
#   scripts/test.sh -run TestTruncate -v
# Exit status: that of go test (or of the step that failed before it).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

scripts/install-deps.sh

echo "test: go vet ./..."
go vet ./...

echo "test: go test ./... -count=1 -timeout 45m $*"
status=0
go test ./... -count=1 -timeout 45m "$@" || status=$?
if ((status == 0)); then
	echo "test: all tests passed"
else
	echo "test: go test failed (exit status $status)" >&2
fi
exit "$status"
