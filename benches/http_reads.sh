#!/usr/bin/env bash
# Authenticated read throughput: GET /v1/orgs/{id} on Outpost against nginx
# serving the very same response body as a static file.
#
#   Outpost: one organization is created with curl; wrk (THREADS threads,
#            CONNECTIONS connections, keep-alive) then fetches it with the
#            operator key: authentication, store lookup, JSON encoding.
#   Peer:    nginx, 2 worker processes, access_log off, open_file_cache and
#            sendfile on, serving a file holding exactly the bytes Outpost
#            returned for that GET, at the same URL path, with the same
#            request headers. It is the "no work at all" ceiling of this
#            HTTP stack on this machine.
#
# One warm-up round, then ROUNDS measured rounds; sides alternate which one
# runs first. Reports req/s per side (median, min-max), the per-round ratio
# Outpost/nginx, server CPU seconds per round (nginx: master + workers) and
# peak memory.
#
#   bash benches/http_reads.sh
#   DURATION=8 ROUNDS=5 SIDES=both|outpost|peer OP_PORT=18080 NGINX_PORT=18081
#
# With SIDES=peer (no Outpost binary) nginx serves a representative
# organization JSON document instead.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}

require_cmd wrk curl python3 nginx
side_enabled outpost && require_outpost
bench_init
TSV=$WORK/http_reads.tsv
BODY=$WORK/org.json
KEY=none

log "machine: $(machine_desc)"
log "duration ${DURATION}s x ${ROUNDS} rounds (+1 warm-up), ${CONNECTIONS} connections, ${THREADS} threads, sides: $SIDES"

if [ "${READ_TARGET:-org}" != org ]; then
    # A user's own account with their access token: budgets out of the way of the load.
    export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000
fi

if side_enabled outpost; then
    KEY=$(outpost_operator_key "$WORK/outpost-data")
    start_outpost "$WORK/outpost-data" "$OP_PORT"
    code=$(curl -sS -o "$WORK/created.json" -w '%{http_code}' --max-time 10 \
        -X POST "$OP_URL/v1/orgs" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        --data '{"slug":"bench-read","name":"Bench org read"}')
    [ "$code" = 201 ] || { cat "$WORK/created.json" >&2; die "POST /v1/orgs answered $code, expected 201"; }
    ORG_ID=$("${BENCHSTAT[@]}" json-get id <"$WORK/created.json")
    URL_PATH=/v1/orgs/$ORG_ID
    if [ "${READ_TARGET:-org}" != org ]; then
        curl -fsS -o "$WORK/inv.json" -X POST "$OP_URL/v1/orgs/$ORG_ID/invitations" \
            -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
            --data '{"email":"bench@example.org","role":"member"}'
        INV=$("${BENCHSTAT[@]}" json-get token <"$WORK/inv.json")
        curl -fsS -o /dev/null -X POST "$OP_URL/v1/auth/invitations/accept" -H 'Content-Type: application/json' \
            --data "{\"token\":\"$INV\",\"username\":\"bench\",\"password\":\"bench password 123\"}"
        curl -fsS -o "$WORK/login.json" -X POST "$OP_URL/v1/auth/login" -H 'Content-Type: application/json' \
            --data '{"org":"bench-read","login":"bench","password":"bench password 123"}'
        KEY=$("${BENCHSTAT[@]}" json-get access_token <"$WORK/login.json")
        URL_PATH=/v1/me
        if [ "$READ_TARGET" = history ]; then
            # A page of 20 messages of a channel with 30.
            CH=$(curl -fsS -X POST "$OP_URL/v1/channels" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
                --data '{"kind":"public","name":"bench"}' | "${BENCHSTAT[@]}" json-get id)
            for i in $(seq 1 30); do
                curl -fsS -o /dev/null -X POST "$OP_URL/v1/channels/$CH/messages" -H "Authorization: Bearer $KEY" \
                    -H 'Content-Type: application/json' --data "{\"text\":\"message number $i of the bench channel\"}"
            done
            URL_PATH="/v1/channels/$CH/messages?limit=20"
        fi
    fi
    code=$(curl -sS -o "$BODY" -w '%{http_code}' --max-time 10 \
        -H "Authorization: Bearer $KEY" "$OP_URL$URL_PATH")
    [ "$code" = 200 ] || { cat "$BODY" >&2; die "GET $URL_PATH answered $code, expected 200"; }
    if cmp -s "$WORK/created.json" "$BODY"; then
        log "GET body is byte-identical to the POST response body ($(wc -c <"$BODY") bytes)"
    else
        log "note: GET body differs from the POST response body; nginx serves the GET body"
    fi
else
    ORG_ID=0190b3a2-6f1e-7c3d-9a4b-5e6f7a8b9c0d
    URL_PATH=/v1/orgs/$ORG_ID
    printf '{"id":"%s","slug":"bench-read","name":"Bench org read","settings":{},"created_at":"2025-01-01T00:00:00Z"}' \
        "$ORG_ID" >"$BODY"
    log "outpost side disabled: nginx serves a representative org document"
fi
log "response body ($(wc -c <"$BODY") bytes): $(head -c 300 "$BODY")"

if side_enabled peer; then
    start_nginx "$WORK/nginx" "$NGINX_PORT" "$BODY" "${URL_PATH%%\?*}"
    curl -fsS --max-time 5 "http://127.0.0.1:$NGINX_PORT$URL_PATH" | cmp -s - "$BODY" ||
        die "nginx does not serve the same bytes"
fi

# wrk_round OUT PID MODE URL: same request (path and headers) for both sides
wrk_round() {
    run_measured "$1" "$2" "$3" -- \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency \
        -H "Authorization: Bearer $KEY" "$4"
}

run_side() {
    local side=$1 r=$2 out=$WORK/wrk-reads-$1-$2.txt pid mode url ok req non err note=""
    if [ "$side" = outpost ]; then
        pid=$OP_PID mode=self url=$OP_URL$URL_PATH
    else
        pid=$NGINX_PID mode=tree url=http://127.0.0.1:$NGINX_PORT$URL_PATH
    fi
    wrk_round "$out" "$pid" "$mode" "$url"
    ok=$(wrk_ok_rps "$out"); req=$(wrk_requests "$out")
    non=$(wrk_non2xx "$out"); err=$(wrk_socket_errors "$out")
    log "round $r $side: ${ok} req/s (non-2xx $non, socket errors $err, latency p50/p99 $(wrk_latency_p50_p99 "$out")) cpu ${RUN_CPU_S}s"
    [ "$non" -gt 0 ] && note="non-2xx responses: $non in round $r"
    [ "$err" -gt 0 ] && note="${note:+$note; }socket errors: $err in round $r"
    record_row "$TSV" "$r" "$side" "$ok" "$((req - non))" "$RUN_CPU_S" "$RUN_HWM_KB" "$RUN_PSS_KB" "$note"
}

for ((r = 0; r <= ROUNDS; r++)); do
    for side in $(bench_order "$r"); do
        run_side "$side" "$r"
        sleep 1
    done
done

report "$TSV" "authenticated GET $URL_PATH vs nginx static file (same bytes)" \
    "req/s" "reads: GET ${READ_TARGET:-org}, c${CONNECTIONS}" "nginx-static"
