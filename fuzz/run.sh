#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in outpost::fuzzing with libFuzzer (cargo-fuzz on a
# nightly toolchain, both installed here if missing).
#
#   bash fuzz/run.sh                 # every target, 600 s each
#   SECONDS_EACH=60 bash fuzz/run.sh yjs_update access_token
#
# Targets are built optimized without debug assertions (-O), as the server ships: what stops
# them is what would stop a release server. Each target starts from its committed corpus (fuzz/corpus/<target>, copied into
# fuzz/work/<target>, which is not committed) and stops at the first crash, hang (10 s) or
# out-of-memory (2 GiB), leaving the input in fuzz/artifacts/<target>/ and libFuzzer's output in
# fuzz/work/<target>.log. A fixed finding's input
# goes into fuzz/corpus/<target>/, where tests/it/fuzz.rs replays it on every test run.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${SECONDS_EACH:-600}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
export PATH="$PWD/tools/bin:$PATH"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked --root tools cargo-fuzz --version 0.13.1
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^outpost-fuzz$')
fi

# Parsers of other formats may ask for more than they use (a reservation that fails is their
# error path): a request the allocator cannot serve returns null instead of ending the run, while
# memory really used stays bounded by -rss_limit_mb. Yjs bytes are walked before yrs reserves
# anything (src/docs/v1.rs: a count must fit in the bytes left), so the Yjs targets get a tight
# limit on any one allocation: 256 MiB, where a 73-byte update used to make yrs fill 512 MiB.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}allocator_may_return_null=1"

status=0
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "artifacts/$t"
    cp -n corpus/"$t"/* "work/$t/" 2>/dev/null || true
    printf '\n==> %s for %s s\n' "$t" "$seconds"
    log="work/$t.log"
    malloc_limit=1048576
    case "$t" in yjs_*) malloc_limit=256 ;; esac
    if cargo +nightly fuzz run -O "$t" "work/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb="$malloc_limit" -max_len=65536 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb|^Done' "$log" | sed "s/^/$t: /"
    else
        status=1
        echo "$t: FAILED (see fuzz/$log and fuzz/artifacts/$t/)"
        grep -a -E 'panicked at|^SUMMARY|ERROR: libFuzzer|^artifact_prefix|Test unit written' "$log" | head -10
    fi
done
exit "$status"
