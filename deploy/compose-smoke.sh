#!/usr/bin/env bash
# make compose-smoke: the compose cluster end to end, on a machine with no image registry.
#
#   BIN_DIR=target/debug deploy/compose-smoke.sh
#
# Stages (each timed; the first failure names its stage and exits non-zero):
#   binaries        store, delivery, order, sagactl present in BIN_DIR
#   engine          start a Docker engine if none runs (Debian's docker.io, docker-compose)
#   base-image      debootstrap'ed Debian imported as an image (skipped when present)
#   postgres-image  PostgreSQL stand-in built on it (cached layers)
#   service-image   the host-built binaries packed with deploy/Dockerfile.prebuilt
#   up              compose up with a unique project name, wait until all four are healthy
#   hardening       least privilege: published ports, read-only non-root containers, each service
#                   holding only its own key, admin listeners on TLS only, no failpoints
#   walkthrough     the README's grpcurl session (tests/walkthrough.sh) through the published ports
#   concurrency     100 orders at once against 40 packets: exactly 40 PLACED, then sagactl verify
#   kill-restart    a large load, `docker kill` of the order container mid-load, `docker start`,
#                   health again, then `sagactl verify --wait 120s` (every order terminal, counts
#                   add up)
#   teardown        containers, network and volume of the project removed (also on failure)
#
# Everything goes through the published ports on 127.0.0.1, with the host's sagactl.
#
# Environment: BIN_DIR (default target/debug), SMOKE_ORDER_PORT / SMOKE_STORE_PORT /
# SMOKE_DELIVERY_PORT and SMOKE_*_ADMIN_PORT (default 25051-25053 and 25251-25253: below the
# kernel's ephemeral range, so no client connection left by an earlier test can hold one),
# SMOKE_KILL_ORDERS (default 2000, against half as
# many packets), SMOKE_KILL_CONCURRENCY (default 16), SMOKE_KILL_AFTER (seconds of load before the
# kill, default 4), SMOKE_KILL_RETRY_FOR (default 90s), SMOKE_KEEP=1 (leave the cluster up for inspection), COMPOSE, WALKTHROUGH_README.
set -Eeuo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$SECONDS
RUN_ID=$(date +%s)-$$
PROJECT=ordersaga-smoke-$RUN_ID
export ORDER_PORT=${SMOKE_ORDER_PORT:-25051}
export STORE_PORT=${SMOKE_STORE_PORT:-25052}
export DELIVERY_PORT=${SMOKE_DELIVERY_PORT:-25053}
export ORDER_ADMIN_PORT=${SMOKE_ORDER_ADMIN_PORT:-25251}
export STORE_ADMIN_PORT=${SMOKE_STORE_ADMIN_PORT:-25252}
export DELIVERY_ADMIN_PORT=${SMOKE_DELIVERY_ADMIN_PORT:-25253}
# The smoke test operates the cluster from the host: publish the admin listeners too.
export COMPOSE_OPERATOR=1
export ORDER_SAGA_BIND=127.0.0.1
export ORDER_RESERVATION_TTL=${SMOKE_RESERVATION_TTL:-30s}
ORDER_URL=http://127.0.0.1:$ORDER_PORT
STORE_URL=http://127.0.0.1:$STORE_PORT
DELIVERY_URL=http://127.0.0.1:$DELIVERY_PORT
# The admin listeners serve TLS with the cluster's certificates: sagactl and the walkthrough
# verify them against the cluster CA, copied out of the order container once it is up.
CLUSTER_CA=$REPO_ROOT/target/compose-smoke/ca.pem
ADMIN_URLS=(--order-admin "https://127.0.0.1:$ORDER_ADMIN_PORT" --store-admin "https://127.0.0.1:$STORE_ADMIN_PORT"
    --delivery-admin "https://127.0.0.1:$DELIVERY_ADMIN_PORT" --tls-ca "$CLUSTER_CA")
# This run's admin tokens, one per service: the cluster takes them from compose, sagactl and the
# walkthrough from the environment.
ORDER_ADMIN_TOKEN=$(random_secret) STORE_ADMIN_TOKEN=$(random_secret) DELIVERY_ADMIN_TOKEN=$(random_secret)
export ORDER_ADMIN_TOKEN STORE_ADMIN_TOKEN DELIVERY_ADMIN_TOKEN
export SAGACTL_ORDER_ADMIN_TOKEN=$ORDER_ADMIN_TOKEN SAGACTL_STORE_ADMIN_TOKEN=$STORE_ADMIN_TOKEN \
    SAGACTL_DELIVERY_ADMIN_TOKEN=$DELIVERY_ADMIN_TOKEN
LOG_DIR=$REPO_ROOT/target/compose-smoke
mkdir -p "$LOG_DIR"

