# shellcheck shell=bash
# Shared helpers for deploy/compose.sh and deploy/compose-smoke.sh. Source it; do not run it.
#
# What lives here:
#   ensure_engine      start a Docker engine when none answers (installs Debian's docker.io,
#                      docker-compose and debootstrap first when they are missing)
#   ensure_standins    build the local stand-in images used where no image registry is reachable:
#                      a debootstrap'ed Debian base, PostgreSQL on it, the service image from
#                      host-built binaries (deploy/Dockerfile.prebuilt)
#   compose ...        docker compose v2 when present, else docker-compose v1, on our compose file
#
# Every knob is an environment variable; the defaults suit this repository's machines.

REPO_ROOT=${REPO_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
DEPLOY_DIR=$REPO_ROOT/deploy
COMPOSE_FILE_PATH=${COMPOSE_FILE_PATH:-$DEPLOY_DIR/docker-compose.yml}

# Local stand-in image tags (never pushed anywhere).
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-order-saga-local/debian:bookworm}
LOCAL_POSTGRES_IMAGE=${LOCAL_POSTGRES_IMAGE:-order-saga-local/postgres:15}
LOCAL_SERVICE_IMAGE=${LOCAL_SERVICE_IMAGE:-order-saga-local/order-saga:dev}
DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/order-saga-dockerd.log}
SERVICE_BINARIES=(store delivery order sagactl)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root for: $*"
    fi
}

# --- Docker engine -----------------------------------------------------------------------------

engine_up() { docker info >/dev/null 2>&1; }

apt_install() {
    log "installing $* from Debian"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq >/dev/null 2>&1 || true
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || die "apt-get install $* failed"
}

# Start dockerd in the background unless an engine already answers (then nothing is installed:
# Docker Desktop, a rootless engine or DOCKER_HOST all count).
ensure_engine() {
    if engine_up; then
        log "docker engine: running (server $(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        return 0
    fi
    command -v dockerd >/dev/null || apt_install docker.io
    command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
    # containerd comes with docker.io; dockerd starts its own when none is running.
    log "docker engine: starting dockerd (overlay2), log in $DOCKERD_LOG"
    as_root mkdir -p /var/lib/docker "$(dirname "$DOCKERD_LOG")"
    # setsid: the engine must outlive this script and its process group.
    as_root setsid nohup dockerd --storage-driver=overlay2 >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local i
    for i in $(seq 1 60); do
        engine_up && { log "docker engine: up after ${i}s"; return 0; }
        sleep 1
    done
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "docker engine did not come up within 60s (see $DOCKERD_LOG)"
}

ensure_compose() {
    if [ -n "${COMPOSE:-}" ] || docker compose version >/dev/null 2>&1 \
        || command -v docker-compose >/dev/null; then return 0; fi
    apt_install docker-compose
}

# --- compose v1 / v2 ---------------------------------------------------------------------------

# COMPOSE may name the command ("docker compose" or "docker-compose"); else v2 wins when present.
detect_compose() {
    if [ -n "${COMPOSE:-}" ]; then return 0; fi
    if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
    elif command -v docker-compose >/dev/null; then COMPOSE="docker-compose"
    else die "neither 'docker compose' nor 'docker-compose' found"; fi
}

# random_secret: 48 hex characters from /dev/urandom.
random_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

# The compose cluster's secrets: each service's operator token (a token that leaks from one
# service opens no other), the viewer token and the database passwords. Each comes from
# the environment when set, else from deploy/.secrets (git-ignored, mode 600), where missing
# ones are made on first use. docker-compose.yml has no default for any of them: compose
# refuses to start without them.
SECRETS=(ORDER_ADMIN_TOKEN STORE_ADMIN_TOKEN DELIVERY_ADMIN_TOKEN VIEWER_TOKEN GRAFANA_ADMIN_PASSWORD POSTGRES_PASSWORD STORE_DB_PASSWORD DELIVERY_DB_PASSWORD ORDERS_DB_PASSWORD)
ensure_secrets() {
    local file=$REPO_ROOT/deploy/.secrets name
    [ -f "$file" ] || (umask 077; : >"$file")
    for name in "${SECRETS[@]}"; do
        if [ -z "${!name:-}" ]; then
            local kept
            kept=$(sed -n "s/^$name=//p" "$file" | tail -n 1)
            if [ -z "$kept" ]; then
                kept=$(random_secret)
                echo "$name=$kept" >>"$file"
                log "made $name in $file"
            fi
            printf -v "$name" '%s' "$kept"
        fi
        export "${name?}"
    done
}

# compose PROJECT ARGS...: run compose on our file for one project; with COMPOSE_OPERATOR=1 also
# on docker-compose.operator.yml (admin listeners and public reads published on the host).
compose() {
    local project=$1; shift
    local files=(-f "$COMPOSE_FILE_PATH")
    [ "${COMPOSE_OPERATOR:-0}" = 1 ] && files+=(-f "$DEPLOY_DIR/docker-compose.operator.yml")
    detect_compose
    ensure_secrets
    # shellcheck disable=SC2086 # COMPOSE is a command with its subcommand
    $COMPOSE -p "$project" "${files[@]}" "$@"
}

# --- stand-in images ---------------------------------------------------------------------------

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# docker build, its output kept in a log that is shown only on failure.
quiet_build() {
    local out rc=0
    out=$(mktemp /tmp/order-saga-build.XXXXXX)
    docker build "$@" >"$out" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then tail -n 40 "$out" >&2; fi
    rm -f "$out"
    return $rc
}

