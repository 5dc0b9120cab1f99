#!/usr/bin/env bash
# The API contract tests (issue 19): generated SDKs and a property-based run of the document
# against a real server.
#
#   scripts/contract-test.sh [PART...]      PART: python ts journeys schemathesis (default: all)
#
#   python        generate a Python client with openapi-python-client; fail on any warning
#   ts            generate a TypeScript client with @hey-api/openapi-ts, type-check it with
#                 tsc --strict; fail on any generator warning or type error
#   journeys      the scripted journey in Python and in TypeScript through the generated
#                 clients, against a fresh server (generates the clients first if missing)
#   schemathesis  schemathesis over every operation, all phases, once per principal, against a
#                 fresh server; fails on any check failure, error, or a panic in the server log
#   tools         only install the tools below (run alone)
#
# Environment:
#   OUTPOST_BIN        the server binary (default target/debug/outpost)
#   CONTRACT_OPENAPI   the document (default openapi/outpost.json)
#   CONTRACT_OUT       where everything generated goes (default target/contract)
#   CONTRACT_EXAMPLES  schemathesis examples per operation (default 30)
#   CONTRACT_SEED      schemathesis seed (default 1, so a run is reproducible; `random` draws a
#                      new one, printed, to explore further)
#   CONTRACT_WORKERS   schemathesis workers (default 1: with more, Python 3.11's compile() can
#                      fail in a worker thread with "AST constructor recursion depth mismatch")
#   CONTRACT_PYTHON    the Python that makes the venv (default python3)
#
# Tools are pinned and installed on first use (skipped when present): a venv .venv-contract
# with schemathesis and openapi-python-client, and tests/contract/node_modules from its
# package-lock.json with npm ci.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCHEMATHESIS_VERSION=4.32.5
OPC_VERSION=0.29.1
VENV="$ROOT/.venv-contract"
NODE_DIR="$ROOT/tests/contract"
OUT="$(realpath -m "${CONTRACT_OUT:-target/contract}")"
DOC="$(realpath "${CONTRACT_OPENAPI:-openapi/outpost.json}")"
BIN="$(realpath -m "${OUTPOST_BIN:-target/debug/outpost}")"
EXAMPLES="${CONTRACT_EXAMPLES:-30}"
WORKERS="${CONTRACT_WORKERS:-1}"
PYTHON="${CONTRACT_PYTHON:-python3}"
SEED="${CONTRACT_SEED:-1}"
if [[ "$SEED" == random ]]; then SEED=$(python3 -c 'import random; print(random.getrandbits(63))'); fi

# Operations that end the caller's session or change another user's standing. The main
# principals (owner, member, guest, operator) skip them so that they stay logged in and in good
# standing for the whole run; they run last, on their own, as the owner of a scratch
# organization and as the operator.
SESSION_ENDING_OPS=(logout revokeSession changeMyPassword revokeUserSessions suspendUser deleteUser
  changeUserRole issuePasswordReset suspendOrganization deleteOrganization)

mkdir -p "$OUT"
declare -A TIMES=() RESULTS=()
FAILED=()

log() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
took() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# --- tools -------------------------------------------------------------------------------------

ensure_venv() {
  if [[ -x "$VENV/bin/st" && -x "$VENV/bin/openapi-python-client" ]] &&
    [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"), m.version("openapi-python-client"))')" == "$SCHEMATHESIS_VERSION $OPC_VERSION" ]]; then
    return
  fi
  log "installing schemathesis $SCHEMATHESIS_VERSION and openapi-python-client $OPC_VERSION into $VENV"
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-python-client==$OPC_VERSION"
}

ensure_node() {
  # npm ci when node_modules is missing or older than the lock file.
  if [[ -f "$NODE_DIR/node_modules/.package-lock.json" && "$NODE_DIR/node_modules/.package-lock.json" -nt "$NODE_DIR/package-lock.json" ]]; then
    return
  fi
  log "installing the TypeScript tools (npm ci in tests/contract)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
}

# --- the server --------------------------------------------------------------------------------

SERVER_PID=""
SERVER_DIR=""
BASE_URL=""

