#!/usr/bin/env bash
# Identity benchmarks, one run:
#   1. token signing and verification (with and without the cache), password check cost
#      (cargo bench --bench tokens);
#   2. token refreshes per second from 100 concurrent clients, each with its own session,
#      and login latency (cargo bench --bench auth_load) against the release binary;
#   3. authenticated GET /v1/me (a user's access token) beside nginx serving the same bytes
#      (READ_TARGET=me benches/http_reads.sh).
#
#   bash benches/auth.sh            # CLIENTS=100 DURATION=8 ROUNDS=5
set -euo pipefail
. "$(dirname "$0")/lib.sh"

CLIENTS=${CLIENTS:-100}
OP_PORT=${OP_PORT:-18080}
require_outpost
bench_init

echo "== token and password costs =="
(cd "$REPO_DIR" && cargo bench -q --bench tokens 2>/dev/null)

echo "== refreshes from $CLIENTS clients =="
export OUTPOST_LIMITS__LOGIN_PER_ADDR_PER_MIN=1000000 OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 \
    OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 OUTPOST_AUTH__SESSIONS_PER_USER_MAX=100000
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
ORG_ID=$(curl -fsS -X POST "$OP_URL/v1/orgs" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    --data '{"slug":"bench-auth","name":"Bench auth"}' | "${BENCHSTAT[@]}" json-get id)
INV=$(curl -fsS -X POST "$OP_URL/v1/orgs/$ORG_ID/invitations" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' --data '{"email":"b@example.org","role":"member"}' | "${BENCHSTAT[@]}" json-get token)
curl -fsS -o /dev/null -X POST "$OP_URL/v1/auth/invitations/accept" -H 'Content-Type: application/json' \
    --data "{\"token\":\"$INV\",\"username\":\"bench\",\"password\":\"bench password 123\"}"
cpu0=$(proc_cpu_s "$OP_PID")
(cd "$REPO_DIR" && cargo bench -q --bench auth_load -- --url "$OP_URL" --org bench-auth --login bench \
    --password "bench password 123" --clients "$CLIENTS" --seconds "${DURATION:-8}" 2>/dev/null)
cpu1=$(proc_cpu_s "$OP_PID")
echo "server cpu during the refresh run: $(python3 -c "print(round($cpu1 - $cpu0, 2))") s; peak RSS $(proc_rss_peak_kb "$OP_PID") kB"
stop_outpost
unset OUTPOST_LIMITS__LOGIN_PER_ADDR_PER_MIN OUTPOST_AUTH__SESSIONS_PER_USER_MAX

echo "== GET /v1/me vs nginx =="
READ_TARGET=me bash "$BENCH_DIR/http_reads.sh"