# The Debian mirror this machine's apt uses (DEBIAN_MIRROR overrides).
debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local m=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        # First URIs of a stanza whose suites include the plain suite (not -security).
        m=$(awk -v suite="$DEBIAN_SUITE" '
            /^URIs:/   { uri=$2 }
            /^Suites:/ { for (i=2;i<=NF;i++) if ($i==suite) { print uri; exit } }
            /^$/       { uri="" }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
        m=$(awk -v suite="$DEBIAN_SUITE" '$1=="deb" && $3==suite {print $2; exit}' /etc/apt/sources.list)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

# A minimal Debian from debootstrap, imported as an image. Skipped when the tag exists.
ensure_base_image() {
    if image_exists "$LOCAL_BASE_IMAGE"; then
        log "base image: $LOCAL_BASE_IMAGE exists, reused"; return 0
    fi
    local mirror rootfs
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || apt_install debootstrap
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /tmp/order-saga-rootfs.XXXXXX)
    log "base image: debootstrap --variant=minbase $DEBIAN_SUITE from $mirror"
    if ! as_root debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "$mirror" \
            >"$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        as_root rm -rf "$rootfs"
        die "debootstrap failed (log: $rootfs.log)"
    fi
    # Keep the image small and apt usable: drop caches and downloaded lists, no recommends.
    as_root rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
        | as_root tee "$rootfs/etc/apt/apt.conf.d/90order-saga-norecommends" >/dev/null
    log "base image: docker import -> $LOCAL_BASE_IMAGE"
    as_root tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $DEBIAN_SUITE $mirror" \
        - "$LOCAL_BASE_IMAGE" >/dev/null || die "docker import failed"
    as_root rm -rf "$rootfs" "$rootfs.log"
}

# PostgreSQL on the base, honouring POSTGRES_USER/PASSWORD/DB like the public image.
# docker build reuses its layers, so a second run costs a second or two.
ensure_postgres_image() {
    log "postgres image: docker build -> $LOCAL_POSTGRES_IMAGE"
    quiet_build --build-arg "BASE_IMAGE=$LOCAL_BASE_IMAGE" -t "$LOCAL_POSTGRES_IMAGE" \
        "$DEPLOY_DIR/standins/postgres" || die "postgres stand-in image build failed"
}

# The service image from binaries already built on the host (BIN_DIR), via Dockerfile.prebuilt.
# Only the four binaries and the Dockerfile go into the build context.
ensure_service_image() {
    local bin_dir=${BIN_DIR:-$REPO_ROOT/target/debug} ctx b
    case $bin_dir in /*) ;; *) bin_dir=$REPO_ROOT/$bin_dir ;; esac
    for b in "${SERVICE_BINARIES[@]}"; do
        [ -x "$bin_dir/$b" ] || die "missing binary $bin_dir/$b (build them first: cargo build --bins)"
    done
    ctx=$REPO_ROOT/target/compose-context
    rm -rf "$ctx"; mkdir -p "$ctx"
    for b in "${SERVICE_BINARIES[@]}"; do
        # Stripped copies: a smaller context and image; same code. Plain copy if strip is absent.
        if command -v strip >/dev/null; then
            strip --strip-debug -o "$ctx/$b" "$bin_dir/$b" 2>/dev/null || cp "$bin_dir/$b" "$ctx/$b"
        else
            cp "$bin_dir/$b" "$ctx/$b"
        fi
    done
    cp "$DEPLOY_DIR/Dockerfile.prebuilt" "$ctx/Dockerfile"
    log "service image: docker build (Dockerfile.prebuilt, binaries from $bin_dir) -> $LOCAL_SERVICE_IMAGE"
    quiet_build --build-arg "RUNTIME_IMAGE=$LOCAL_BASE_IMAGE" -t "$LOCAL_SERVICE_IMAGE" "$ctx" \
        || die "service image build failed"
}

ensure_standins() {
    ensure_base_image
    ensure_postgres_image
    ensure_service_image
}

# Point the compose file at the stand-ins (the file itself keeps its public defaults).
use_standins() {
    export POSTGRES_IMAGE=$LOCAL_POSTGRES_IMAGE
    export ORDER_SAGA_IMAGE=$LOCAL_SERVICE_IMAGE
}

# --- health ------------------------------------------------------------------------------------

# container_health ID -> healthy | unhealthy | starting | none | exited...
container_health() {
    docker inspect --format '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' \
        "$1" 2>/dev/null || echo missing
}

# service_cid PROJECT SERVICE -> the container id (compose v1 and v2 set the same labels; plain
# docker is much faster than a compose v1 call).
service_cid() {
    docker ps -aq --filter "label=com.docker.compose.project=$1" \
        --filter "label=com.docker.compose.service=$2" | head -n1
}

# wait_healthy PROJECT TIMEOUT_SECONDS SERVICE...: every named service's container is healthy.
wait_healthy() {
    local project=$1 timeout=$2; shift 2
    local deadline=$((SECONDS + timeout)) svc id st pending
    while :; do
        pending=()
        for svc in "$@"; do
            id=$(service_cid "$project" "$svc")
            st=missing; [ -n "$id" ] && st=$(container_health "$id")
            [ "$st" = healthy ] || pending+=("$svc=$st")
        done
        [ ${#pending[@]} -eq 0 ] && return 0
        if [ $SECONDS -ge $deadline ]; then
            log "not healthy after ${timeout}s: ${pending[*]}"
            return 1
        fi
        sleep 1
    done
}
