#!/usr/bin/env bash
# Start-up cost and footprint of the Outpost binary.
#
#   cold start:  time from exec of `outpost serve` with a fresh, empty data
#                directory until GET /health/ready first answers 200 (polled
#                every ~2 ms over a raw HTTP/1.1 connection); SAMPLES runs,
#                each with a new data directory. "Cold" means a new process
#                and a new store, not an empty page cache.
#   idle RSS:    VmRSS of the ready server 0.5 s after ready, no traffic.
#   binary size: ls -l and `file` of the static musl build
#                (target/x86_64-unknown-linux-musl/release/outpost) when it
#                exists, and of $OP_BIN.
#
#   bash benches/startup.sh
#   SAMPLES=5 OP_PORT=18080 OP_BIN=target/release/outpost
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SAMPLES=${SAMPLES:-5}
OP_PORT=${OP_PORT:-18080}
MUSL_BIN=$REPO_DIR/target/x86_64-unknown-linux-musl/release/outpost

require_cmd python3 file
bench_init
log "machine: $(machine_desc)"

echo "== binary =="
for bin in "$MUSL_BIN" "$OP_BIN"; do
    if [ -e "$bin" ]; then
        ls -l "$bin"
        size=$(stat -c %s "$bin")
        awk -v s="$size" 'BEGIN{printf "  size: %.2f MiB (%d bytes)\n", s/1048576, s}'
        echo "  file: $(file -b "$bin")"
    else
        echo "$bin: not built"
    fi
done
echo

require_outpost
require_port_free "$OP_PORT"

echo "== cold start to ready ($SAMPLES samples, fresh data dir each) =="
: >"$WORK/startup.txt"
for ((i = 1; i <= SAMPLES; i++)); do
    data=$WORK/data-$i
    mkdir -p -m 700 "$data"
    # benchstat startup execs the server, waits for ready, reads VmRSS and
    # stops the server by its PID (SIGTERM, bounded wait)
    sample=$(timeout -k 5 120 "${BENCHSTAT[@]}" startup "$OP_BIN" "$data" "$OP_PORT" \
        --timeout 60 --settle 0.5 --log "$WORK/outpost-$i.log") ||
        { tail -n 20 "$WORK/outpost-$i.log" >&2 || true; die "sample $i failed"; }
    read -r ms rss <<<"$sample"
    printf 'sample %d: ready after %s ms, idle VmRSS %s kB\n' "$i" "$ms" "$rss"
    echo "$ms $rss" >>"$WORK/startup.txt"
    port_free "$OP_PORT" || sleep 0.5
done

python3 - "$WORK/startup.txt" <<'EOF'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
ms = [r[0] for r in rows]
rss = [r[1] / 1024 for r in rows]
print()
print(f"cold start to ready: median {statistics.median(ms):.1f} ms  min-max {min(ms):.1f}-{max(ms):.1f} ms")
print(f"idle VmRSS:          median {statistics.median(rss):.1f} MiB  min-max {min(rss):.1f}-{max(rss):.1f} MiB")
EOF
