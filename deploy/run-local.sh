#!/usr/bin/env bash
# `make run`: the whole cluster on this machine, on the embedded default (SQLite files under
# $DATA_DIR, default ./data). Seeds a demo catalogue when the store is empty, prints how to
# place a first order, and stops every service cleanly on Ctrl-C.
#
# Every service setting can be overridden with its environment variable (README: Configuration).
set -euo pipefail

BIN_DIR=${BIN_DIR:-target/debug}
DATA_DIR=${DATA_DIR:-data}
mkdir -p "$DATA_DIR/logs"

export STORE_DATABASE_URL=${STORE_DATABASE_URL:-sqlite://$DATA_DIR/store.db}
export DELIVERY_DATABASE_URL=${DELIVERY_DATABASE_URL:-sqlite://$DATA_DIR/delivery.db}
export ORDER_DATABASE_URL=${ORDER_DATABASE_URL:-sqlite://$DATA_DIR/order.db}
# Each service listens per audience: public (50051-50053), internal (store 50152, delivery
# 50153: the reservation API, mutual TLS, the orchestrator only) and admin (50251-50253).
export ORDER_LISTEN_ADDR=${ORDER_LISTEN_ADDR:-127.0.0.1:50051}
export STORE_LISTEN_ADDR=${STORE_LISTEN_ADDR:-127.0.0.1:50052}
export DELIVERY_LISTEN_ADDR=${DELIVERY_LISTEN_ADDR:-127.0.0.1:50053}
export STORE_INTERNAL_LISTEN_ADDR=${STORE_INTERNAL_LISTEN_ADDR:-127.0.0.1:50152}
export DELIVERY_INTERNAL_LISTEN_ADDR=${DELIVERY_INTERNAL_LISTEN_ADDR:-127.0.0.1:50153}
export ORDER_ADMIN_LISTEN_ADDR=${ORDER_ADMIN_LISTEN_ADDR:-127.0.0.1:50251}
export STORE_ADMIN_LISTEN_ADDR=${STORE_ADMIN_LISTEN_ADDR:-127.0.0.1:50252}
export DELIVERY_ADMIN_LISTEN_ADDR=${DELIVERY_ADMIN_LISTEN_ADDR:-127.0.0.1:50253}
export ORDER_STORE_URL=${ORDER_STORE_URL:-https://$STORE_INTERNAL_LISTEN_ADDR}
export ORDER_DELIVERY_URL=${ORDER_DELIVERY_URL:-https://$DELIVERY_INTERNAL_LISTEN_ADDR}
export SAGACTL_ORDER_URL=http://$ORDER_LISTEN_ADDR
export SAGACTL_STORE_URL=http://$STORE_LISTEN_ADDR
export SAGACTL_DELIVERY_URL=http://$DELIVERY_LISTEN_ADDR
export SAGACTL_ORDER_ADMIN_URL=http://$ORDER_ADMIN_LISTEN_ADDR
export SAGACTL_STORE_ADMIN_URL=http://$STORE_ADMIN_LISTEN_ADDR
export SAGACTL_DELIVERY_ADMIN_URL=http://$DELIVERY_ADMIN_LISTEN_ADDR
export RUST_LOG=${RUST_LOG:-info}

# Service identity: a throwaway CA and one certificate per service, made on first start (bring
# your own by putting ca.pem and <service>.pem/.key there, or with the *_INTERNAL_* settings).
CERT_DIR=$DATA_DIR/certs
[ -s "$CERT_DIR/ca.pem" ] || "$BIN_DIR/sagactl" certs --dir "$CERT_DIR"
for svc in ORDER STORE DELIVERY; do
  name=$(echo "$svc" | tr '[:upper:]' '[:lower:]')
  export "${svc}_INTERNAL_CA=${CERT_DIR}/ca.pem"
  export "${svc}_INTERNAL_CERT=${CERT_DIR}/${name}.pem" "${svc}_INTERNAL_KEY=${CERT_DIR}/${name}.key"
done

# The admin APIs accept only a bearer token. Ours is made on first start, readable only by
# this user, and kept in the data directory; ADMIN_TOKEN overrides it. It is never a default.
TOKEN_FILE=$DATA_DIR/admin.token
if [ -n "${ADMIN_TOKEN:-}" ]; then
  (umask 077; printf '%s\n' "$ADMIN_TOKEN" >"$TOKEN_FILE")
elif [ ! -s "$TOKEN_FILE" ]; then
  (umask 077; od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$TOKEN_FILE"; echo >>"$TOKEN_FILE")
fi
ADMIN_TOKEN=$(tr -d '[:space:]' <"$TOKEN_FILE")
export ORDER_ADMIN_TOKEN=$ADMIN_TOKEN STORE_ADMIN_TOKEN=$ADMIN_TOKEN DELIVERY_ADMIN_TOKEN=$ADMIN_TOKEN
export SAGACTL_ADMIN_TOKEN=$ADMIN_TOKEN

pids=()
stop_all() {
  trap - INT TERM EXIT
  echo
  echo "stopping order-saga..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "stopped."
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

for svc in store delivery order; do
  "$BIN_DIR/$svc" >"$DATA_DIR/logs/$svc.log" 2>&1 &
  pids+=($!)
done

for url in "$SAGACTL_STORE_URL" "$SAGACTL_DELIVERY_URL" "$SAGACTL_ORDER_URL"; do
  for _ in $(seq 1 100); do
    "$BIN_DIR/sagactl" health "$url" >/dev/null 2>&1 && break
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a service exited at start-up; see $DATA_DIR/logs/"; tail -n 20 "$DATA_DIR"/logs/*.log; exit 1; }
    done
    sleep 0.1
  done
  "$BIN_DIR/sagactl" health "$url" >/dev/null || { echo "$url did not become healthy; see $DATA_DIR/logs/"; exit 1; }
done
"$BIN_DIR/sagactl" seed
"$BIN_DIR/sagactl" availability

cat <<MSG

order-saga is running (SQLite under $DATA_DIR/, logs in $DATA_DIR/logs/):
  order     public $ORDER_LISTEN_ADDR  admin $ORDER_ADMIN_LISTEN_ADDR
  store     public $STORE_LISTEN_ADDR  admin $STORE_ADMIN_LISTEN_ADDR  internal $STORE_INTERNAL_LISTEN_ADDR
  delivery  public $DELIVERY_LISTEN_ADDR  admin $DELIVERY_ADMIN_LISTEN_ADDR  internal $DELIVERY_INTERNAL_LISTEN_ADDR
Internal listeners take only the orchestrator's certificate from $CERT_DIR (mutual TLS);
admin listeners take only the token in $TOKEN_FILE.

Place a first order with grpcurl (server reflection is on, no proto files needed):
  grpcurl -plaintext -d '{"idempotencyKey":"first-order","customerId":"alice","foodId":"margherita","zone":"north"}' \\
    $ORDER_LISTEN_ADDR order.v1.OrderService/PlaceOrder

Admin calls need the operator token (kept in $TOKEN_FILE):
  grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"foodId":"margherita","count":5}' \\
    $STORE_ADMIN_LISTEN_ADDR store.v1.StoreAdminService/Restock
  grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{"limit":10}' \\
    $ORDER_ADMIN_LISTEN_ADDR order.v1.OrderAdminService/ListStuckOrders
or, for the README walkthrough:  export ADMIN_TOKEN=\$(cat $TOKEN_FILE)

or with the CLI (it reads $TOKEN_FILE, or SAGACTL_ADMIN_TOKEN):
  $BIN_DIR/sagactl place --food margherita --zone north
  $BIN_DIR/sagactl list
  $BIN_DIR/sagactl availability
  $BIN_DIR/sagactl history ORDER_ID

The operator console (log in with the token in $TOKEN_FILE):
  http://$ORDER_ADMIN_LISTEN_ADDR/console
Metrics (Prometheus text, same token):
  curl -H "authorization: Bearer $ADMIN_TOKEN" http://$ORDER_ADMIN_LISTEN_ADDR/metrics

Press Ctrl-C to stop.
MSG

# Stop everything if any service dies.
wait -n "${pids[@]}" || true
echo "a service exited unexpectedly; see $DATA_DIR/logs/"
exit 1
