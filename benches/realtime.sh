#!/usr/bin/env bash
# Realtime fan-out, side by side with a Socket.IO 4 server (node) on the same machine, in one run:
#   1. 1 room × 1,000 subscribers, then 100 rooms × 10 subscribers: deliveries per second,
#      send → receipt p50/p99, server CPU and RSS. Outpost publishes twice: durable messages
#      over HTTP, then relayed signals over the socket (never stored, the like-for-like case);
#      Socket.IO emits with an acknowledgement;
#   2. N idle authenticated connections, each following one topic: server RSS per connection,
#      measured over the last nine tenths (the first are connected before the measure starts);
#   3. resume: a client away while 10,000 events land comes back and has them replayed.
#
#   bash benches/realtime.sh          # DURATION=8 PUBLISHERS=64 IDLE=10000
#   SHAPES="100 10" FANOUT_ONLY=1 PUBLISHERS=256 bash benches/realtime.sh   # one shape, no idle/resume
#   PUBLISH=signal SIDES=outpost …    # Outpost's relayed signals only (PUBLISH: post, signal or both)
#   RATE=6000 …                       # publishers paced to 6,000 publishes/s in all (latency at a set load)
#   SHAPES=none …                     # idle sockets and resume only
#   MULTIPLE=5 (default; 0: off)      # after each Socket.IO run, Outpost's signals paced to 5× its publishes/s
#   LOAD=target/release/deps/realtime_load-… …   a load generator already built
#   HEAP=1 OP_BIN=<a glibc build> …    # also the live heap per idle socket, counted by benches/heap_live.c
#                                     # preloaded (RSS moves with what the allocator kept from before)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
SIO_PORT=${SIO_PORT:-18090}
PUBLISHERS=${PUBLISHERS:-64}
IDLE=${IDLE:-10000}
PUBLISH=${PUBLISH:-post signal}
require_outpost
require_cmd node
require_cmd npm
bench_init
ulimit -n 65536 2>/dev/null || log "could not raise the open-files limit; idle runs may fail"

# The peer's packages, once, in an ignored folder.
PEER_DIR="$BENCH_DIR/peers"
install_node_peers

if [ -z "${LOAD:-}" ]; then
    log "building the load generator (cargo bench --no-run: minutes on a cold target)"
    (cd "$REPO_DIR" && cargo bench --bench realtime_load --no-run -q 2>/dev/null)
    LOAD=$(cd "$REPO_DIR" && cargo bench --bench realtime_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
fi
[ -x "$LOAD" ] || die "no load generator built"

if [ "${HEAP:-0}" = 1 ]; then
    require_cmd gcc
    gcc -O2 -shared -fPIC -o "$WORK/heap_live.so" "$REPO_DIR/benches/heap_live.c"
    export HEAP_LIVE_DIR="$WORK"
    OP_WRAP="env LD_PRELOAD=$WORK/heap_live.so"
fi

export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_REALTIME__CONNECTIONS_PER_USER_MAX=1000000 OUTPOST_REALTIME__CONNECTIONS_PER_ORG_MAX=1000000 \
    OUTPOST_REALTIME__SIGNALS_PER_S=1000000
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
TOKEN=$(outpost_member_token "$KEY" bench-rt)
IFS=, read -r -a SHAPE_LIST <<<"${SHAPES:-1 1000,100 10}"
[ "${SHAPES:-}" = none ] && SHAPE_LIST=()
ROOMS_MAX=100
for shape in "${SHAPE_LIST[@]}"; do
    set -- $shape
    [ "$1" -gt "$ROOMS_MAX" ] && ROOMS_MAX=$1
done
CHANNELS=""
for i in $(seq 0 $((ROOMS_MAX - 1))); do
    id=$(curl -fsS -X POST "$OP_URL/v1/channels" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        --data "{\"kind\":\"public\",\"name\":\"room-$i\"}" | "${BENCHSTAT[@]}" json-get id)
    CHANNELS="$CHANNELS${CHANNELS:+,}$id"
done
FIRST=${CHANNELS%%,*}

start_socketio() {
    node "$PEER_DIR/socketio_server.js" "$SIO_PORT" >"$WORK/socketio.log" 2>&1 &
    SIO_PID=$!
    for _ in $(seq 1 100); do grep -q listening "$WORK/socketio.log" 2>/dev/null && break; sleep 0.1; done
    log "socket.io ready: pid $SIO_PID"
}
start_socketio
trap 'kill $SIO_PID 2>/dev/null || true; bench_cleanup' EXIT

run() { "$LOAD" "$@" ${RATE:+--rate "$RATE"} | grep '^RESULT' || true; }
for shape in "${SHAPE_LIST[@]}"; do
    set -- $shape
    echo "== fan-out: $1 room(s) × $2 subscribers, $PUBLISHERS publishers, ${DURATION:-8} s =="
    for publish in $PUBLISH; do
        run --mode fanout --target outpost --publish "$publish" --url "$OP_URL" --token "$TOKEN" --channels "$CHANNELS" \
            --rooms "$1" --subs "$2" --publishers "$PUBLISHERS" --seconds "${DURATION:-8}" --pid "$OP_PID"
    done
    [ "${SIDES:-both}" = outpost ] && continue
    sio=$(run --mode fanout --target socketio --url "http://127.0.0.1:$SIO_PORT" \
        --rooms "$1" --subs "$2" --publishers "$PUBLISHERS" --seconds "${DURATION:-8}" --pid "$SIO_PID")
    echo "$sio"
    # Outpost's relayed signals again, paced to MULTIPLE × the publishes Socket.IO just managed:
    # its latency at that multiple of the peer's ceiling, beside the peer's at its ceiling.
    sio_pps=$(sed -n 's/.* published_per_s=\([0-9]*\).*/\1/p' <<<"$sio")
    if [ "${MULTIPLE:-5}" != 0 ] && [ -n "$sio_pps" ] && [ -z "${RATE:-}" ] && [[ " $PUBLISH " == *" signal "* ]]; then
        echo "-- Outpost's signals paced at ${MULTIPLE:-5} × Socket.IO's $sio_pps publishes/s --"
        RATE=$((sio_pps * ${MULTIPLE:-5})) run --mode fanout --target outpost --publish signal --url "$OP_URL" \
            --token "$TOKEN" --channels "$CHANNELS" --rooms "$1" --subs "$2" --publishers "$PUBLISHERS" \
            --seconds "${DURATION:-8}" --pid "$OP_PID"
    fi
done
[ "${FANOUT_ONLY:-0}" = 1 ] && { stop_outpost; exit 0; }
# Idle memory on freshly started servers: after the fan-out runs, memory they freed would be
# reused by the new sockets and hide part of what each costs.
if [ ${#SHAPE_LIST[@]} -gt 0 ]; then
    stop_outpost
    start_outpost "$WORK/outpost-data" "$OP_PORT"
    kill "$SIO_PID" 2>/dev/null || true
    wait "$SIO_PID" 2>/dev/null || true
    start_socketio
fi
echo "== $IDLE idle connections =="
run --mode idle --target outpost --url "$OP_URL" --token "$TOKEN" --channels "$FIRST" --conns "$IDLE" --pid "$OP_PID"
run --mode idle --target socketio --url "http://127.0.0.1:$SIO_PORT" --conns "$IDLE" --pid "$SIO_PID"
echo "== resume after 10,000 missed events =="
run --mode resume --target outpost --url "$OP_URL" --token "$TOKEN" --channels "$FIRST" --events 10000 --pid "$OP_PID"
stop_outpost
