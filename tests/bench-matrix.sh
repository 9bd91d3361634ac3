#!/usr/bin/env bash
# The benchmark table of the "Under load" issue: three workloads at 8, 32 and 128 clients on
# both backends, then the open loop at three offered rates, each run a `make bench` with its
# own report; prints one markdown table of the figures at the end.
# Usage: tests/bench-matrix.sh [DURATION] [RATES...]   (defaults: 20s; 100 200 400)
set -euo pipefail
DURATION=${1:-20s}; shift || true
RATES=${*:-100 200 400}
OUT=bench-results/matrix-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
cargo build --release -q -p order-service -p store-service -p delivery-service -p order-saga-harness --bins
run() {
  local name=$1; shift
  echo "== $name" >&2
  WITH_POSTGRES_DURABLE=1 bash tests/with-postgres.sh target/release/bench \
    --duration "$DURATION" --ceiling-duration 5s --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1 \
    || echo "   FAILED: see $OUT/$name.log" >&2
}
for backend in postgres sqlite; do
  for workload in uniform hot scarce; do
    for clients in 8 32 128; do
      run "$backend-$workload-c$clients" --backend "$backend" --workload "$workload" --clients "$clients"
    done
  done
done
for backend in postgres sqlite; do
  for rate in $RATES; do
    run "$backend-open-r$rate" --backend "$backend" --rate "$rate"
  done
done
python3 - "$OUT" <<'PY'
import json, pathlib, sys
rows = []
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/*/report.json")):
    r = json.loads(p.read_text())
    c, t, l = r["config"], r["totals"], r["latency"]
    ceil = r.get("ceiling") or {}
    svc = {s["name"]: s for s in r["services"]}
    load = f'{c["rate"]:.0f}/s offered' if c["mode"] == "open" else f'{c["clients"]} clients'
    cpu = " / ".join(f'{svc[n]["cpu_ms_per_order"]:.2f}' for n in ("order", "store", "delivery") if n in svc)
    rss = " / ".join(f'{svc[n]["peak_rss_mib"]:.0f}' for n in ("order", "store", "delivery") if n in svc)
    inv = "hold" if not r["invariants"]["violations"] else "VIOLATED"
    rows.append(f'| {c["backend"]} | {c["workload"]} | {load} | {t["placed_per_s"]:.0f} | {t["orders_per_s"]:.0f} | '
                f'{t["not_placed"]} | {t["busy_retries"]} | {t["errors"]} | {l["p50_ms"]:.1f} | {l["p99_ms"]:.1f} | '
                f'{ceil.get("claims_per_s", 0):.0f} | {ceil.get("ratio", 0):.2f} | {cpu} | {rss} | {inv} |')
print("| backend | workload | load | placed/s | completed/s | not placed | busy | errors | p50 ms | p99 ms | ceiling claims/s | ratio | CPU ms/order o/s/d | peak RSS MiB o/s/d | invariants |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
