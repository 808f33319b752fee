#!/usr/bin/env bash
# Runs the full Anchorage test suite: unit, property and end-to-end tests against a real
# nats-server (installed into .tools/ if missing) and real SQLite databases.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ANCHORAGE_DEV__NATS_SERVER="$(deploy/nats-server.sh)"
export ANCHORAGE_DEV__NATS_SERVER
echo "nats-server: $ANCHORAGE_DEV__NATS_SERVER ($("$ANCHORAGE_DEV__NATS_SERVER" --version))"

# One build job at a time keeps memory and the 2-core machines predictable.
cargo test --workspace --locked -j "${CARGO_BUILD_JOBS:-2}" "$@"
