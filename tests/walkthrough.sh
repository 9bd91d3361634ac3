#!/usr/bin/env bash
# Runs the README's grpcurl walkthrough against a running cluster and checks every answer.
#
#   tests/walkthrough.sh [ORDER STORE DELIVERY [ORDER_ADMIN STORE_ADMIN DELIVERY_ADMIN]]
#       defaults: localhost:50051 :50052 :50053 (public), localhost:50251 :50252 :50253 (admin)
#
# The commands are exactly those of README.md between `<!-- walkthrough:begin -->` and
# `<!-- walkthrough:end -->`, inside a ```sh block: `grpcurl ...` commands (a trailing `\`
# continues a command on the next line) and `#` comments. Each command is run as the shell would
# run it, after two rewrites:
#   - localhost:50051 / :50052 / :50053 (or 127.0.0.1:...) become the public addresses given,
#     localhost:50251 / :50252 / :50253 the admin addresses;
#   - the placeholder <ORDER_ID> becomes the orderId of the last PlaceOrder answer.
# `$ADMIN_TOKEN` in a command expands to the admin token of the cluster (the environment's,
# which tests/run-walkthrough.sh reads from the cluster's data directory); where the environment
# has a token per service (ORDER_/STORE_/DELIVERY_ADMIN_TOKEN, as compose does), a call to that
# service's admin listener gets its own.
# When grpcurl is not on PATH, a `grpcurl` shell function translates the commands into `buf curl`
# (buf from npm's @bufbuild/buf, installed into .tools/buf when missing).
#
# Checks: every answer is JSON and matches its request (CreateFood, Restock, AddAgents, GetFood,
# GetZone, PlaceOrder, GetOrder); at the end the placed order is ORDER_STATE_PLACED with a packet
# and an agent, and GetOrder returns the same order. Exits non-zero on any failure.
#
# Environment: WALKTHROUGH_README (default README.md of the repository), BUF_VERSION,
# WALKTHROUGH_ADMIN_CACERT (the admin listeners serve TLS from this CA: `-plaintext` becomes
# `-cacert FILE` on calls to them, as compose needs),
# WALKTHROUGH_TIMEOUT (seconds per call, default 60), WALKTHROUGH_DRY_RUN=1 (print the extracted
# commands and exit).
set -Eeuo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ORDER_ADDR=${1:-localhost:50051}
STORE_ADDR=${2:-localhost:50052}
DELIVERY_ADDR=${3:-localhost:50053}
ORDER_ADMIN_ADDR=${4:-localhost:50251}
STORE_ADMIN_ADDR=${5:-localhost:50252}
DELIVERY_ADMIN_ADDR=${6:-localhost:50253}
README=${WALKTHROUGH_README:-$REPO_ROOT/README.md}
BUF_VERSION=${BUF_VERSION:-1.75.0}
TIMEOUT=${WALKTHROUGH_TIMEOUT:-60}

fail() { echo "walkthrough: FAIL: $*" >&2; exit 1; }
command -v python3 >/dev/null || fail "python3 is needed to check the answers"
[ -r "$README" ] || fail "no README at $README"

