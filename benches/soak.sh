#!/usr/bin/env bash
# Soak: an hour of mixed, steady load on one server, sampled each minute (load generator:
# benches/soak.rs, which says what each person does). Beside it, a call: ten people speaking
# (WHIP, Opus-sized audio) heard by two call participants on the realtime socket, for the whole
# time (benches/sfu_load.rs, shape audio10).
#
#   bash benches/soak.sh          # SOAK_SECONDS=3600 USERS=24 ROOMS=4 SAMPLE=60 CALL=1
#   SOAK_SECONDS=300 bash benches/soak.sh        # a five-minute look
#
# Writes to OUT_DIR (default benches/results/soak): samples.csv (one row a minute: server RSS,
# open descriptors and sockets, data directory size, largest follower lag, what the clients did,
# errors), soak.svg (those plotted), call.txt (the call's forwarding figures) and summary.txt.
# The summary gives RSS after warm-up (WARMUP_S, default a sixth of the run) and at the end with
# the slope between, descriptor and socket ranges, store bytes per payload byte written, the
# largest follower lag and the error count. Exits non-zero when a client saw an error.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18090}
SOAK_SECONDS=${SOAK_SECONDS:-3600}
USERS=${USERS:-24}
ROOMS=${ROOMS:-4}
SAMPLE=${SAMPLE:-60}
CALL=${CALL:-1}
WARMUP_S=${WARMUP_S:-$((SOAK_SECONDS / 6))}
OUT_DIR=${OUT_DIR:-$REPO_DIR/benches/results/soak}
require_outpost
require_cmd curl python3
bench_init
log "machine: $(machine_desc)"
mkdir -p "$OUT_DIR"

bench_bin() {
    (cd "$REPO_DIR" && cargo bench --bench "$1" --no-run -q 2>/dev/null)
    (cd "$REPO_DIR" && cargo bench --bench "$1" --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
}
SOAK=$(bench_bin soak)
[ -x "$SOAK" ] || die "no soak load generator built"
if [ "$CALL" = 1 ]; then
    SFU=$(bench_bin sfu_load)
    [ -x "$SFU" ] || die "no call load generator built"
fi

DATA=$WORK/outpost
KEY=$(outpost_operator_key "$DATA")
start_outpost "$DATA" "$OP_PORT"
log "outpost pid $OP_PID on $OP_URL; $SOAK_SECONDS s, $USERS people in $ROOMS rooms, a sample every $SAMPLE s"

CALL_PID=
if [ "$CALL" = 1 ]; then
    "$SFU" --base "$OP_URL" --key "$KEY" --shape audio10 --subs 2 --seconds "$SOAK_SECONDS" --pid "$OP_PID" \
        >"$OUT_DIR/call.txt" 2>"$WORK/call.log" &
    CALL_PID=$!
fi

rc=0
"$SOAK" --url "$OP_URL" --key "$KEY" --pid "$OP_PID" --data "$DATA" --out "$OUT_DIR/samples.csv" \
    --seconds "$SOAK_SECONDS" --sample "$SAMPLE" --users "$USERS" --rooms "$ROOMS" || rc=$?
if [ -n "$CALL_PID" ]; then
    wait "$CALL_PID" || { log "the call's load generator failed (see $WORK/call.log)"; rc=1; }
fi
pid_alive "$OP_PID" || { log "the server is gone"; rc=1; }

python3 "$BENCH_DIR/soak_report.py" "$OUT_DIR/samples.csv" "$OUT_DIR/soak.svg" "$WARMUP_S" | tee "$OUT_DIR/summary.txt"
[ ! -s "$OUT_DIR/call.txt" ] || { echo "call:"; cat "$OUT_DIR/call.txt"; } | tee -a "$OUT_DIR/summary.txt"
exit "$rc"
