#!/usr/bin/env bash
# The overload scenario of the "Under load" issue, for the record (not part of `make test`;
# the in-process test tests/e2e/tests/overload.rs is): a release cluster on SQLite with 20,000
# packets and 20,000 agents (plenty for the 10,500 orders), then
#   1. one client, 6,000 orders with 2,000 in flight on one connection;
#   2. three clients at once, 1,500 orders each with 500 in flight each.
# Prints sagactl's counts. Usage: tests/overload-counts.sh [BIN_DIR] (default target/release).
set -euo pipefail
BIN_DIR=${1:-target/release}
DIR=$(mktemp -d /tmp/order-saga-overload.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S=$(port); D=$(port); O=$(port); SI=$(port); DI=$(port); SA=$(port); DA=$(port); OA=$(port)
export RUST_LOG=warn
# A throwaway admin token and cluster CA for this run's cluster and its sagactl.
ADMIN_TOKEN=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')
export STORE_ADMIN_TOKEN=$ADMIN_TOKEN DELIVERY_ADMIN_TOKEN=$ADMIN_TOKEN ORDER_ADMIN_TOKEN=$ADMIN_TOKEN
export SAGACTL_ADMIN_TOKEN=$ADMIN_TOKEN
"$BIN_DIR/sagactl" certs --dir "$DIR/certs" >/dev/null
for svc in ORDER STORE DELIVERY; do
  name=$(echo "$svc" | tr '[:upper:]' '[:lower:]')
  export "${svc}_INTERNAL_CA=$DIR/certs/ca.pem" "${svc}_INTERNAL_CERT=$DIR/certs/$name.pem" "${svc}_INTERNAL_KEY=$DIR/certs/$name.key"
done
STORE_LISTEN_ADDR=127.0.0.1:$S STORE_INTERNAL_LISTEN_ADDR=127.0.0.1:$SI STORE_ADMIN_LISTEN_ADDR=127.0.0.1:$SA \
  STORE_DATABASE_URL=sqlite://$DIR/store.db "$BIN_DIR/store" >"$DIR/store.log" 2>&1 &
DELIVERY_LISTEN_ADDR=127.0.0.1:$D DELIVERY_INTERNAL_LISTEN_ADDR=127.0.0.1:$DI DELIVERY_ADMIN_LISTEN_ADDR=127.0.0.1:$DA \
  DELIVERY_DATABASE_URL=sqlite://$DIR/delivery.db "$BIN_DIR/delivery" >"$DIR/delivery.log" 2>&1 &
ORDER_LISTEN_ADDR=127.0.0.1:$O ORDER_ADMIN_LISTEN_ADDR=127.0.0.1:$OA ORDER_DATABASE_URL=sqlite://$DIR/order.db \
  ORDER_STORE_URL=https://127.0.0.1:$SI ORDER_DELIVERY_URL=https://127.0.0.1:$DI "$BIN_DIR/order" >"$DIR/order.log" 2>&1 &
export SAGACTL_ORDER_URL=http://127.0.0.1:$O SAGACTL_STORE_URL=http://127.0.0.1:$S SAGACTL_DELIVERY_URL=http://127.0.0.1:$D
export SAGACTL_ORDER_ADMIN_URL=http://127.0.0.1:$OA SAGACTL_STORE_ADMIN_URL=http://127.0.0.1:$SA SAGACTL_DELIVERY_ADMIN_URL=http://127.0.0.1:$DA
ctl() { "$BIN_DIR/sagactl" "$@"; }
for url in "$SAGACTL_STORE_URL" "$SAGACTL_DELIVERY_URL" "$SAGACTL_ORDER_URL"; do
  for _ in $(seq 1 100); do ctl health "$url" >/dev/null 2>&1 && break; sleep 0.1; done
done
ctl food create pizza Pizza >/dev/null
ctl restock pizza 10000 >/dev/null; ctl restock pizza 10000 >/dev/null
ctl agents add north 10000 >/dev/null; ctl agents add north 10000 >/dev/null

echo "== one client: 6,000 orders, 2,000 in flight on one connection"
ctl place-many --count 6000 --concurrency 2000 --food pizza --zone north --allow-errors 2>&1 | grep -v '^first error' || true
echo "== three clients at once: 1,500 orders each, 500 in flight each"
for i in 1 2 3; do
  ctl place-many --count 1500 --concurrency 500 --food pizza --zone north --allow-errors >"$DIR/client$i.out" 2>&1 &
done
wait $(jobs -p | tail -n 3) || true
for i in 1 2 3; do echo "client $i: $(grep -h 'attempted=' "$DIR/client$i.out")"; grep -h 'first error' "$DIR/client$i.out" || true; done
ctl availability
ctl verify --wait 60s
