#!/bin/bash
# Entrypoint of the PostgreSQL stand-in image: a small subset of the official image's, with the
# same variables and the same behaviour on first start (initdb, password, database, init scripts,
# then a temporary server bound to the Unix socket only, so that pg_isready -h 127.0.0.1 reports
# ready only once initialisation is over).
set -Eeuo pipefail

log() { echo "stand-in-postgres: $*" >&2; }

# `docker run IMAGE -c fsync=off` means `postgres -c fsync=off`.
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" != postgres ]; then exec "$@"; fi

# As root: fix ownership, then start again as the postgres user.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
AUTH=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$AUTH" != trust ]; then
        log "error: database is uninitialized and POSTGRES_PASSWORD is not set"
        log "       (set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust)"
        exit 1
    fi
    log "initialising $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" > "$pwfile"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of arguments
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" \
        ${POSTGRES_INITDB_ARGS:---encoding=UTF8 --locale=C.UTF-8} -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    {
        echo
        echo "# added by the order-saga stand-in entrypoint"
        echo "host all all all $AUTH"
    } >> "$PGDATA/pg_hba.conf"

    # Temporary server: Unix socket only.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c unix_socket_directories=/var/run/postgresql" \
        -w start >/dev/null
    psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc -h /var/run/postgresql)
    if [ "$POSTGRES_DB" != postgres ]; then
        exists=$("${psql[@]}" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '${POSTGRES_DB//\'/\'\'}'")
        if [ "$exists" != 1 ]; then
            "${psql[@]}" -d postgres -c "CREATE DATABASE \"${POSTGRES_DB//\"/\"\"}\"" >/dev/null
        fi
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        # shellcheck disable=SC1090 # init scripts are sourced, as in the official image
        case "$f" in
            *.sh)  log "running $f"; . "$f" ;;
            *.sql) log "running $f"; "${psql[@]}" -d "$POSTGRES_DB" -f "$f" >/dev/null ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" -d "$POSTGRES_DB" >/dev/null ;;
            *) ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    log "initialisation done"
fi

shift # "postgres"
exec postgres -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql "$@"
