#!/usr/bin/env bash
# The built-in TURN server beside coturn 4.6 (Debian `coturn`) on the same machine, in one run
# (load generator: benches/turn_load.rs, the same TURN client for both):
#   1. relaying: CLIENTS allocations each bouncing 200-byte datagrams off an echo peer
#      (one in flight each) for DURATION s: datagrams relayed per second, round trip p50/p99,
#      server CPU;
#   2. allocations per second: ALLOCS fresh clients (authenticate, allocate, deallocate), 16
#      at once.
# Both use REST-style credentials (coturn's use-auth-secret) and may relay to loopback peers.
#
#   bash benches/turn.sh          # ALLOCS=2000 CLIENTS=64 DURATION=8
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
OP_TURN_PORT=${OP_TURN_PORT:-13478}
CT_PORT=${CT_PORT:-13479}
ALLOCS=${ALLOCS:-2000}
CLIENTS=${CLIENTS:-64}
require_outpost
require_cmd turnserver curl
bench_init

(cd "$REPO_DIR" && cargo bench --bench turn_load --no-run -q 2>/dev/null)
LOAD=$(cd "$REPO_DIR" && cargo bench --bench turn_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
[ -x "$LOAD" ] || die "no load generator built"
run() { "$LOAD" --seconds "${DURATION:-8}" "$@" | grep '^RESULT' || true; }

echo "== Outpost (built-in TURN, UDP) =="
export OUTPOST_MEDIA__TURN_LISTEN="127.0.0.1:$OP_TURN_PORT" OUTPOST_MEDIA__TURN_ALLOW_LOOPBACK_PEERS=true \
    OUTPOST_MEDIA__TURN_RELAY_PORT_MIN=40000 OUTPOST_MEDIA__TURN_RELAY_PORT_MAX=49999
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
TOKEN=$(outpost_member_token "$KEY" bench-turn)
CREDS=$(curl -fsS -X POST "$OP_URL/v1/media/turn-credentials" -H "Authorization: Bearer $TOKEN")
USER_=$(printf '%s' "$CREDS" | "${BENCHSTAT[@]}" json-get username)
PASS_=$(printf '%s' "$CREDS" | "${BENCHSTAT[@]}" json-get credential)
run --mode relay --server "127.0.0.1:$OP_TURN_PORT" --user "$USER_" --pass "$PASS_" --concurrency "$CLIENTS" --pid "$OP_PID"
run --mode alloc --server "127.0.0.1:$OP_TURN_PORT" --user "$USER_" --pass "$PASS_" --n "$ALLOCS" --concurrency 16 --pid "$OP_PID"
stop_outpost

echo "== coturn $(turnserver --version 2>/dev/null | head -1) =="
turnserver -n --listening-ip=127.0.0.1 --listening-port="$CT_PORT" --relay-ip=127.0.0.1 \
    --min-port=50000 --max-port=59999 --use-auth-secret --static-auth-secret=bench-secret \
    --realm=outpost --allow-loopback-peers --no-tls --no-dtls --no-cli --no-stdout-log \
    --log-file="$WORK/coturn.log" >/dev/null 2>&1 &
CT_PID=$!
trap 'stop_pid "$CT_PID" TERM 10 coturn; bench_cleanup' EXIT
sleep 1
pid_alive "$CT_PID" || die "coturn did not start (see $WORK/coturn.log)"
# Relaying first: coturn answers a client on a port an earlier client used, before that
# allocation has gone, with an error the client cannot read (counted as failed allocations).
run --mode relay --server "127.0.0.1:$CT_PORT" --secret bench-secret --concurrency "$CLIENTS" --pid "$CT_PID"
run --mode alloc --server "127.0.0.1:$CT_PORT" --secret bench-secret --n "$ALLOCS" --concurrency 16 --pid "$CT_PID"
