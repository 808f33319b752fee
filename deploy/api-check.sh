#!/usr/bin/env bash
# Checks the server API from outside against a real `anchorage dev` stack: validates the
# OpenAPI document (openapi-spec-validator), runs property-based tests generated from it
# (schemathesis: positive and negative cases, every check, stateful sequences) with an admin
# API key, then verifies webhook deliveries with the reference Standard Webhooks verifier
# (deploy/webhook-check.py). Tools are pinned and installed into .tools/py if missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

py="$(dirname "$(dirname "$(deploy/python-tools.sh)")")"

ANCHORAGE_DEV__NATS_SERVER="${ANCHORAGE_DEV__NATS_SERVER:-$(deploy/nats-server.sh)}"
export ANCHORAGE_DEV__NATS_SERVER
cargo build --quiet --locked -p anchorage
bin="${CARGO_TARGET_DIR:-$root/target}/debug/anchorage"

work="$(mktemp -d)"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_port="$(free_port)"
nats_port="$(free_port)"
export ANCHORAGE_DEV__DATA_DIR="$work/data"
export ANCHORAGE_DEV__NATS_PORT="$nats_port"
export ANCHORAGE_EDGE__LISTEN="127.0.0.1:$http_port"
export ANCHORAGE_NATS__URL="nats://127.0.0.1:$nats_port"
# Quick retries, so the webhook check's failures are retried within seconds.
export ANCHORAGE_WEBHOOKS__TIMEOUT_MS=1000 ANCHORAGE_WEBHOOKS__MAX_BACKOFF_MS=300
base="http://127.0.0.1:$http_port"

"$bin" dev >"$work/dev.log" 2>&1 &
dev=$!
cleanup() {
  kill "$dev" 2>/dev/null || true
  wait "$dev" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for _ in $(seq 1 150); do
  if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$dev" 2>/dev/null; then cat "$work/dev.log"; exit 1; fi
  sleep 0.2
done
curl -fsS "$base/readyz" >/dev/null

# The document the CLI prints is the one the edge serves, and it is valid OpenAPI 3.1.
"$bin" openapi >"$work/openapi.json"
curl -fsS "$base/v1/openapi.json" | cmp - "$work/openapi.json"
"$py/bin/openapi-spec-validator" "$work/openapi.json"

key="$("$bin" apikey create --name api-check --scope admin --rate 100000 2>/dev/null)"
echo "schemathesis against $base"
"$py/bin/schemathesis" run "$base/v1/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks all --max-examples "${API_CHECK_EXAMPLES:-60}" --workers 1 --seed 1 \
  --no-color
echo "api-check: the server API conforms to its OpenAPI document"
"$py/bin/python" deploy/webhook-check.py "$base" "$key"
