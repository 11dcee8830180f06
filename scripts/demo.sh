#!/usr/bin/env bash
# The demo: throwaway PostgreSQL and Redis on free loopback ports, the
# sample schema (examples/schema.sql), the engine binary running with the
# repository's rules.yaml, and a scripted story of writes whose cache
# invalidations are printed as they happen. Installs missing
# PostgreSQL/redis-server first (Debian/Ubuntu).
#   scripts/demo.sh          # run the story and clean up
#   scripts/demo.sh --keep   # then keep everything running until Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

scripts/install-deps.sh
exec go run ./internal/demo "$@"