start_server() {
  [[ -n "$SERVER_PID" ]] && return
  [[ -x "$BIN" ]] || { echo "no server binary at $BIN (set OUTPOST_BIN)" >&2; exit 1; }
  SERVER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/outpost-contract.XXXXXX")"
  local port
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  BASE_URL="http://127.0.0.1:$port"
  # Zero-config, with the per-user and per-organization request budgets raised so that a
  # property run at full speed is not answered 429 (the login budgets stay as they are), and
  # access tokens that outlive the run. Outbound calls (webhooks, health checks, the gateway)
  # reach loopback only: whatever URL a generated request registers, nothing leaves the
  # machine, not even a DNS query. OUTPOST_BIN is ours, not a configuration key: the server
  # would refuse it.
  env -u OUTPOST_BIN OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000 \
    OUTPOST_AUTH__ACCESS_TTL_S=7200 OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]' OUTPOST_EGRESS__ALLOWED_ONLY=true \
    "$BIN" serve --data "$SERVER_DIR/data" --listen "127.0.0.1:$port" >"$OUT/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -fsS "$BASE_URL/health/ready" >/dev/null 2>&1; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT/server.log" >&2; echo "the server did not start" >&2; exit 1; }
    sleep 0.1
  done
  curl -fsS "$BASE_URL/health/ready" >/dev/null
  local key
  key="$(env -u OUTPOST_BIN "$BIN" operator create-key --data "$SERVER_DIR/data" --name contract | grep -o 'opk_[A-Za-z0-9_-]*' | head -n1)"
  [[ -n "$key" ]] || { echo "could not create an operator key" >&2; exit 1; }
  python3 tests/contract/provision.py "$BASE_URL" "$key" "$OUT/principals.json"
  echo "server $BASE_URL (pid $SERVER_PID, data $SERVER_DIR/data, log $OUT/server.log)"
}

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
  [[ -n "$SERVER_DIR" ]] && rm -rf "$SERVER_DIR"
  SERVER_DIR=""
}
trap stop_server EXIT

check_panics() {
  if grep -q 'panicked' "$OUT/server.log"; then
    echo "the server log has a panic:" >&2
    grep -m5 'panicked' "$OUT/server.log" >&2
    return 1
  fi
}

# --- a. the Python client ----------------------------------------------------------------------

PY_WARNINGS=""
gen_python() {
  ensure_venv
  rm -rf "$OUT/python"
  local cfg="$NODE_DIR/python-client.yaml"
  "$VENV/bin/openapi-python-client" generate --path "$DOC" --output-path "$OUT/python" \
    --meta setup --config "$cfg" >"$OUT/python-generate.log" 2>&1 || true
  # One warning per dropped or degraded endpoint ("WARNING parsing …"), per schema that could not
  # be processed ("Unable to process schema …"), and any error.
  PY_WARNINGS="$(grep -cE '^(WARNING|ERROR)|^Unable to process schema|^Error' "$OUT/python-generate.log" || true)"
  [[ -d "$OUT/python/outpost_client" ]] || PY_WARNINGS=$((PY_WARNINGS + 1))
}

part_python() {
  log "a. Python client (openapi-python-client $OPC_VERSION) from ${DOC#"$ROOT"/}"
  local t0; t0="$(now)"
  gen_python
  grep -E '^(WARNING|ERROR)|^Unable to process schema|^Error|Cannot|Unsupported|Could not' "$OUT/python-generate.log" | sed 's/^/    /' || true
  echo "openapi-python-client: $PY_WARNINGS warnings (full output: $OUT/python-generate.log)"
  TIMES[python]="$(took "$t0")"
  RESULTS[python]="$PY_WARNINGS warnings"
  [[ "$PY_WARNINGS" == 0 ]] || FAILED+=(python)
}

# --- b. the TypeScript client ------------------------------------------------------------------

