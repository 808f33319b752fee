#!/usr/bin/env bash
# A throwaway PostgreSQL server for the test suite.
#
#   deploy/postgres.sh start DIR   starts a server with its data in DIR (whose parent the postgres
#                                  user can enter, when run as root) on a free loopback port
#                                  and prints its admin URL (postgres://postgres@127.0.0.1:PORT/postgres)
#   deploy/postgres.sh stop DIR    stops it
#
# Uses the installed PostgreSQL (Debian's postgresql package; installed with apt-get when
# missing and running as root). Authentication is `trust` on loopback only: for tests, never
# for production.
set -euo pipefail

cmd="${1:?usage: deploy/postgres.sh start|stop DIR}"
dir="${2:?usage: deploy/postgres.sh start|stop DIR}"

find_bin() {
  local d
  for d in "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/*/bin; do
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
  done
  return 1
}

bin="$(find_bin || true)"
if [ -z "$bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL (apt-get install postgresql)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
    bin="$(find_bin)"
  else
    echo "PostgreSQL is not installed (need initdb and pg_ctl)" >&2
    exit 1
  fi
fi

# PostgreSQL refuses to run as root: run it as the postgres user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-instructions >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w \
      -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *)
    echo "usage: deploy/postgres.sh start|stop DIR" >&2
    exit 2
    ;;
esac
