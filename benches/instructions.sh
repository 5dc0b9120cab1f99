#!/usr/bin/env bash
# Instructions per request: what one authenticated read costs Outpost in user-space
# instructions, counted by valgrind's callgrind, so that two builds can be compared on a noisy
# machine where req/s and CPU seconds move by ±15% from one round to the next.
#
#   Each binary (OP_BIN, and BASE_BIN when set) is started under callgrind with
#   instrumentation off; a member of a fresh organization is signed in (and, for `history`,
#   a channel gets 30 messages); after one request to warm the caches, instrumentation goes on
#   for SECONDS of wrk (1 thread, 8 connections) and off again. Instructions counted over
#   answers counted: every thread of the server, the kernel not included. A round fails if
#   any answer is not a 200.
#
#   TARGETS: `me` (GET /v1/me), `history` (GET a page of 20 messages), `org` (GET
#   /v1/orgs/{id} with the operator key). Writes are left out: the index commit and the
#   writer's group commit cost per unit of time, not per request, and under callgrind far
#   fewer requests share them.
#
#   OP_BIN=target/release/outpost BASE_BIN=/tmp/outpost-before bash benches/instructions.sh
#   TARGETS="me history" SECONDS_PER_RUN=6
#
# Valgrind does not use the CPU's SHA extensions, so SHA-256 (about 17,000 instructions per
# request here: the verified-token cache's key) weighs more than it does natively.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

TARGETS=${TARGETS:-me history}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
OP_PORT=${OP_PORT:-18090}

# One user's requests: budgets out of the way of the load.
export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000

require_cmd valgrind callgrind_control wrk curl python3
require_outpost
bench_init
log "machine: $(machine_desc)"

# count BIN TARGET: sets COUNT_N (answers) and COUNT_IR (instructions)
count() {
    local target=$2 dir key token path ch out
    local OP_BIN=$1
    dir=$WORK/data-$RANDOM
    key=$(outpost_operator_key "$dir")
    OP_WRAP="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$dir.cg.%p" \
        start_outpost "$dir" "$OP_PORT"
    case $target in
    org)
        token=$key
        path=/v1/orgs/$(curl -fsS -X POST "$OP_URL/v1/orgs" -H "Authorization: Bearer $key" \
            -H 'Content-Type: application/json' --data '{"slug":"bench-i","name":"Bench"}' |
            "${BENCHSTAT[@]}" json-get id)
        ;;
    me)
        token=$(outpost_member_token "$key" bench-i)
        path=/v1/me
        ;;
    history)
        token=$(outpost_member_token "$key" bench-i)
        ch=$(curl -fsS -X POST "$OP_URL/v1/channels" -H "Authorization: Bearer $token" \
            -H 'Content-Type: application/json' --data '{"kind":"public","name":"bench"}' |
            "${BENCHSTAT[@]}" json-get id)
        for i in $(seq 1 30); do
            curl -fsS -o /dev/null -X POST "$OP_URL/v1/channels/$ch/messages" -H "Authorization: Bearer $token" \
                -H 'Content-Type: application/json' --data "{\"text\":\"message number $i of the bench channel\"}"
        done
        path="/v1/channels/$ch/messages?limit=20"
        ;;
    *) die "unknown target $target (me, history, org)" ;;
    esac
    curl -fsS -o /dev/null -H "Authorization: Bearer $token" "$OP_URL$path"
    callgrind_control -i on "$OP_PID" >/dev/null 2>&1
    out=$(wrk -t1 -c8 -d"${SECONDS_PER_RUN}s" -H "Authorization: Bearer $token" "$OP_URL$path")
    callgrind_control -i off "$OP_PID" >/dev/null 2>&1
    callgrind_control -d "$OP_PID" >/dev/null 2>&1
    stop_outpost
    if printf '%s\n' "$out" | grep -q 'Non-2xx'; then
        printf '%s\n' "$out" >&2
        die "$target: answers other than 200"
    fi
    COUNT_N=$(wrk_requests "$out")
    COUNT_IR=$(cat "$dir".cg.* | awk '/^totals:/ {s += $2} END {printf "%d", s}')
}

printf '%-8s %-40s %9s %15s %12s\n' target binary requests instructions per_request
for target in $TARGETS; do
    base_per=
    for bin in ${BASE_BIN:-} "$OP_BIN"; do
        count "$bin" "$target"
        per=$((COUNT_IR / COUNT_N))
        printf '%-8s %-40s %9s %15s %12s\n' "$target" "$bin" "$COUNT_N" "$COUNT_IR" "$per"
        if [ -n "${BASE_BIN:-}" ] && [ "$bin" = "$BASE_BIN" ]; then
            base_per=$per
        elif [ -n "$base_per" ]; then
            log "$target: $(python3 -c "print(f'{$per / $base_per:.3f}')") of the base's instructions per request"
        fi
    done
done