TS_WARNINGS=""
TS_ERRORS=""
gen_ts() {
  ensure_node
  rm -rf "$OUT/ts"
  mkdir -p "$OUT/ts"
  (cd "$NODE_DIR" && CONTRACT_OPENAPI="$DOC" CONTRACT_TS_OUT="$OUT/ts/client" NO_COLOR=1 FORCE_COLOR=0 \
    npx --no-install openapi-ts -f openapi-ts.config.ts) >"$OUT/ts-generate.log" 2>&1 || echo "ERROR: openapi-ts exited with $?" >>"$OUT/ts-generate.log"
  # The journey and its tsconfig.json go next to the generated client; the generated code imports
  # zod and the journey yjs, both resolved from tests/contract/node_modules.
  ln -sfn "$NODE_DIR/node_modules" "$OUT/ts/node_modules"
  cp "$NODE_DIR/journey.ts" "$NODE_DIR/tsconfig.json" "$OUT/ts/"
  TS_WARNINGS="$(sed 's/\x1b\[[0-9;]*m//g' "$OUT/ts-generate.log" | grep -ciE 'warn|error|⚠|✖|❌|unsupported|skipp' || true)"
  [[ -f "$OUT/ts/client/sdk.gen.ts" ]] || TS_WARNINGS=$((TS_WARNINGS + 1))
}

part_ts() {
  log "b. TypeScript client (@hey-api/openapi-ts) from ${DOC#"$ROOT"/}, tsc --strict"
  local t0; t0="$(now)"
  gen_ts
  sed 's/\x1b\[[0-9;]*m//g' "$OUT/ts-generate.log" | grep -iE 'warn|error|⚠|✖|❌|unsupported|skipp' | sed 's/^/    /' || true
  echo "@hey-api/openapi-ts: $TS_WARNINGS warnings (full output: $OUT/ts-generate.log)"
  # The generated client and the journey, type-checked together.
  "$NODE_DIR/node_modules/.bin/tsc" -p "$OUT/ts/tsconfig.json" --strict --noEmit >"$OUT/tsc.log" 2>&1 || true
  TS_ERRORS="$(grep -c 'error TS' "$OUT/tsc.log" || true)"
  head -n 20 "$OUT/tsc.log" | sed 's/^/    /'
  echo "tsc --strict: $TS_ERRORS type errors (full output: $OUT/tsc.log)"
  TIMES[ts]="$(took "$t0")"
  RESULTS[ts]="$TS_WARNINGS generator warnings, $TS_ERRORS type errors"
  [[ "$TS_WARNINGS" == 0 && "$TS_ERRORS" == 0 ]] || FAILED+=(ts)
}

# --- c. the journeys ---------------------------------------------------------------------------

part_journeys() {
  log "c. journeys through the generated clients"
  local t0; t0="$(now)"
  [[ -d "$OUT/python/outpost_client" ]] || gen_python
  [[ -f "$OUT/ts/client/sdk.gen.ts" ]] || gen_ts
  cp "$NODE_DIR/journey.ts" "$OUT/ts/"
  start_server
  local py=ok tsj=ok
  echo "-- Python"
  if ! PYTHONPATH="$OUT/python" "$VENV/bin/python" tests/contract/journey.py "$OUT/principals.json" 2>&1 | tee "$OUT/journey-py.log"; then
    py=FAILED
  fi
  echo "-- TypeScript"
  if ! (cd "$OUT/ts" && "$NODE_DIR/node_modules/.bin/tsx" journey.ts "$OUT/principals.json") 2>&1 | tee "$OUT/journey-ts.log"; then
    tsj=FAILED
  fi
  check_panics || py="$py (server panicked)"
  TIMES[journeys]="$(took "$t0")"
  RESULTS[journeys]="python $py, typescript $tsj"
  [[ "$py" == ok && "$tsj" == ok ]] || FAILED+=(journeys)
}

# --- d. schemathesis ---------------------------------------------------------------------------

ST_RUNS=()
st_run() {
  # st_run NAME TOKEN [filter options...]
  local name=$1 token=$2
  shift 2
  local dir="$OUT/schemathesis/$name" t0
  rm -rf "$dir"
  mkdir -p "$dir"
  t0="$(now)"
  echo "-- $name"
  SCHEMATHESIS_HOOKS="$NODE_DIR/st_hooks.py" "$VENV/bin/st" --config-file "$NODE_DIR/schemathesis.toml" run "$DOC" --url "$BASE_URL" \
    -H "Authorization: Bearer $token" \
    --phases examples,coverage,fuzzing,stateful \
    --checks all \
    --max-examples "$EXAMPLES" \
    --seed "$SEED" \
    --workers "$WORKERS" \
    --request-timeout 20 \
    --no-color \
    --generation-database none \
    --report json,ndjson,junit --report-dir "$dir" \
    "$@" >"$dir/output.txt" 2>&1 || true
  tail -n 4 "$dir/output.txt" | sed 's/^/    /'
  TIMES["st:$name"]="$(took "$t0")"
  ST_RUNS+=("$name")
}