d=${BIN_DIR:-target/debug}
if [ -d "$d" ]; then BIN_DIR=$(cd "$d" && pwd)
elif [ -d "$REPO_ROOT/$d" ]; then BIN_DIR=$(cd "$REPO_ROOT/$d" && pwd)
else die "BIN_DIR $d not found (build the binaries first: cargo build --bins)"; fi
export BIN_DIR

sagactl() {
    "$BIN_DIR/sagactl" --order "$ORDER_URL" --store "$STORE_URL" --delivery "$DELIVERY_URL" \
        "${ADMIN_URLS[@]}" "$@"
}

# --- stage bookkeeping -------------------------------------------------------------------------
STAGES=() TIMES=() RESULTS=()
CURRENT_STAGE="" CLUSTER_CREATED=0 LOAD_PID=""

stage() {
    local name=$1; shift
    CURRENT_STAGE=$name
    local start=$SECONDS
    echo
    log "=== stage $name"
    "$@"
    STAGES+=("$name"); TIMES+=($((SECONDS - start))); RESULTS+=(ok)
    log "=== stage $name: ok in $((SECONDS - start))s"
    CURRENT_STAGE=""
}

summary() {
    local i
    echo
    echo "compose-smoke summary (project $PROJECT, compose: ${COMPOSE:-?})"
    for i in "${!STAGES[@]}"; do
        local t=${TIMES[$i]}
        [ "$t" = - ] || t=${t}s
        printf '  %-16s %-6s %6s\n' "${STAGES[$i]}" "${RESULTS[$i]}" "$t"
    done
    printf '  %-16s %-6s %6s\n' total "" "$((SECONDS - T0))s"
}

