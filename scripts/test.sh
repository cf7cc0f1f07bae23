#!/usr/bin/env bash
# The one command that runs every test of botfleet, on a fresh Debian machine as on a
# developer's: installs what the tests need when it is missing, then runs them all.
#
#   scripts/test.sh [extra cargo-nextest arguments]
#
# - redis-server and redis-tools: installed with apt-get when redis-server is not on PATH (as
#   root, or through sudo when available). The tests start their own servers on free ports;
#   they never use a Redis the machine may already run on 6379.
# - chromium (Debian's package, at /usr/bin/chromium): installed with apt-get when missing, for
#   the dashboard's headless browser test.
# - cargo-nextest: installed with `cargo install --locked cargo-nextest` when missing.
# - CI=true selects the nextest `ci` profile (.config/nextest.toml): no fail-fast, hung tests
#   killed, JUnit report in target/nextest/ci/junit.xml.
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

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "redis-server is missing and there is no apt-get: install redis-server yourself"
  log "redis-server is missing: installing redis-server and redis-tools with apt-get"
  local out
  out=$(mktemp)
  if ! {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends redis-server redis-tools
  } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "apt-get could not install redis-server"
  fi
  rm -f "$out"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still not on PATH after apt-get"
}

# The dashboard's browser test (tests/dashboard.rs) drives Debian's chromium headless.
ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  command -v apt-get >/dev/null 2>&1 ||
    die "chromium is missing and there is no apt-get: install chromium at /usr/bin/chromium yourself"
  log "chromium is missing: installing chromium with apt-get"
  local out
  out=$(mktemp)
  if ! {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends chromium fonts-dejavu-core
  } >"$out" 2>&1; then
    cat "$out" >&2
    rm -f "$out"
    die "apt-get could not install chromium"
  fi
  rm -f "$out"
  [ -x /usr/bin/chromium ] || die "chromium still missing at /usr/bin/chromium after apt-get"
}

ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  log "cargo-nextest is missing: cargo install --locked cargo-nextest"
  cargo install --locked --quiet cargo-nextest
}

ensure_cargo
ensure_redis
ensure_chromium
ensure_nextest

profile=default
if [ "${CI:-}" = true ]; then
  profile=ci
fi

status=0
cargo nextest run --profile "$profile" --all-targets --no-fail-fast "$@" || status=$?
cargo test --doc --quiet || status=$?
exit "$status"