principal_token() {
  python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["operator_key"] if sys.argv[2] == "operator" else d["principals"][sys.argv[2]]["access_token"])' \
    "$OUT/principals.json" "$1"
}

part_schemathesis() {
  log "d. schemathesis $SCHEMATHESIS_VERSION: every operation, all phases, $EXAMPLES examples per operation, $WORKERS workers, seed $SEED"
  local t0; t0="$(now)"
  ensure_venv
  start_server
  local exclude=() include=() op
  for op in "${SESSION_ENDING_OPS[@]}"; do
    exclude+=(--exclude-operation-id "$op")
    include+=(--include-operation-id "$op")
  done
  for p in owner member guest operator; do
    st_run "$p" "$(principal_token "$p")" "${exclude[@]}"
  done
  # The operations that end the caller's session, last and on their own.
  st_run ending-owner "$(principal_token scratch_owner)" "${include[@]}"
  st_run ending-operator "$(principal_token operator)" "${include[@]}"
  local st_ok=ok
  python3 tests/contract/st_summary.py "$OUT" "${ST_RUNS[@]}" | tee "$OUT/schemathesis/summary.txt" || st_ok=FAILED
  if ! check_panics; then st_ok="$st_ok, server panicked"; fi
  TIMES[schemathesis]="$(took "$t0")"
  RESULTS[schemathesis]="$st_ok (details: $OUT/schemathesis/summary.txt)"
  [[ "$st_ok" == ok ]] || FAILED+=(schemathesis)
}

# --- main --------------------------------------------------------------------------------------

PARTS=("$@")
if [[ "${PARTS[*]}" == tools ]]; then
  ensure_venv
  ensure_node
  exit 0
fi
[[ ${#PARTS[@]} -gt 0 ]] || PARTS=(python ts journeys schemathesis)
T_ALL="$(now)"
for part in "${PARTS[@]}"; do
  case "$part" in
    python | a) part_python ;;
    ts | b) part_ts ;;
    journeys | c) part_journeys ;;
    schemathesis | d) part_schemathesis ;;
    *) echo "unknown part '$part' (python, ts, journeys, schemathesis)" >&2; exit 2 ;;
  esac
done
stop_server

log "summary (document ${DOC#"$ROOT"/}, $(wc -c <"$DOC") bytes)"
for part in python ts journeys schemathesis; do
  [[ -n "${RESULTS[$part]:-}" ]] || continue
  printf '  %-13s %-70s %6s s\n' "$part" "${RESULTS[$part]}" "${TIMES[$part]}"
done
if [[ -n "${RESULTS[schemathesis]:-}" ]]; then
  for name in "${ST_RUNS[@]}"; do
    printf '    st %-26s %6s s\n' "$name" "${TIMES["st:$name"]}"
  done
  python3 - "$OUT/schemathesis/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print("  schemathesis failures by check and principal:")
checks = sorted({c for r in s["runs"].values() for c in r.get("failures_by_check", {})})
runs = list(s["runs"])
print("    " + " " * 40 + "".join(f"{r:>16}" for r in runs))
for c in checks:
    print(f"    {c[:40]:<40}" + "".join(f"{s['runs'][r].get('failures_by_check', {}).get(c, 0):>16}" for r in runs))
errors = sorted({e for r in s["runs"].values() for e in r.get("errors", {})})
for e in errors:
    print(f"    {('error: ' + e)[:40]:<40}" + "".join(f"{s['runs'][r].get('errors', {}).get(e, 0):>16}" for r in runs))
print(f"    {'total failures':<40}" + "".join(f"{s['runs'][r].get('failures', 0):>16}" for r in runs))
print(f"  distinct causes: {len(s['causes'])}")
EOF
fi
printf '  %-13s %s s\n' total "$(took "$T_ALL")"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all contract tests passed"
