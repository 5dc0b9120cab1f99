#!/usr/bin/env bash
# Webhook delivery to a local receiver, compared with that receiver's own ceiling, in one run:
#   1. ceiling: 64 connections POST a delivery-sized body straight to the receiver (requests/s);
#   2. burst: 100 endpoints (one receiver path each) take `task.created`; BURST tasks are posted
#      as fast as the server takes them; deliveries/s until every one reached every endpoint;
#   3. steady: RATE tasks a second for DURATION seconds (RATE × 100 deliveries a second);
#      delivery lag p50/p99 (arrival minus the event's commit time).
# Each round uses a fresh organization (100 new endpoints); ROUNDS rounds, medians reported.
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/webhooks.sh
#   ENDPOINTS=100 BURST=200 RATE=20 DURATION=10 ROUNDS=3 …
#   PER_HOST=16 …   egress.per_host_concurrency_max (every endpoint here is on one host)
#   LOAD=target/release/deps/webhooks_load-… …   a load program already built
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18085}
ENDPOINTS=${ENDPOINTS:-100}
BURST=${BURST:-200}
RATE=${RATE:-20}
ROUNDS=${ROUNDS:-3}
PER_HOST=${PER_HOST:-16}
require_outpost
bench_init

# LOAD=path skips building the load program (it changes far less often than the server).
if [ -z "${LOAD:-}" ]; then
    (cd "$REPO_DIR" && cargo bench --bench webhooks_load --no-run -q 2>/dev/null)
    LOAD=$(cd "$REPO_DIR" && cargo bench --bench webhooks_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
fi
[ -x "$LOAD" ] || die "no load generator built"

export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]' OUTPOST_EGRESS__PER_HOST_CONCURRENCY_MAX="$PER_HOST" \
    OUTPOST_WEBHOOKS__ENDPOINTS_PER_ORG_MAX="$ENDPOINTS"
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
log "$(machine_desc); endpoints $ENDPOINTS, burst $BURST, steady $RATE events/s for ${DURATION}s, per-host $PER_HOST"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    "$LOAD" --mode ceiling --conns 64 --seconds "$DURATION" | tee -a "$out"
    token=$(outpost_member_token "$KEY" "bench-wh-$round" admin)
    cpu0=$(proc_cpu_s "$OP_PID")
    "$LOAD" --mode deliver --url "$OP_URL" --token "$token" --endpoints "$ENDPOINTS" --burst "$BURST" \
        --rate "$RATE" --seconds "$DURATION" | tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') rss_kb=$(proc_rss_kb "$OP_PID")" | tee -a "$out"
done

median() { grep -o "$1=[0-9.]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
ceiling=$(median ceiling_rps)
burst=$(grep '^burst_' "$out" | grep -o 'deliveries_per_s=[0-9.]*' | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}')
p50=$(median lag_p50_ms)
p99=$(median lag_p99_ms)
echo
echo "| measure (median of $ROUNDS) | value |"
echo "|---|---|"
echo "| receiver ceiling, 64 connections | ${ceiling} req/s |"
echo "| burst: $BURST events × $ENDPOINTS endpoints | ${burst} deliveries/s ($(awk -v a="$burst" -v b="$ceiling" 'BEGIN{printf "%.2f", a/b}')× the ceiling) |"
echo "| steady: $RATE events/s × $ENDPOINTS endpoints | lag p50 ${p50} ms, p99 ${p99} ms |"
