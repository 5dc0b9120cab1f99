#!/usr/bin/env bash
# Files: upload throughput through tus against the disk's own sequential write + fsync rate,
# the server's memory while a large upload streams, and downloads of a 1 MB file against nginx
# serving the same bytes.
#
#   Disk:     dd if=/dev/zero bs=1M count=SIZE_MB conv=fsync into the work directory (on the
#             same filesystem as the server's data dir): a durable write through the page cache,
#             the ratio's reference. Each round also prints the device's own rate (the same
#             write with oflag=direct), for context: on a VM the page cache can be the slower part.
#   Upload:   one tus upload of SIZE_MB, its bytes streamed by curl in one PATCH from a pipe
#             (never held anywhere); the server writes, hashes and fsyncs them, then adopts the
#             part as a blob and commits the record. Timed from the PATCH to its answer.
#   Memory:   the server's RSS before the upload and its peak while the upload streams
#             (sampled every 100 ms), and VmHWM after.
#   Download: wrk (THREADS threads, CONNECTIONS connections) fetching a 1 MiB file with the
#             bearer token (authentication, the record, the file from disk) against nginx
#             (sendfile, open_file_cache) serving the same bytes; and one 64-connection run of
#             1 MiB ranges of the large file.
#
#   Large:    with BIG_MB set (e.g. 10240), one more upload of that size in one PATCH and its
#             download, timed, with the server's RSS before, its peak during both, and VmHWM.
#
# ROUNDS rounds after a warm-up; sides alternate. Numbers are medians with min-max.
#
#   bash benches/files.sh
#   SIZE_MB=2048 DURATION=8 ROUNDS=3 BIG_MB=0 OP_PORT=18080 NGINX_PORT=18081
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
SIZE_MB=${SIZE_MB:-2048}
BIG_MB=${BIG_MB:-0}
ROUNDS=${ROUNDS:-3}

require_cmd wrk curl python3 nginx dd
require_outpost
bench_init
export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000
log "machine: $(machine_desc)"
log "upload ${SIZE_MB} MiB x ${ROUNDS} rounds (+1 warm-up); downloads ${DURATION}s, ${CONNECTIONS} connections"

# Every round keeps its two files (see disk_round), and BIG_MB needs its own room.
need_mb=$(((ROUNDS + 1) * 2 * SIZE_MB + BIG_MB + 1024))
free_mb=$(df -Pm "$WORK" | awk 'NR == 2 {print $4}')
[ "$free_mb" -ge "$need_mb" ] || die "$WORK has $free_mb MiB free; this run needs $need_mb MiB"
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
TOKEN=$(outpost_member_token "$KEY" bench-files)
AUTH="Authorization: Bearer $TOKEN"
BYTES=$((SIZE_MB * 1024 * 1024))

# seconds to MiB/s
rate() { awk -v b="$1" -v s="$2" 'BEGIN{printf "%.1f", b / 1048576 / s}'; }

# dd's file is kept until the uploads are done, as each upload's blob is kept (a deleted
# asset's bytes wait out the collector's grace period): on a thin-provisioned virtual disk a
# write into blocks just freed can run ten times faster than one into fresh blocks, so removing
# dd's file each round handed whichever side came next the fast blocks.
disk_round() {
    local t0 t1
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$WORK/dd.$1.bin" bs=1M count="$SIZE_MB" conv=fsync status=none
    t1=$(date +%s.%N)
    rate "$BYTES" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')"
}

# The device itself: the same write with O_DIRECT (no page cache), for context.
device_round() {
    local t0 t1
    t0=$(date +%s.%N)
    dd if=/dev/zero of="$WORK/direct.bin" bs=4M count=$((SIZE_MB / 4)) oflag=direct conv=fsync status=none
    t1=$(date +%s.%N)
    rm -f "$WORK/direct.bin"
    rate "$((SIZE_MB / 4 * 4 * 1048576))" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')"
}

