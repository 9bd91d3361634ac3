#!/bin/bash
# First start of the compose cluster's PostgreSQL (docker-entrypoint-initdb.d): one login role
# per service, owning only its own database. The services connect with these roles, never as
# the superuser. Passwords come from the environment (deploy/lib.sh makes them); none has a
# default.
set -Eeuo pipefail

for role in store delivery orders; do
    var="${role^^}_DB_PASSWORD"
    password=${!var:?"$var is not set"}
    psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
        -v role="$role" -v password="$password" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password' NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
CREATE DATABASE :"role" OWNER :"role";
REVOKE ALL ON DATABASE :"role" FROM PUBLIC;
SQL
    # The service creates its tables in `public`: make it the schema's owner (PostgreSQL 15
    # gives CREATE on `public` to no one else by default).
    psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$role" -v role="$role" <<'SQL'
ALTER SCHEMA public OWNER TO :"role";
SQL
    echo "order-saga: role and database $role created"
done
