#!/usr/bin/env bash
# Runs the full Anchorage test suite: unit, property and end-to-end tests against a real
# nats-server (installed into .tools/ if missing), real SQLite databases, the TypeScript SDK
# and the web chat page (Node's test runner, and Chromium driven by playwright-core), the server API
# against its OpenAPI document (schemathesis, installed into .tools/py), the deployment files
# (deploy/deploy-check.sh) and — in a second
# pass of the end-to-end tests — a real PostgreSQL (Debian's, installed if missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ANCHORAGE_DEV__NATS_SERVER="$(deploy/nats-server.sh)"
export ANCHORAGE_DEV__NATS_SERVER
echo "nats-server: $ANCHORAGE_DEV__NATS_SERVER ($("$ANCHORAGE_DEV__NATS_SERVER" --version))"
# The Python tools (the Web Push tests decrypt with http-ece; the API check below).
ANCHORAGE_TESTS_PYTHON="$(deploy/python-tools.sh)"
export ANCHORAGE_TESTS_PYTHON
# Installs Debian package $1 (for $2) when its command is missing; fails if it cannot.
apt_install() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $1 (apt-get install $1)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >&2
  else
    echo "$1 is needed for $2" >&2
    exit 1
  fi
}
# tmux: the terminal client's test drives `anchorage chat` in a tmux pane.
apt_install tmux "the terminal client's test"
# The Node packages (the attachment tests store files in s3rver, an S3-compatible server; the
# TypeScript SDK's compiler and playwright-core).
ANCHORAGE_TESTS_S3RVER="$(deploy/node-tools.sh)"
export ANCHORAGE_TESTS_S3RVER
# Chromium: the chat page's browser tests (Debian's, driven by playwright-core; no download).
if [ -z "${ANCHORAGE_CHROMIUM:-}" ]; then
  apt_install chromium "the chat page's browser tests (or set ANCHORAGE_CHROMIUM)"
  ANCHORAGE_CHROMIUM="$(command -v chromium)"
fi
export ANCHORAGE_CHROMIUM

log="$(mktemp)"
pg_dir="$(mktemp -d)"
chmod 755 "$pg_dir"
cleanup() {
  if [ -d "$pg_dir/pg/data" ]; then deploy/postgres.sh stop "$pg_dir/pg" || true; fi
  rm -rf "$log" "$pg_dir"
}
trap cleanup EXIT

set +e
# 1. Everything — unit, property and end-to-end tests — on SQLite (all targets; the crates
#    have no doctests).
cargo test --workspace --all-targets --locked -j "${CARGO_BUILD_JOBS:-2}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# 2. The TypeScript SDK (unit tests, generated types, end-to-end against `anchorage dev` with
#    socket cuts) and the web chat page in Chromium, on the binary the first pass built.
if [ "$status" = 0 ]; then
  ANCHORAGE_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/anchorage"
  export ANCHORAGE_BIN
  (cd shared/sdk-ts && npm test) 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
# 3. The server API against its OpenAPI document: property-based tests generated from it.
if [ "$status" = 0 ]; then
  deploy/api-check.sh 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
# 4. The deployment files (compose, Helm chart, Dockerfile, systemd units) rendered and checked
#    against the binary.
if [ "$status" = 0 ]; then
  deploy/deploy-check.sh 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
# 5. The end-to-end tests again on PostgreSQL: same code, same assertions.
if [ "$status" = 0 ]; then
  TESTS_POSTGRES_URL="$(deploy/postgres.sh start "$pg_dir/pg")"
  export TESTS_POSTGRES_URL
  echo "postgresql: $TESTS_POSTGRES_URL"
  cargo test -p anchorage-tests -p anchorage --all-targets --locked -j "${CARGO_BUILD_JOBS:-2}" "$@" 2>&1 | tee -a "$log"
  status=${PIPESTATUS[0]}
fi
set -e
# One summary line over every test binary of both passes and the TypeScript tests.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     /^# pass [0-9]+$/ { p += $3 } /^# fail [0-9]+$/ { f += $3 } /^# skipped [0-9]+$/ { s += $3 }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