WORK=$(mktemp -d /tmp/walkthrough.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# --- 1. extract the commands ------------------------------------------------------------------
# One command per output line (continuations joined); comments kept with a leading '#'.
python3 - "$README" >"$WORK/commands" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read().splitlines()
try:
    begin = next(i for i, l in enumerate(text) if l.strip() == "<!-- walkthrough:begin -->")
    end = next(i for i, l in enumerate(text) if i > begin and l.strip() == "<!-- walkthrough:end -->")
except StopIteration:
    sys.exit("README has no <!-- walkthrough:begin --> ... <!-- walkthrough:end --> section")
out, in_block, blocks, pending = [], False, 0, ""
for line in text[begin + 1:end]:
    s = line.strip()
    if not in_block:
        if re.fullmatch(r"```(sh|bash|shell|console)?", s):
            in_block, blocks = True, blocks + 1
        continue
    if s == "```":
        in_block = False
        continue
    if pending:
        s = pending + " " + s
        pending = ""
    if s.endswith("\\"):
        pending = s[:-1].rstrip()
        continue
    if not s:
        continue
    if s.startswith("$ "):  # tolerate a prompt
        s = s[2:]
    if s.startswith("#") or s.startswith("grpcurl "):
        out.append(s)
    else:
        sys.exit(f"walkthrough block holds a line that is neither a grpcurl command nor a comment: {s!r}")
if in_block or pending:
    sys.exit("walkthrough block is not closed")
if blocks == 0 or not any(l.startswith("grpcurl ") for l in out):
    sys.exit("no grpcurl command between the walkthrough markers")
print("\n".join(out))
PY
ncmds=$(grep -c '^grpcurl ' "$WORK/commands")
echo "walkthrough: $ncmds grpcurl commands from $README"
echo "walkthrough: order=$ORDER_ADDR store=$STORE_ADDR delivery=$DELIVERY_ADDR"
if [ "${WALKTHROUGH_DRY_RUN:-0}" = 1 ]; then cat "$WORK/commands"; exit 0; fi

# --- 2. grpcurl, or a buf curl stand-in --------------------------------------------------------
ensure_buf() {
    if [ -n "${BUF:-}" ]; then return; fi
    local native=$REPO_ROOT/.tools/buf/node_modules/@bufbuild/buf-linux-x64/bin/buf
    local wrapper=$REPO_ROOT/.tools/buf/node_modules/.bin/buf
    if [ -x "$native" ]; then BUF=$native; return; fi
    if [ -x "$wrapper" ]; then BUF=$wrapper; return; fi
    if command -v buf >/dev/null; then BUF=$(command -v buf); return; fi
    command -v npm >/dev/null || fail "neither grpcurl nor buf nor npm found"
    echo "walkthrough: installing @bufbuild/buf@$BUF_VERSION into .tools/buf (npm)" >&2
    mkdir -p "$REPO_ROOT/.tools/buf"
    npm install --prefix "$REPO_ROOT/.tools/buf" --no-audit --no-fund --silent \
        "@bufbuild/buf@$BUF_VERSION" >&2 || fail "npm install @bufbuild/buf failed"
    if [ -x "$native" ]; then BUF=$native; else BUF=$wrapper; fi
    [ -x "$BUF" ] || fail "buf not found after npm install"
}

if command -v grpcurl >/dev/null; then
    GRPCURL_MODE=grpcurl
else
    GRPCURL_MODE=buf
    ensure_buf
    echo "walkthrough: grpcurl not found, using $("$BUF" --version 2>/dev/null | head -n1 | sed 's/^/buf /') (buf curl)"
fi

# The last call's method and request body, for the checks.
WT_METHOD="" WT_DATA=""

# grpcurl as the README calls it: grpcurl -plaintext [-H HEADER] [-d JSON] HOST SERVICE/METHOD,
# grpcurl -plaintext HOST list [SERVICE]. Records the call, then runs grpcurl or buf curl.
grpcurl() {
    local data="" has_data=0 plaintext=0 pos=() headers=() cacert=""
    local orig=("$@")
    while [ $# -gt 0 ]; do
        case $1 in
            -plaintext | --plaintext) plaintext=1 ;;
            -d | --d) data=$2; has_data=1; shift ;;
            -d=* | --d=*) data=${1#*=}; has_data=1 ;;
            # grpcurl's -H goes with the RPC and with reflection (the admin listeners'
            # reflection needs the token too); buf curl names the two apart.
            -H | --H) headers+=(-H "$2" --reflect-header "$2"); shift ;;
            -rpc-header | --rpc-header) headers+=(-H "$2"); shift ;;
            -cacert | --cacert) cacert=$2; shift ;;
            -*) echo "walkthrough: grpcurl flag $1 is not supported by the buf curl stand-in" >&2
                [ "$GRPCURL_MODE" = grpcurl ] || return 2 ;;
            *) pos+=("$1") ;;
        esac
        shift
    done
    [ ${#pos[@]} -ge 2 ] || { echo "walkthrough: grpcurl needs HOST and METHOD" >&2; return 2; }
    WT_METHOD=${pos[1]}
    WT_DATA=$data
    if [ "${pos[1]}" = list ] && [ ${#pos[@]} -ge 3 ]; then WT_METHOD="list ${pos[2]}"; fi

    if [ "$GRPCURL_MODE" = grpcurl ]; then
        command grpcurl -max-time "$TIMEOUT" "${orig[@]}"
        return
    fi
    local scheme=https
    [ $plaintext = 1 ] && scheme=http
    local base=("$BUF" curl --timeout "${TIMEOUT}s" --protocol grpc)
    [ $plaintext = 1 ] && base+=(--http2-prior-knowledge)
    [ ${#headers[@]} -gt 0 ] && base+=("${headers[@]}")
    [ -n "$cacert" ] && base+=(--cacert "$cacert")
    case ${pos[1]} in
        list)
            if [ ${#pos[@]} -ge 3 ]; then
                "${base[@]}" --list-methods "$scheme://${pos[0]}/${pos[2]}"
            else
                "${base[@]}" --list-services "$scheme://${pos[0]}"
            fi ;;
        describe)
            echo "walkthrough: 'grpcurl describe' has no buf curl equivalent" >&2; return 2 ;;
        *)
            if [ $has_data = 1 ]; then
                [ "$data" = @ ] && data=@-
                "${base[@]}" -d "$data" "$scheme://${pos[0]}/${pos[1]}"
            else
                "${base[@]}" "$scheme://${pos[0]}/${pos[1]}"
            fi ;;
    esac
}

# --- 3. run and check --------------------------------------------------------------------------
# check.py METHOD REQUEST ANSWER_FILE STATE_FILE: checks one answer, updates the state.
cat >"$WORK/check.py" <<'PY'
import json, sys
method, request, answer_file, state_file = sys.argv[1:5]
answer_text = open(answer_file, encoding="utf-8").read()
state = json.load(open(state_file)) if open(state_file).read().strip() else {}

def fail(msg):
    print(f"walkthrough: FAIL: {method}: {msg}", file=sys.stderr)
    sys.exit(1)

if method.startswith("list"):
    names = [l.strip() for l in answer_text.splitlines() if l.strip()]
    if not names:
        fail("empty list")
    state.setdefault("calls", []).append(method)
    json.dump(state, open(state_file, "w"))
    sys.exit(0)

try:
    ans = json.loads(answer_text) if answer_text.strip() else {}
except json.JSONDecodeError as e:
    fail(f"answer is not JSON ({e})")
try:
    req = json.loads(request) if request.strip() else {}
except json.JSONDecodeError as e:
    fail(f"request is not JSON ({e})")
name = method.rsplit("/", 1)[-1]

def num(d, k):  # int64 is a JSON string in proto3 JSON; zero values are omitted
    return int(d.get(k, 0) or 0)

def same(field, want=None, src=None):
    want = (src if src is not None else req).get(field) if want is None else want
    if want is not None and ans.get(field, "") != want:
        fail(f"{field} is {ans.get(field)!r}, expected {want!r}")

if name == "CreateFood":
    same("foodId"); same("name")
elif name == "Restock":
    same("foodId")
    if num(ans, "available") < num(req, "count"):
        fail(f"available={num(ans, 'available')} < restocked {num(req, 'count')}")
elif name == "AddAgents":
    same("zone")
    if num(ans, "available") < num(req, "count"):
        fail(f"available={num(ans, 'available')} < added {num(req, 'count')}")
elif name == "GetFood":
    same("foodId")
elif name == "GetZone":
    same("zone")
elif name == "Check" and "Health" in method:
    if ans.get("status") != "SERVING":
        fail(f"health status is {ans.get('status')!r}, expected SERVING")
elif name == "PlaceOrder":
    for f in ("idempotencyKey", "customerId", "foodId", "zone"):
        same(f)
    if not ans.get("orderId"):
        fail("no orderId")
    if ans.get("state") != "ORDER_STATE_PLACED":
        fail(f"state is {ans.get('state')!r} ({ans.get('notPlacedReason', '')} "
             f"{ans.get('detail', '')}), expected ORDER_STATE_PLACED")
    if not ans.get("packetId") or not ans.get("agentId"):
        fail("PLACED order without packetId or agentId")
    state["placed"] = ans
elif name == "GetOrder":
    same("orderId")
    placed = state.get("placed")
    if placed and placed.get("orderId") == ans.get("orderId"):
        for f in ("orderId", "idempotencyKey", "customerId", "foodId", "zone", "state",
                  "packetId", "agentId"):
            if ans.get(f) != placed.get(f):
                fail(f"GetOrder {f}={ans.get(f)!r} differs from PlaceOrder's {placed.get(f)!r}")
        state["got"] = ans
state.setdefault("calls", []).append(name)
json.dump(state, open(state_file, "w"))
PY

: >"$WORK/state.json"
ORDER_ID=""
n=0
prev=""
while IFS= read -r line; do
    case $line in
        \#*) [ "$prev" = comment ] || echo; echo "$line"; prev=comment; continue ;;
    esac
    prev=cmd
    n=$((n + 1))
    cmd=$line
    for host in localhost 127.0.0.1; do
        cmd=${cmd//$host:50051/$ORDER_ADDR}
        cmd=${cmd//$host:50052/$STORE_ADDR}
        cmd=${cmd//$host:50053/$DELIVERY_ADDR}
        cmd=${cmd//$host:50251/$ORDER_ADMIN_ADDR}
        cmd=${cmd//$host:50252/$STORE_ADMIN_ADDR}
        cmd=${cmd//$host:50253/$DELIVERY_ADMIN_ADDR}
    done
    if [[ $cmd == *"<ORDER_ID>"* ]]; then
        [ -n "$ORDER_ID" ] || fail "command $n uses <ORDER_ID> before any PlaceOrder answered"
        cmd=${cmd//<ORDER_ID>/$ORDER_ID}
    fi
    # Where each service has a token of its own (compose), a call to its admin listener uses it;
    # where the admin listeners serve TLS (compose), the call verifies them against the CA.
    token=${ADMIN_TOKEN:-}
    case $line in
        *:5025[123]*)
            case $line in
                *:50251*) token=${ORDER_ADMIN_TOKEN:-$token} ;;
                *:50252*) token=${STORE_ADMIN_TOKEN:-$token} ;;
                *:50253*) token=${DELIVERY_ADMIN_TOKEN:-$token} ;;
            esac
            if [ -n "${WALKTHROUGH_ADMIN_CACERT:-}" ]; then
                cmd=${cmd/ -plaintext / -cacert $WALKTHROUGH_ADMIN_CACERT }
            fi ;;
    esac
    echo "\$ $cmd"
    rc=0
    ADMIN_TOKEN=$token eval "$cmd" >"$WORK/answer" 2>"$WORK/stderr" </dev/null || rc=$?
    cat "$WORK/answer"
    if [ $rc -ne 0 ]; then
        cat "$WORK/stderr" >&2
        fail "command $n exited with $rc: $cmd"
    fi
    python3 "$WORK/check.py" "$WT_METHOD" "$WT_DATA" "$WORK/answer" "$WORK/state.json" \
        || fail "command $n: unexpected answer"
    if [[ $WT_METHOD == */PlaceOrder ]]; then
        ORDER_ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["orderId"])' "$WORK/answer")
    fi
done <"$WORK/commands"

# --- 4. the walkthrough as a whole -------------------------------------------------------------
python3 - "$WORK/state.json" <<'PY' || exit 1
import json, sys
st = json.load(open(sys.argv[1]))
placed, got = st.get("placed"), st.get("got")
if not placed:
    sys.exit("walkthrough: FAIL: no PlaceOrder answered ORDER_STATE_PLACED")
if not got:
    sys.exit("walkthrough: FAIL: no GetOrder returned the placed order")
print()
print(f"walkthrough: PASS: {len(st['calls'])} calls checked; order {placed['orderId']} is "
      f"{got['state']} with packet {placed['packetId']} and agent {placed['agentId']}")
PY