teardown() {
    if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then kill "$LOAD_PID" 2>/dev/null || true; fi
    [ "$CLUSTER_CREATED" = 1 ] || return 0
    if [ "${SMOKE_KEEP:-0}" = 1 ]; then
        log "SMOKE_KEEP=1: cluster $PROJECT left running; remove it with:"
        log "  COMPOSE_FILE_PATH=$COMPOSE_FILE_PATH $COMPOSE -p $PROJECT -f $COMPOSE_FILE_PATH down -v"
        return 0
    fi
    compose "$PROJECT" down -v --remove-orphans -t 10 >"$LOG_DIR/teardown.log" 2>&1 || {
        cat "$LOG_DIR/teardown.log" >&2; return 1; }
    local left
    left=$( { docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
              docker network ls -q --filter "label=com.docker.compose.project=$PROJECT"
              docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT"; } | wc -l)
    [ "$left" -eq 0 ] || { log "teardown left $left containers/networks/volumes of $PROJECT"; return 1; }
    CLUSTER_CREATED=0
}

on_exit() {
    local rc=$?
    trap - EXIT
    if [ $rc -ne 0 ] && [ -n "$CURRENT_STAGE" ]; then
        STAGES+=("$CURRENT_STAGE"); TIMES+=("-"); RESULTS+=(FAILED)
        if [ "$CLUSTER_CREATED" = 1 ]; then
            local logs=$LOG_DIR/$PROJECT.log
            compose "$PROJECT" ps >"$logs" 2>&1 || true
            compose "$PROJECT" logs --no-color --timestamps >>"$logs" 2>&1 || true
            log "container logs in $logs; last lines:"
            tail -n 40 "$logs" >&2 || true
        fi
    fi
    local failed_stage=$CURRENT_STAGE
    CURRENT_STAGE=teardown
    local start=$SECONDS
    if teardown; then
        STAGES+=(teardown); TIMES+=($((SECONDS - start))); RESULTS+=(ok)
    else
        STAGES+=(teardown); TIMES+=($((SECONDS - start))); RESULTS+=(FAILED)
        [ $rc -ne 0 ] || { rc=1; failed_stage=teardown; }
    fi
    summary
    if [ $rc -ne 0 ]; then
        echo "compose-smoke: FAIL in stage ${failed_stage:-?} (exit $rc)"
    else
        echo "compose-smoke: PASS in $((SECONDS - T0))s"
    fi
    exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# --- stages --------------------------------------------------------------------------------------
st_binaries() {
    local b
    for b in "${SERVICE_BINARIES[@]}"; do
        [ -x "$BIN_DIR/$b" ] || die "missing binary $BIN_DIR/$b (cargo build --bins)"
    done
    log "binaries from $BIN_DIR"
}

st_engine() {
    ensure_engine
    ensure_compose
    detect_compose
    log "compose: $COMPOSE ($($COMPOSE version --short 2>/dev/null || $COMPOSE version | head -n1))"
}

port_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

st_up() {
    local p
    for p in "$ORDER_PORT" "$STORE_PORT" "$DELIVERY_PORT" "$ORDER_ADMIN_PORT" "$STORE_ADMIN_PORT" "$DELIVERY_ADMIN_PORT"; do
        port_free "$p" || die "port 127.0.0.1:$p is taken; choose others with SMOKE_ORDER_PORT, SMOKE_STORE_PORT, SMOKE_DELIVERY_PORT and SMOKE_*_ADMIN_PORT"
    done
    use_standins
    CLUSTER_CREATED=1
    compose "$PROJECT" up -d --no-build >"$LOG_DIR/up.log" 2>&1 || { cat "$LOG_DIR/up.log" >&2; die "compose up failed"; }
    wait_healthy "$PROJECT" 240 postgres store delivery order
    compose "$PROJECT" ps
    docker exec "$(service_cid "$PROJECT" order)" cat /app/data/certs/ca.pem >"$CLUSTER_CA" \
        || die "cannot read the cluster CA from the order container"
}

st_walkthrough() {
    WALKTHROUGH_ADMIN_CACERT=$CLUSTER_CA bash "$REPO_ROOT/tests/walkthrough.sh" "127.0.0.1:$ORDER_PORT" "127.0.0.1:$STORE_PORT" \
        "127.0.0.1:$DELIVERY_PORT" "127.0.0.1:$ORDER_ADMIN_PORT" "127.0.0.1:$STORE_ADMIN_PORT" \
        "127.0.0.1:$DELIVERY_ADMIN_PORT"
}

# last_summary FILE -> the place-many summary line, checked for shape
last_summary() {
    local line
    line=$(grep -E '^attempted=[0-9]+ placed=[0-9]+ not_placed=[0-9]+ errors=[0-9]+( busy_retries=[0-9]+)?$' "$1" | tail -n1)
    [ -n "$line" ] || { tail -n 20 "$1" >&2; die "sagactl place-many printed no summary line"; }
    echo "$line"
}
# food_row FOOD < `sagactl availability` -> "FOOD: available=A reserved=R assigned=S" (its table)
food_row() {
    python3 -c '
import sys
food = sys.argv[1]
for line in sys.stdin:
    cells = [c.strip(" \u2502\n") for c in line.split("\u2506")]
    if len(cells) >= 5 and cells[0] == food:
        print(f"{food}: available={cells[2]} reserved={cells[3]} assigned={cells[4]}")
        break
' "$1"
}
field() { sed -E "s/.*(^| )$1=([0-9]+).*/\\2/" <<<"$2"; }

# Least privilege, as deployed: the base compose file publishes only the order API, never an
# internal listener; every running service container has a read-only root, runs as non-root,
# has dropped every capability and may not gain privileges (read from docker inspect);
# the image carries no failpoints (such a build refuses to start with FAILPOINTS set).
st_hardening() {
    local config
    config=$(COMPOSE_OPERATOR=0 compose "$PROJECT" config)
    python3 - "$config" "$ORDER_PORT" <<'PY' || die "the base compose file is not least-privilege"
import re, sys
text, order_port = sys.argv[1], sys.argv[2]
published = re.findall(r"(?:published: ['\"]?(\d+)|- (?:[\d.]+:)?(\d+):\d+)", text)
ports = sorted({a or b for a, b in published})
print("published by the base file:", ports)
# Jaeger's UI (16686), Prometheus (9090) and Grafana (3000): only under the "observability" profile.
assert [p for p in ports if p not in ("16686", "9090", "3000")] == [order_port], ports
PY
    local svc cid
    for svc in store delivery order; do
        cid=$(service_cid "$PROJECT" "$svc")
        local got
        got=$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}} {{.Config.User}} {{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}' "$cid")
        [ "$got" = "true 10001:10001 [ALL] [no-new-privileges:true]" ] \
            || die "$svc is not read-only, non-root, capability-free and no-new-privileges: $got"
        if docker port "$cid" | grep -Eq '5015[23]'; then die "$svc publishes its internal listener"; fi
        # Per-service identity: the CA and this service's own key pair, no other service's key.
        local keys
        keys=$(docker exec "$cid" sh -c 'cd /app/data/certs && ls | sort | tr "\n" " "')
        [ "$keys" = "ca.pem $svc.key $svc.pem " ] \
            || die "$svc's identity volume holds more than the CA and its own key pair: $keys"
        keys=$(docker exec "$cid" find /app /tmp -name '*.key' | sort | tr '\n' ' ')
        [ "$keys" = "/app/data/certs/$svc.key " ] || die "$svc can read private keys other than its own: $keys"
    done
    # Admin listeners speak TLS only: a plaintext client gets no answer, a verified one does.
    local port
    for port in "$ORDER_ADMIN_PORT" "$STORE_ADMIN_PORT" "$DELIVERY_ADMIN_PORT"; do
        if "$BIN_DIR/sagactl" health --timeout 3s "http://127.0.0.1:$port" >/dev/null 2>&1; then
            die "the admin listener on $port answers plaintext"
        fi
        "$BIN_DIR/sagactl" --tls-ca "$CLUSTER_CA" health --timeout 10s "https://127.0.0.1:$port" \
            || die "the admin listener on $port does not serve TLS with the cluster's certificate"
    done
    # A build without failpoints refuses to start when FAILPOINTS is set, and says why.
    local refusal
    refusal=$(docker run --rm -e FAILPOINTS='order-after-create=panic' "$ORDER_SAGA_IMAGE" order --help 2>&1 || true)
    if grep -q "built without the failpoints feature" <<<"$refusal"; then
        log "the order binary in $ORDER_SAGA_IMAGE has no failpoints compiled in"
    else
        die "the image's binaries carry failpoints (build them with make image-bins): $refusal"
    fi
}

st_concurrency() {
    local food=smoke-c-$RUN_ID zone=smoke-c-$RUN_ID out=$LOG_DIR/concurrency.out line
    sagactl food create "$food" "Smoke concurrency $RUN_ID"
    sagactl restock "$food" 40
    sagactl agents add "$zone" 100
    sagactl place-many --count 100 --concurrency 100 --food "$food" --zone "$zone" \
        --key-prefix "smoke-c-$RUN_ID" 2>&1 | tee "$out"
    line=$(last_summary "$out")
    log "place-many: $line"
    [ "$(field attempted "$line")" = 100 ] || die "expected attempted=100: $line"
    [ "$(field errors "$line")" = 0 ] || die "transport errors: $line"
    [ "$(field placed "$line")" = 40 ] || die "expected exactly 40 PLACED against 40 packets: $line"
    [ "$(field not_placed "$line")" = 60 ] || die "expected 60 NOT_PLACED: $line"
    sagactl verify --wait 60s
}

st_kill_restart() {
    local food=smoke-k-$RUN_ID zone=smoke-k-$RUN_ID out=$LOG_DIR/kill-load.out line cid
    local count=${SMOKE_KILL_ORDERS:-2000} conc=${SMOKE_KILL_CONCURRENCY:-16}
    local retry_for=${SMOKE_KILL_RETRY_FOR:-90s} packets=$(( ${SMOKE_KILL_ORDERS:-2000} / 2 ))
    sagactl food create "$food" "Smoke kill $RUN_ID"
    # Fewer packets than orders, so both PLACED and NOT_PLACED orders are in flight at the kill.
    sagactl restock "$food" "$packets"
    sagactl agents add "$zone" "$count"
    cid=$(service_cid "$PROJECT" order)
    [ -n "$cid" ] || die "no order container"

    # The binary itself in the background (not the shell function), so that $! is its pid.
    # --retry-for: a request cut by the kill is sent again with the same idempotency key once the
    # order service is back, so the load goes on across the restart and each retried key must
    # come back with its one order.
    "$BIN_DIR/sagactl" --order "$ORDER_URL" --store "$STORE_URL" --delivery "$DELIVERY_URL" \
        "${ADMIN_URLS[@]}" place-many --count "$count" --concurrency "$conc" --food "$food" --zone "$zone" \
        --key-prefix "smoke-k-$RUN_ID" --retry-for "$retry_for" --allow-errors >"$out" 2>&1 &
    LOAD_PID=$!
    sleep "${SMOKE_KILL_AFTER:-4}"
    kill -0 "$LOAD_PID" 2>/dev/null \
        || die "the load ($count orders) finished before the kill: raise SMOKE_KILL_ORDERS"
    log "at the kill: $(sagactl availability 2>/dev/null | food_row "$food" || true)"
    log "docker kill order container ${cid:0:12} (load running for ${SMOKE_KILL_AFTER:-4}s)"
    docker kill "$cid" >/dev/null
    sleep 2
    log "docker start ${cid:0:12}"
    docker start "$cid" >/dev/null
    wait_healthy "$PROJECT" 120 order
    log "order healthy again; waiting for the load to finish"
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=""
    tail -n 3 "$out"
    [ $rc -eq 0 ] || die "sagactl place-many exited with $rc"
    line=$(last_summary "$out")
    log "load: $line"
    [ "$(field attempted "$line")" = "$count" ] || die "expected attempted=$count: $line"
    [ "$(field placed "$line")" -le "$packets" ] || die "more PLACED than packets: $line"
    sagactl verify --wait 120s
}

stage binaries st_binaries
stage engine st_engine
stage base-image ensure_base_image
stage postgres-image ensure_postgres_image
stage service-image ensure_service_image
stage up st_up
stage hardening st_hardening
stage walkthrough st_walkthrough
stage concurrency st_concurrency
stage kill-restart st_kill_restart
