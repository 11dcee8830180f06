#!/usr/bin/env bash
# Installs what the tests and the demo need and is missing:
#   - PostgreSQL server binaries (Debian/Ubuntu package "postgresql"; the
#     harness runs its own throwaway servers from /usr/lib/postgresql/*/bin)
#   - redis-server (package "redis-server")
# and checks that Go >= 1.26 is available.
#
# It only installs packages. It never starts, stops or reconfigures the
# machine's own PostgreSQL or Redis services (installing the Debian package
# may start a cluster on port 5432 by itself; that one is left alone; the
# tests and the demo use their own servers on free loopback ports).
#
# Quick and silent-ish when everything is present; apt-get update runs only
# when something is missing. Exit status: 0 when everything is there.
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: %s\n' "$*" >&2; exit 1; }

GO_MIN_MAJOR=1
GO_MIN_MINOR=26

# --- PostgreSQL server binaries ------------------------------------------
# Same search as internal/harness: initdb on PATH, else the highest
# /usr/lib/postgresql/*/bin holding initdb, pg_ctl and postgres.
pg_bindir() {
	local d best="" bestv=-1 v
	if command -v initdb >/dev/null 2>&1; then
		d=$(dirname "$(readlink -f "$(command -v initdb)")")
		if [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]]; then
			echo "$d"
			return 0
		fi
	fi
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] || continue
		v=$(basename "$(dirname "$d")")
		v=${v%%.*}
		[[ $v =~ ^[0-9]+$ ]] || continue
		if ((v > bestv)); then
			best=$d
			bestv=$v
		fi
	done
	[[ -n $best ]] && echo "$best"
}

redis_bin() {
	if command -v redis-server >/dev/null 2>&1; then
		command -v redis-server
	elif [[ -x /usr/bin/redis-server ]]; then
		echo /usr/bin/redis-server
	fi
}

missing=()
pgdir=$(pg_bindir || true)
[[ -n $pgdir ]] || missing+=(postgresql)
redis=$(redis_bin || true)
[[ -n $redis ]] || missing+=(redis-server)

if ((${#missing[@]} > 0)); then
	install_cmd="apt-get install -y --no-install-recommends ${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
		die "missing: ${missing[*]}. This script installs them only on Debian/Ubuntu (apt-get).
  Install with your package manager: a PostgreSQL server (10 or later; initdb, pg_ctl
  and postgres on PATH or in /usr/lib/postgresql/*/bin) and redis-server (4.0 or later)."
	fi
	if ((EUID == 0)); then
		sudo=()
	elif command -v sudo >/dev/null 2>&1; then
		sudo=(sudo)
		say "not root: using sudo for apt-get"
	else
		die "missing: ${missing[*]}. Not root and sudo is not available; as root run:
  apt-get update && DEBIAN_FRONTEND=noninteractive $install_cmd"
	fi
	say "missing: ${missing[*]}; installing with apt-get"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	# shellcheck disable=SC2086
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive $install_cmd -q
	pgdir=$(pg_bindir || true)
	redis=$(redis_bin || true)
	[[ -n $pgdir ]] || die "apt-get finished but no PostgreSQL server binaries were found in /usr/lib/postgresql/*/bin"
	[[ -n $redis ]] || die "apt-get finished but redis-server was not found"
fi

# PostgreSQL refuses to run as root: as root, the harness runs it as the
# OS user postgres, which the Debian package creates.
if ((EUID == 0)) && ! id postgres >/dev/null 2>&1; then
	die "running as root, but there is no OS user 'postgres' to run the throwaway PostgreSQL servers as.
  It comes with the Debian/Ubuntu package: apt-get install postgresql (or run as a non-root user)."
fi

pgver=$("$pgdir/postgres" --version 2>/dev/null | awk '{print $3}')
redisver=$("$redis" --version 2>/dev/null | sed -n 's/.*v=\([^ ]*\).*/\1/p')

# --- Go ---------------------------------------------------------------------
gobin=""
if command -v go >/dev/null 2>&1; then
	gobin=$(command -v go)
elif [[ -x /usr/local/go/bin/go ]]; then
	gobin=/usr/local/go/bin/go
fi
case $(uname -m) in
aarch64 | arm64) goarch=arm64 ;;
*) goarch=amd64 ;;
esac
go_hint="install Go ${GO_MIN_MAJOR}.${GO_MIN_MINOR} or later from https://go.dev/dl/, e.g.
  curl -fsSLO https://go.dev/dl/go${GO_MIN_MAJOR}.${GO_MIN_MINOR}.0.linux-${goarch}.tar.gz
  rm -rf /usr/local/go && tar -C /usr/local -xzf go${GO_MIN_MAJOR}.${GO_MIN_MINOR}.0.linux-${goarch}.tar.gz
  export PATH=\$PATH:/usr/local/go/bin
(the Debian/Ubuntu golang packages are older than ${GO_MIN_MAJOR}.${GO_MIN_MINOR})"
[[ -n $gobin ]] || die "go not found on PATH or in /usr/local/go/bin; $go_hint"
# From / with GOTOOLCHAIN=local: the local go's own version, without
# go.mod asking an older go to download a newer toolchain.
gover=$(cd / && GOTOOLCHAIN=local "$gobin" version 2>/dev/null | awk '{print $3}' || true)
if [[ ! $gover =~ ^go([0-9]+)\.([0-9]+) ]]; then
	die "cannot tell the version of $gobin ('$gover'); $go_hint"
fi
gomaj=${BASH_REMATCH[1]}
gomin=${BASH_REMATCH[2]}
if ((gomaj < GO_MIN_MAJOR || (gomaj == GO_MIN_MAJOR && gomin < GO_MIN_MINOR))); then
	die "$gobin is $gover, older than go${GO_MIN_MAJOR}.${GO_MIN_MINOR}; $go_hint"
fi
if ! command -v go >/dev/null 2>&1; then
	say "note: go is in /usr/local/go/bin but not on PATH (scripts/test.sh and scripts/demo.sh add it)"
fi

say "ok: PostgreSQL ${pgver:-?} ($pgdir), redis-server ${redisver:-?} ($redis), $gover ($gobin)"
