#!/usr/bin/env bash
# Installs the pinned Node packages the tests use if they are missing: s3rver into .tools/node
# (from tests/s3's lock file), and the TypeScript SDK's tools (the compiler, playwright-core)
# into shared/sdk-ts/node_modules (from its lock file). Prints the path of s3rver's command:
# an S3-compatible server that checks AWS Signature Version 4, for the attachment tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.tools/node"
bin="$dir/node_modules/s3rver/bin/s3rver.js"
if ! cmp -s "$root/tests/s3/package-lock.json" "$dir/package-lock.json" || ! [ -f "$bin" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing Node.js (apt-get install nodejs npm)" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm) >&2
    else
      echo "npm is needed (Node.js 20 or newer)" >&2
      exit 1
    fi
  fi
  mkdir -p "$dir"
  cp "$root/tests/s3/package.json" "$root/tests/s3/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi
sdk="$root/shared/sdk-ts"
if ! cmp -s "$sdk/package-lock.json" "$sdk/node_modules/.installed-lock.json" 2>/dev/null; then
  (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$sdk/package-lock.json" "$sdk/node_modules/.installed-lock.json"
fi
echo "$bin"
