#!/usr/bin/env bash
# fsync rate of the disk under DIR: how many "write 4 KiB + fsync" pairs per
# second one writer gets. Every durable commit (Outpost's store, PostgreSQL's
# WAL with synchronous_commit=on) waits for at least one such flush, so this
# bounds single-writer commit rates and explains write-benchmark numbers.
#
#   bash benches/fsync.sh [DIR]
#
# DIR defaults to $BENCH_TMPDIR (/var/tmp). Pass a directory on the same
# filesystem as the data directories under test; a scratch directory is
# created inside it and removed afterwards. Runs for at most 60 s.
#
# Prints:
#   fsync_per_s=N
#   writes=... fsyncs=... runtime_ms=... fsync_lat_us_p50=... fsync_lat_us_p99=...
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_cmd fio python3

base=${1:-$BENCH_TMPDIR}
mkdir -p "$base"
scratch=$(mktemp -d "$base/fsync-probe.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

fs=$(df -PT "$scratch" | awk 'NR==2{print $2 " on " $1}')
log "fsync probe in $scratch ($fs)"

timeout -k 5 60 fio --name=fsync --rw=write --bs=4k --fsync=1 --size=8m \
    --runtime=50 --directory="$scratch" --output-format=json \
    >"$scratch/fio.json" 2>"$scratch/fio.err" ||
    { cat "$scratch/fio.err" >&2; die "fio failed"; }

"${BENCHSTAT[@]}" fio "$scratch/fio.json"
echo "filesystem=$fs"
