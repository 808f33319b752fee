#!/usr/bin/env bash
# Runs the full Anchorage test suite: unit, property and end-to-end tests against a real
# nats-server (installed into .tools/ if missing) and real SQLite databases.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ANCHORAGE_DEV__NATS_SERVER="$(deploy/nats-server.sh)"
export ANCHORAGE_DEV__NATS_SERVER
echo "nats-server: $ANCHORAGE_DEV__NATS_SERVER ($("$ANCHORAGE_DEV__NATS_SERVER" --version))"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Unit, property and end-to-end tests (all targets; the crates have no doctests).
set +e
cargo test --workspace --all-targets --locked -j "${CARGO_BUILD_JOBS:-2}" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One summary line over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
