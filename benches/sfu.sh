#!/usr/bin/env bash
# The media relay's forwarding capacity (load generator: benches/sfu_load.rs), for each N in
# SUBS and each shape in SHAPES: `video`, one publisher (WHIP) sending VIDEO_KBPS of video plus
# audio to N players (WHEP); `audio10`, ten audio publishers (WHIP) heard by N call
# participants (the realtime socket). Each client is its own WebRTC connection. Reports forwarded packets per second, per busy
# server core and per player's share of a core, added delay p50/p99, join time p50/p99, loss
# and server RSS.
#
#   bash benches/sfu.sh          # SUBS=10,25,50,100 VIDEO_KBPS=1500 DURATION=8
#
# The load generator runs on the same machine and takes CPU of its own (about as much as the
# server per packet: it encrypts and decrypts too); watch cpu_cores against nproc.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
SUBS=${SUBS:-10,25,50,100}
SHAPES=${SHAPES:-video audio10}
VIDEO_KBPS=${VIDEO_KBPS:-1500}
require_outpost
require_cmd curl
bench_init

(cd "$REPO_DIR" && cargo bench --bench sfu_load --no-run -q 2>/dev/null)
LOAD=$(cd "$REPO_DIR" && cargo bench --bench sfu_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
[ -x "$LOAD" ] || die "no load generator built"

echo "== Outpost media relay: 1 publisher (${VIDEO_KBPS} kbit/s video + audio) -> N players =="
echo "machine: $(machine_desc)"
export OUTPOST_MEDIA__RTC_LISTEN="127.0.0.1:0" OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000 OUTPOST_MEDIA__ROOM_SESSIONS_MAX=2000 \
    OUTPOST_REALTIME__CONNECTIONS_PER_USER_MAX=10000
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
for shape in $SHAPES; do
    "$LOAD" --base "$OP_URL" --key "$KEY" --shape "$shape" --subs "$SUBS" --seconds "${DURATION:-8}" \
        --video-kbps "$VIDEO_KBPS" --pid "$OP_PID" | grep '^RESULT' || true
done
stop_outpost
