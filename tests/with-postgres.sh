#!/usr/bin/env bash
# Runs a command (the test suite) with DATABASE_URL pointing at a PostgreSQL server.
#
# Which server: $DATABASE_URL if set; else postgres://postgres@127.0.0.1:5432/postgres if it
# answers; else a throwaway cluster started here with initdb/pg_ctl on a free port (PostgreSQL
# is installed from Debian's packages first when missing and we are root). Never skips: if no
# server can be had, this fails loudly. Test databases (ostest_*) are dropped afterwards.
set -euo pipefail

log() { echo "with-postgres: $*" >&2; }

pg_bin() {
  local name=$1
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  ls /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

reachable() {
  local isready
  isready=$(pg_bin pg_isready)
  if [ -n "$isready" ]; then
    "$isready" -q -d "$1" -t 3
  else
    # No client tools: fall back to a TCP probe of the URL's host and port.
    python3 - "$1" <<'PY'
import socket, sys, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
socket.create_connection((u.hostname or "127.0.0.1", u.port or 5432), timeout=3).close()
PY
  fi
}

cleanup_dbs() {
  local psql
  psql=$(pg_bin psql)
  [ -n "$psql" ] || return 0
  "$psql" "$DATABASE_URL" -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'ostest\_%'" 2>/dev/null |
    while read -r db; do
      [ -n "$db" ] && "$psql" "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
}

THROWAWAY=""
stop_throwaway() {
  if [ -n "$THROWAWAY" ]; then
    runuser -u postgres -- "$(pg_bin pg_ctl)" -D "$THROWAWAY/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$THROWAWAY"
  fi
}

start_throwaway() {
  if [ -z "$(pg_bin initdb)" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing PostgreSQL from Debian's packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
  fi
  local initdb pg_ctl port
  initdb=$(pg_bin initdb); pg_ctl=$(pg_bin pg_ctl)
  if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
    log "FATAL: no PostgreSQL reachable and initdb/pg_ctl are not installed"
    exit 1
  fi
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  # Tests may trade durability for speed; the benchmark (WITH_POSTGRES_DURABLE=1) may not.
  local fast="-c fsync=off"
  [ -n "${WITH_POSTGRES_DURABLE:-}" ] && fast=""
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  THROWAWAY=$(mktemp -d /tmp/order-saga-pg.XXXXXX)
  chown postgres "$THROWAWAY"
  trap stop_throwaway EXIT
  runuser -u postgres -- "$initdb" -D "$THROWAWAY/data" -A trust -U postgres >/dev/null
  runuser -u postgres -- "$pg_ctl" -D "$THROWAWAY/data" -w -l "$THROWAWAY/log" \
    -o "-p $port -k $THROWAWAY -c listen_addresses=127.0.0.1 -c max_connections=400 $fast" start >/dev/null
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  log "started a throwaway PostgreSQL cluster at $DATABASE_URL"
}

if [ -n "${DATABASE_URL:-}" ]; then
  reachable "$DATABASE_URL" || { log "FATAL: DATABASE_URL=$DATABASE_URL does not answer"; exit 1; }
else
  DEFAULT_URL="postgres://postgres@127.0.0.1:5432/postgres"
  if reachable "$DEFAULT_URL" 2>/dev/null; then
    export DATABASE_URL=$DEFAULT_URL
  else
    start_throwaway
  fi
fi
log "PostgreSQL for the tests: $DATABASE_URL"

status=0
"$@" || status=$?
cleanup_dbs
exit $status
