#!/usr/bin/env bash
# OAuth connections, in one run: a provider's token endpoint and a service in the load program.
#   1. the token endpoint called straight (the ceiling), then forced refreshes of CONNECTIONS
#      client-credentials connections through the API: refreshes/s and the ratio;
#   2. single flight: one connection whose tokens last TTL seconds, CONNS callers through the
#      gateway: calls/s and refreshes per expiry (1.00 = one refresh for all callers).
# ROUNDS rounds, each on a fresh organization; medians reported.
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/oauth.sh
#   CONNS=32 CONNECTIONS=64 TTL=1 DURATION=8 ROUNDS=3 …
#   LOAD=target/release/deps/oauth_load-… …   a load program already built
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18087}
CONNS=${CONNS:-32}
CONNECTIONS=${CONNECTIONS:-64}
TTL=${TTL:-1}
ROUNDS=${ROUNDS:-3}
require_outpost
bench_init

if [ -z "${LOAD:-}" ]; then
    (cd "$REPO_DIR" && cargo bench --bench oauth_load --no-run -q 2>/dev/null)
    LOAD=$(cd "$REPO_DIR" && cargo bench --bench oauth_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
fi
[ -x "$LOAD" ] || die "no load generator built"

export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]' OUTPOST_EGRESS__ALLOWED_ONLY=true \
    OUTPOST_EGRESS__PER_HOST_CONCURRENCY_MAX=256 OUTPOST_OAUTH__REFRESH_AHEAD_S=0
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
log "$(machine_desc); $CONNS callers for ${DURATION}s, $CONNECTIONS connections, tokens of ${TTL}s for single flight"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    token=$(outpost_member_token "$KEY" "bench-oauth-$round" admin)
    cpu0=$(proc_cpu_s "$OP_PID")
    "$LOAD" --url "$OP_URL" --token "$token" --conns "$CONNS" --connections "$CONNECTIONS" --ttl "$TTL" \
        --seconds "$DURATION" | tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') rss_kb=$(proc_rss_kb "$OP_PID")" | tee -a "$out"
done

median() { grep -o "$1=[0-9.-]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo
echo "| measure (median of $ROUNDS) | value | against |"
echo "|---|---|---|"
echo "| token endpoint straight, $CONNS callers | $(median token_endpoint_rps)/s | (the ceiling) |"
echo "| forced refreshes through the API, $CONNS callers over $CONNECTIONS connections | $(median refreshes_per_s)/s | $(median ratio)× the ceiling |"
echo "| gateway calls with a ${TTL}s token, $CONNS callers | $(median gateway_calls_per_s)/s | |"
echo "| refreshes per token expiry under that load | $(median refreshes_per_expiry) | 1.00 = single flight |"
echo "| server RSS after the run | $(median rss_kb) KB | |"