# One upload of BYTES (zeros, or with SEED a different first byte so each round is new
# content, not a dedup hit); prints "MiB/s peak_rss_kb idle_rss_kb".
# Begins a tus upload of BYTES; prints its path.
begin_upload() {
    local loc
    loc=$(curl -fsS -D - -o /dev/null -X POST "$OP_URL/v1/uploads" -H "$AUTH" -H 'Tus-Resumable: 1.0.0' \
        -H "Upload-Length: $1" | awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
    [ -n "$loc" ] || die "no upload location"
    echo "$loc"
}

# Sends standard input as the whole of upload PATH, of BYTES, in one PATCH.
send_upload() {
    curl -fsS -o /dev/null -X PATCH "$OP_URL$1" -H "$AUTH" -H 'Tus-Resumable: 1.0.0' -H 'Upload-Offset: 0' \
        -H 'Content-Type: application/offset+octet-stream' -H "Content-Length: $2" -T -
}

# Samples the server's RSS every SECONDS into FILE in the background; sets SAMPLER to its pid.
start_rss_sampler() {
    (
        while :; do
            proc_rss_kb "$OP_PID"
            sleep "$2"
        done
    ) >"$1" 2>/dev/null &
    SAMPLER=$!
}

stop_rss_sampler() {
    kill "$SAMPLER" 2>/dev/null || true
    wait "$SAMPLER" 2>/dev/null || true
}

upload_round() {
    local seed=$1 loc id t0 t1 idle peak=0
    loc=$(begin_upload "$BYTES")
    idle=$(proc_rss_kb "$OP_PID")
    start_rss_sampler "$WORK/rss.$seed" 0.1
    t0=$(date +%s.%N)
    { printf "\\x$(printf %02x $((seed % 256)))"; head -c $((BYTES - 1)) /dev/zero; } | send_upload "$loc" "$BYTES"
    t1=$(date +%s.%N)
    stop_rss_sampler
    peak=$(sort -n "$WORK/rss.$seed" | tail -n 1)
    id=${loc##*/}
    curl -fsS -o /dev/null -X DELETE "$OP_URL/v1/assets/$id" -H "$AUTH"
    echo "$(rate "$BYTES" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')") ${peak:-0} $idle"
}

TSV_UP=$WORK/files_upload.tsv
for r in $(seq 0 "$ROUNDS"); do
    if [ $((r % 2)) -eq 0 ]; then
        d=$(disk_round "$r")
        read -r u peak idle <<<"$(upload_round "$((r + 1))")"
    else
        read -r u peak idle <<<"$(upload_round "$((r + 1))")"
        d=$(disk_round "$r")
    fi
    dev=$(device_round)
    log "round $r: disk ${d} MiB/s, tus upload ${u} MiB/s ($(awk -v a="$u" -v b="$d" 'BEGIN{printf "%.2f", a / b}')x), device (O_DIRECT) ${dev} MiB/s, RSS idle ${idle} kB, peak ${peak} kB"
    if [ "$r" -gt 0 ]; then
        record_row "$TSV_UP" "$r" outpost "$u" "$BYTES" 0 "$peak" 0 "rss idle $idle kB"
        record_row "$TSV_UP" "$r" peer "$d" "$BYTES" 0 0 0 "dd conv=fsync"
    fi
done
report "$TSV_UP" "tus upload of ${SIZE_MB} MiB vs the disk's dd write+fsync" "MiB/s" \
    "files: one PATCH, streamed" "dd-fsync"
rm -f "$WORK"/dd.*.bin

# Downloads: a 1 MiB file, and 1 MiB ranges of a large one.
head -c 1048576 /dev/urandom >"$WORK/one.bin"
ONE=$(curl -fsS -X POST "$OP_URL/v1/assets?name=one.bin" -H "$AUTH" --data-binary @"$WORK/one.bin" |
    "${BENCHSTAT[@]}" json-get id)
start_nginx "$WORK/nginx" "$NGINX_PORT" "$WORK/one.bin" "/v1/assets/$ONE/content"
TSV_DL=$WORK/files_download.tsv
for r in $(seq 0 "$ROUNDS"); do
    for side in $(bench_order "$r"); do
        out=$WORK/wrk-dl-$side-$r.txt
        if [ "$side" = outpost ]; then
            run_measured "$out" "$OP_PID" self -- wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
                -H "$AUTH" "$OP_URL/v1/assets/$ONE/content"
        else
            run_measured "$out" "$NGINX_PID" tree -- wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency \
                -H "$AUTH" "http://127.0.0.1:$NGINX_PORT/v1/assets/$ONE/content"
        fi
        ok=$(wrk_ok_rps "$out")
        log "round $r $side: ${ok} req/s (non-2xx $(wrk_non2xx "$out"), p50/p99 $(wrk_latency_p50_p99 "$out")) cpu ${RUN_CPU_S}s"
        [ "$r" -gt 0 ] && record_row "$TSV_DL" "$r" "$side" "$ok" "$(wrk_requests "$out")" "$RUN_CPU_S" "$RUN_HWM_KB" "$RUN_PSS_KB"
    done
done
report "$TSV_DL" "GET a 1 MiB file (bearer token) vs nginx static file (same bytes)" "req/s" \
    "files: download, c${CONNECTIONS}" "nginx-static"

# 64 readers of 1 MiB ranges of one large file (Outpost only: the figure to watch is that it
# holds and what it costs).
BIG=$(curl -fsS -D - -o /dev/null -X POST "$OP_URL/v1/uploads" -H "$AUTH" -H 'Tus-Resumable: 1.0.0' \
    -H "Upload-Length: $BYTES" | awk 'tolower($1) == "location:" {print $2}' | tr -d '\r')
head -c "$BYTES" /dev/urandom | curl -fsS -o /dev/null -X PATCH "$OP_URL$BIG" -H "$AUTH" -H 'Tus-Resumable: 1.0.0' \
    -H 'Upload-Offset: 0' -H 'Content-Type: application/offset+octet-stream' -H "Content-Length: $BYTES" -T -
cat >"$WORK/ranges.lua" <<EOF
math.randomseed(42)
request = function()
  local first = math.random(0, $((SIZE_MB - 1))) * 1048576
  wrk.headers["Range"] = "bytes=" .. first .. "-" .. (first + 1048575)
  return wrk.format("GET", "/v1/assets/${BIG##*/}/content")
end
EOF
out=$WORK/wrk-ranges.txt
run_measured "$out" "$OP_PID" self -- wrk -t"$THREADS" -c64 -d"${DURATION}s" --latency -s "$WORK/ranges.lua" \
    -H "$AUTH" "$OP_URL"
log "64 range readers (1 MiB each, random offsets in ${SIZE_MB} MiB): $(wrk_ok_rps "$out") req/s," \
    "$(awk -v r="$(wrk_ok_rps "$out")" 'BEGIN{printf "%.0f", r}') MiB/s, non-2xx $(wrk_non2xx "$out")," \
    "p50/p99 $(wrk_latency_p50_p99 "$out"), cpu ${RUN_CPU_S}s, RSS peak ${RUN_HWM_KB} kB"

# One large upload and its download, memory watched throughout.
if [ "$BIG_MB" -gt 0 ]; then
    big=$((BIG_MB * 1024 * 1024))
    loc=$(begin_upload "$big")
    idle=$(proc_rss_kb "$OP_PID")
    start_rss_sampler "$WORK/rss.big" 0.2
    t0=$(date +%s.%N)
    head -c "$big" /dev/zero | send_upload "$loc" "$big"
    t1=$(date +%s.%N)
    curl -fsS -o /dev/null "$OP_URL/v1/assets/${loc##*/}/content" -H "$AUTH"
    t2=$(date +%s.%N)
    stop_rss_sampler
    log "${BIG_MB} MiB: upload $(rate "$big" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')") MiB/s," \
        "download $(rate "$big" "$(awk -v a="$t1" -v b="$t2" 'BEGIN{print b - a}')") MiB/s;" \
        "RSS idle ${idle} kB, peak $(sort -n "$WORK/rss.big" | tail -n 1) kB, VmHWM $(proc_rss_peak_kb "$OP_PID") kB"
fi
