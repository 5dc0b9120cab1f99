#!/usr/bin/env bash
# Shared documents at rest (load generator: benches/docs_load.rs):
#   1. appends UPDATES one-character updates to one document over REST (64 in flight);
#   2. after a restart, times the first read of that document (a load from the store:
#      UPDATES stored updates, no snapshot), then compacts it and times the load again;
#   3. creates DOCS small documents (a short paragraph each) and, on a freshly started server,
#      loads every one of them: server RSS per loaded document.
# No peer runs here: the goal for memory is under 50 KB per small document (the Yjs author's
# figure is about 100 KB); load times are compared before and after compaction.
#
#   bash benches/docs.sh          # UPDATES=100000 DOCS=10000
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
UPDATES=${UPDATES:-100000}
DOCS=${DOCS:-10000}
require_outpost
bench_init

(cd "$REPO_DIR" && cargo bench --bench docs_load --no-run -q 2>/dev/null)
LOAD=$(cd "$REPO_DIR" && cargo bench --bench docs_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
[ -x "$LOAD" ] || die "no load generator built"

# Compaction held off until asked for; every document stays loaded once read.
export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_DOCS__COMPACT_AFTER_UPDATES=1000000000 OUTPOST_DOCS__LOADED_MAX=1000000 \
    OUTPOST_DOCS__IDLE_UNLOAD_S=3600
DATA="$WORK/outpost-data"
KEY=$(outpost_operator_key "$DATA")
start_outpost "$DATA" "$OP_PORT"
TOKEN=$(outpost_member_token "$KEY" bench-docs)
post() {
    curl -fsS -X POST "$OP_URL$1" -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' --data "$2"
}
ROOM=$(post /v1/rooms '{"name":"bench-docs"}' | "${BENCHSTAT[@]}" json-get id)
DOC=$(post "/v1/rooms/$ROOM/docs" '{"name":"long"}' | "${BENCHSTAT[@]}" json-get id)
run() { "$LOAD" --url "$OP_URL" --token "$TOKEN" "$@" | grep '^RESULT'; }

echo "== $UPDATES updates appended to one document =="
run --mode fill --doc "$DOC" --n "$UPDATES" --concurrency 64
echo "== $DOCS small documents =="
run --mode create --room "$ROOM" --n "$DOCS" --concurrency 32 --ids "$WORK/ids"

restart() {
    stop_outpost
    start_outpost "$DATA" "$OP_PORT"
}
echo "== load of the document with $UPDATES stored updates, after a restart =="
restart
run --mode load --doc "$DOC"
echo "== $DOCS small documents loaded on a fresh server =="
restart
run --mode touch --ids "$WORK/ids" --concurrency 16 --pid "$OP_PID"

echo "== the same document after compaction =="
OUTPOST_DOCS__COMPACT_AFTER_UPDATES=2
export OUTPOST_DOCS__COMPACT_AFTER_UPDATES
restart
run --mode fill --doc "$DOC" --n 1 --concurrency 1 >/dev/null
for _ in $(seq 1 600); do
    pending=$(curl -fsS "$OP_URL/v1/docs/$DOC" -H "Authorization: Bearer $TOKEN" | "${BENCHSTAT[@]}" json-get pending_updates)
    [ "$pending" -lt 2 ] && break
    sleep 0.5
done
log "compacted: $pending updates pending after the snapshot"
restart
run --mode load --doc "$DOC"
stop_outpost
