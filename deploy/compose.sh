#!/usr/bin/env bash
# Bring the order-saga compose cluster up or down (make compose-up / make compose-down).
#
#   deploy/compose.sh up      [extra `compose up` args]   build or stage images, start, wait healthy
#   deploy/compose.sh down    [extra `compose down` args] stop and remove containers and network
#                                                          (add -v to drop the database volume too)
#   deploy/compose.sh ps|logs|... [args]                   any other compose command, same project
#
# Environment:
#   ORDER_SAGA_MODE   auto (default) | public | local
#                     public: public images (postgres:16, rust/debian to build deploy/Dockerfile);
#                     local: stand-ins built here, no image registry needed (deploy/lib.sh) and the
#                     service image packed from binaries already built on the host (BIN_DIR);
#                     auto: public when the PostgreSQL image is present or can be pulled, else local.
#   BIN_DIR           local mode: where store, delivery, order, sagactl are (default target/debug)
#   COMPOSE_PROJECT_NAME   default order-saga
#   COMPOSE           "docker compose" or "docker-compose" (default: v2 when installed, else v1)
#   COMPOSE_PROFILES  e.g. observability (Jaeger; public images only)
#   ORDER_PORT STORE_PORT DELIVERY_PORT ORDER_SAGA_BIND and the other variables of
#   docker-compose.yml pass through.
set -Eeuo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROJECT=${COMPOSE_PROJECT_NAME:-order-saga}
cmd=${1:-}
[ -n "$cmd" ] || { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift

resolve_bin_dir() {
    local d=${BIN_DIR:-target/debug}
    if [ -d "$d" ]; then BIN_DIR=$(cd "$d" && pwd)
    elif [ -d "$REPO_ROOT/$d" ]; then BIN_DIR=$(cd "$REPO_ROOT/$d" && pwd)
    else die "BIN_DIR $d not found (build the binaries first: cargo build --bins)"; fi
    export BIN_DIR
}

choose_mode() {
    MODE=${ORDER_SAGA_MODE:-auto}
    [ "$MODE" != auto ] && return 0
    local pg=${POSTGRES_IMAGE:-postgres:16}
    if image_exists "$pg"; then MODE=public; return 0; fi
    log "checking whether $pg can be pulled"
    if timeout 120 docker pull -q "$pg" >/dev/null 2>&1; then MODE=public
    else
        log "no image registry reachable: using local stand-in images"
        MODE=local
    fi
}

case $cmd in
    up)
        ensure_engine
        ensure_compose
        choose_mode
        if [ "$MODE" = local ]; then
            resolve_bin_dir
            ensure_standins
            use_standins
            compose "$PROJECT" up -d --no-build "$@"
        else
            log "building deploy/Dockerfile (first build compiles the workspace: several minutes)"
            compose "$PROJECT" up -d --build "$@"
        fi
        wait_healthy "$PROJECT" "${HEALTH_TIMEOUT:-240}" postgres store delivery order \
            || { compose "$PROJECT" ps; compose "$PROJECT" logs --tail 40; die "cluster is not healthy"; }
        log "cluster $PROJECT is up ($MODE images):"
        log "  order API  ${ORDER_SAGA_BIND:-127.0.0.1}:${ORDER_PORT:-50051}"
        if [ "${COMPOSE_OPERATOR:-0}" = 1 ]; then
            log "  store      ${ORDER_SAGA_BIND:-127.0.0.1}:${STORE_PORT:-50052} (admin :${STORE_ADMIN_PORT:-50252})"
            log "  delivery   ${ORDER_SAGA_BIND:-127.0.0.1}:${DELIVERY_PORT:-50053} (admin :${DELIVERY_ADMIN_PORT:-50253})"
            log "  order admin ${ORDER_SAGA_BIND:-127.0.0.1}:${ORDER_ADMIN_PORT:-50251}"
        else
            log "  operators: deploy/compose.sh exec order sagactl --order-admin https://127.0.0.1:50251 --order-admin-token \$ORDER_ADMIN_TOKEN stuck"
            log "  (or COMPOSE_OPERATOR=1 make compose-up to publish the admin listeners)"
        fi
        log "stop with: deploy/compose.sh down   (add -v to delete the database volume)"
        ;;
    down)
        engine_up || { log "no docker engine running: nothing to stop"; exit 0; }
        # Name every profile, so that a Jaeger started with --profile observability goes too.
        COMPOSE_PROFILES=${COMPOSE_PROFILES:-observability} compose "$PROJECT" down --remove-orphans "$@"
        ;;
    *)
        engine_up || die "no docker engine running"
        compose "$PROJECT" "$cmd" "$@"
        ;;
esac
