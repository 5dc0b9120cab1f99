#!/usr/bin/env bash
# Gateway overhead, in one run: a service in the load program (a small JSON answer, its API key
# checked) called straight and through `/v1/services/{id}/proxy/...` on the same machine.
#   1. latency: one connection each way, CALLS calls alternating direct / gateway; p50/p99 of
#      both and what the gateway adds;
#   2. throughput: CONNS connections for DURATION seconds direct, then through the gateway;
#      requests/s and the ratio;
#   3. the same through nginx as a bare reverse proxy in front of the service (PROXY=nginx,
#      the default when nginx is installed; PROXY=none skips it): what one proxy hop costs on
#      this machine with no authentication, credential or audit record.
# ROUNDS rounds, each on a fresh organization; medians reported.
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/gateway.sh
#   CALLS=2000 CONNS=32 DURATION=8 ROUNDS=3 …
#   LOAD=target/release/deps/gateway_load-… …   a load program already built
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18086}
SERVICE_PORT=${SERVICE_PORT:-18087}
PROXY_PORT=${PROXY_PORT:-18088}
if command -v nginx >/dev/null 2>&1; then PROXY=${PROXY:-nginx}; else PROXY=${PROXY:-none}; fi
CALLS=${CALLS:-2000}
CONNS=${CONNS:-32}
ROUNDS=${ROUNDS:-3}
require_outpost
bench_init

if [ -z "${LOAD:-}" ]; then
    (cd "$REPO_DIR" && cargo bench --bench gateway_load --no-run -q 2>/dev/null)
    LOAD=$(cd "$REPO_DIR" && cargo bench --bench gateway_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
fi
[ -x "$LOAD" ] || die "no load generator built"

export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]' OUTPOST_EGRESS__ALLOWED_ONLY=true \
    OUTPOST_EGRESS__PER_HOST_CONCURRENCY_MAX=256
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
proxy_args=()
if [ "$PROXY" = nginx ]; then
    start_nginx_proxy "$WORK/nginx" "$PROXY_PORT" "$SERVICE_PORT"
    proxy_args=(--service-port "$SERVICE_PORT" --proxy "http://127.0.0.1:$PROXY_PORT")
fi
log "$(machine_desc); $CALLS calls for latency, $CONNS connections for ${DURATION}s for throughput"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    token=$(outpost_member_token "$KEY" "bench-gw-$round" admin)
    cpu0=$(proc_cpu_s "$OP_PID")
    "$LOAD" --url "$OP_URL" --token "$token" --calls "$CALLS" --conns "$CONNS" --seconds "$DURATION" "${proxy_args[@]}" | tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') rss_kb=$(proc_rss_kb "$OP_PID")" | tee -a "$out"
done

median() { grep -oE "(^| )$1=[0-9.-]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo
echo "| measure (median of $ROUNDS) | direct | through the gateway | gateway adds / ratio |"
echo "|---|---|---|---|"
echo "| latency p50, 1 connection | $(median direct_p50_us) µs | $(median gateway_p50_us) µs | +$(median added_p50_us) µs |"
echo "| latency p99, 1 connection | $(median direct_p99_us) µs | $(median gateway_p99_us) µs | +$(median added_p99_us) µs |"
echo "| requests/s, $CONNS connections | $(median direct_rps) | $(median gateway_rps) | $(median ratio)× |"
echo "| server RSS after the run | | $(median rss_kb) KB | |"
if [ "$PROXY" = nginx ]; then
    echo
    echo "| nginx as a bare reverse proxy (median of $ROUNDS) | through nginx | nginx adds / its ratio to direct | the gateway's ratio to nginx |"
    echo "|---|---|---|---|"
    echo "| latency p50, 1 connection | $(median proxy_p50_us) µs | +$(median proxy_added_p50_us) µs | |"
    echo "| latency p99, 1 connection | $(median proxy_p99_us) µs | +$(median proxy_added_p99_us) µs | |"
    echo "| requests/s, $CONNS connections | $(median proxy_rps) | $(median proxy_ratio)× | $(median gateway_to_proxy)× |"
fi
