#!/usr/bin/env bash
# Yjs document sync, side by side with Hocuspocus 3.4 and the y-websocket 2 reference server
# (both node) on the same machine, in one run. D documents × E editors (stock y-websocket and
# Hocuspocus providers, benches/peers/yjs_load.mjs), each editor making R changes a second (its
# own Y.Map key and one Y.Text character, one transaction): changes applied and relayed per
# second, change → observed-by-another-editor p50/p99, server CPU in the window, RSS at its end
# and peak (VmHWM, since the server started).
# Shapes: 1 document × 50 editors at 10/s, 200 documents × 5 editors at 2/s.
# Outpost commits every change to its store before relaying it; both peers keep documents in
# memory only.
#
#   bash benches/yjs.sh                     # DURATION=8 (seconds measured per run)
#   PEERS_ONLY=1 bash benches/yjs.sh        # the peers alone, no Outpost binary needed
#   SHAPES="1 50 10" bash benches/yjs.sh    # "docs editors rate", comma-separated
#   SIDES=outpost bash benches/yjs.sh       # Outpost alone (SIDES=peer: the peers alone)
#   GENERATOR=rust SHAPES="1 50 40,1 50 80" bash benches/yjs.sh
#                                           # capacity: the light generator (benches/yjs_capacity.rs),
#                                           # which finds timestamps in relayed bytes instead of
#                                           # running a Yjs document per editor
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
HP_PORT=${HP_PORT:-18091}
YWS_PORT=${YWS_PORT:-18092}
PEERS_ONLY=${PEERS_ONLY:-0}
[ "$PEERS_ONLY" = 1 ] && SIDES=peer
IFS=, read -r -a SHAPE_LIST <<<"${SHAPES:-1 50 10,200 5 2}"
side_enabled outpost && require_outpost
require_cmd node npm curl
bench_init
ulimit -n 65536 2>/dev/null || log "could not raise the open-files limit; 1,000 sockets may fail"

# The peers' packages, once, in ignored folders. The y-websocket 2 server has a folder of its
# own: the y-websocket 3 client has the same package name. --ignore-scripts skips the native
# build of its optional LevelDB persistence, which stays unused.
PEER_DIR="$BENCH_DIR/peers"
YWS2_DIR="$PEER_DIR/yws2"
install_node_peers
if [ ! -x "$YWS2_DIR/node_modules/.bin/y-websocket" ]; then
    log "installing y-websocket@2 into $YWS2_DIR/node_modules"
    npm install --prefix "$YWS2_DIR" --silent --no-audit --no-fund --no-save --ignore-scripts y-websocket@2 >/dev/null
fi

# ---------------------------------------------------------------- Outpost ----
# An org, a member who creates a room (and so may create documents in it), and for each shape
# documents of its own; every editor connects as that member to /v1/yjs/{doc_id}.

# post PATH TOKEN JSON: POST JSON with a bearer token, print the answer
post() {
    curl -fsS -X POST "$OP_URL$1" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' --data "$3"
}

outpost_setup() {
    export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
        OUTPOST_REALTIME__CONNECTIONS_PER_USER_MAX=1000000 OUTPOST_REALTIME__CONNECTIONS_PER_ORG_MAX=1000000
    local key
    key=$(outpost_operator_key "$WORK/outpost-data")
    start_outpost "$WORK/outpost-data" "$OP_PORT"
    TOKEN=$(outpost_member_token "$key" bench-yjs)
    ROOM_ID=$(post /v1/rooms "$TOKEN" '{"name":"bench-yjs"}' | "${BENCHSTAT[@]}" json-get id)
}

# outpost_docs N PREFIX: create N documents PREFIX-0.. in the room, print their ids comma-separated
outpost_docs() {
    local i id ids=""
    for ((i = 0; i < $1; i++)); do
        id=$(post "/v1/rooms/$ROOM_ID/docs" "$TOKEN" "{\"name\":\"$2-$i\"}" | "${BENCHSTAT[@]}" json-get id)
        ids="$ids${ids:+,}$id"
    done
    printf '%s\n' "$ids"
}

if side_enabled outpost; then outpost_setup; fi

# ------------------------------------------------------------------ peers ----
# Fresh peer servers for each shape, so their memory figures belong to that shape alone.
start_peers() {
    start_node_peer "$WORK/hocuspocus.log" listening node "$PEER_DIR/hocuspocus_server.mjs" "$HP_PORT"
    HP_PID=$NODE_PEER_PID
    # What `npx y-websocket` runs, started directly so that the PID measured (and stopped) is
    # the server's, not that of npm's wrapper.
    start_node_peer "$WORK/yws.log" "running at" env HOST=127.0.0.1 PORT="$YWS_PORT" \
        node "$YWS2_DIR/node_modules/.bin/y-websocket"
    YWS_PID=$NODE_PEER_PID
}

stop_peers() {
    stop_pid "$HP_PID" TERM 10 hocuspocus
    stop_pid "$YWS_PID" TERM 10 y-websocket
}

# ------------------------------------------------------------------- runs ----
if [ "${GENERATOR:-node}" = rust ]; then
    (cd "$REPO_DIR" && cargo bench --bench yjs_capacity --no-run -q 2>/dev/null)
    CAPACITY=$(cd "$REPO_DIR" && cargo bench --bench yjs_capacity --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
    [ -x "$CAPACITY" ] || die "no capacity generator built"
    run() { "$CAPACITY" --seconds "$DURATION" "$@" | grep '^RESULT' || true; }
else
    run() { node "$PEER_DIR/yjs_load.mjs" --seconds "$DURATION" "$@" | grep '^RESULT' || true; }
fi
for n in "${!SHAPE_LIST[@]}"; do
    read -r docs editors rate <<<"${SHAPE_LIST[$n]}"
    shape_args=(--docs "$docs" --editors "$editors" --rate "$rate")
    echo "== $docs document(s) × $editors editors, $rate changes/s each, $DURATION s =="
    if side_enabled outpost; then
        ids=$(outpost_docs "$docs" "bench-$n")
        run --target outpost --url "ws://127.0.0.1:$OP_PORT/v1/yjs" --token "$TOKEN" --doc-ids "$ids" \
            "${shape_args[@]}" --pid "$OP_PID"
    fi
    side_enabled peer || continue
    start_peers
    run --target hocuspocus --url "ws://127.0.0.1:$HP_PORT" "${shape_args[@]}" --pid "$HP_PID"
    run --target yws --url "ws://127.0.0.1:$YWS_PORT" "${shape_args[@]}" --pid "$YWS_PID"
    stop_peers
done
