#!/usr/bin/env bash
# Durable write throughput: organizations created per second.
#
#   Outpost: wrk (THREADS threads, CONNECTIONS connections) sending
#            POST /v1/orgs {"slug":"<unique>","name":"Bench org <n>"}
#            with the operator key; every response must be 201 (non-2xx,
#            e.g. 409 slug_taken, are counted and reported).
#   Peer:    pgbench (same clients/threads, prepared statements) against a
#            local PostgreSQL 15 cluster with fsync=on and
#            synchronous_commit=on, one transaction = one INSERT of an
#            organization-shaped row (uuid key, unique slug, name, jsonb
#            settings, timestamptz) with RETURNING, i.e. one durable commit
#            per request on both sides.
#
# One warm-up round, then ROUNDS measured rounds; sides alternate which one
# runs first. Both servers stay up for the whole run (data keeps growing on
# both sides). Per side: median and min-max throughput, per-round ratio
# Outpost/peer, server CPU seconds per round (PostgreSQL: postmaster +
# backends + auxiliary processes) and peak memory. The disk's fsync rate
# (fsync.sh, same filesystem) is printed first for context.
#
#   bash benches/http_writes.sh
#   WRITE_TARGET=messages bash benches/http_writes.sh   # chat messages instead of orgs:
#       POST /v1/channels/{id}/messages with a user's token vs an indexed messages table
#       and then bytes on disk per message on each side: Outpost's store file
#       (message, its id, event, topic and order entries, audit record; per
#       table from `outpost space`) and search index, against PostgreSQL's
#       table and indexes (pg_total_relation_size) and the WAL its inserts
#       wrote (LSN before and after the rounds)
#   WRITE_TARGET=messages PG_SEARCH=1 …   PostgreSQL's messages also indexed for full-text
#       search (a GIN index on to_tsvector('simple', body)), as Outpost's are by its search index
#   DURATION=8 ROUNDS=5 SIDES=both|outpost|peer OP_PORT=18080 PG_PORT=15432
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
PG_PORT=${PG_PORT:-15432}

require_cmd wrk curl python3 fio "$PG_BIN/pgbench" "$PG_BIN/psql"
side_enabled outpost && require_outpost
bench_init
TSV=$WORK/http_writes.tsv

log "machine: $(machine_desc)"
log "duration ${DURATION}s x ${ROUNDS} rounds (+1 warm-up), ${CONNECTIONS} connections, ${THREADS} threads, sides: $SIDES"

echo "== disk fsync rate (same filesystem as the data directories) =="
bash "$BENCH_DIR/fsync.sh" "$WORK"

# ----------------------------------------------------------------- Outpost ----
TARGET=${WRITE_TARGET:-orgs}
if [ "$TARGET" = messages ]; then
    # One user posts from every connection: budgets out of the way of the load.
    export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000
fi

if side_enabled outpost; then
    KEY=$(outpost_operator_key "$WORK/outpost-data")
    start_outpost "$WORK/outpost-data" "$OP_PORT"

    # Each request gets a fresh slug: b<round>t<thread>-<counter>
    # (lowercase letters, digits and '-', starts with a letter, < 63 chars).
    cat >"$WORK/orgs_post.lua" <<'EOF'
-- POST /v1/orgs with a slug unique across threads, requests and rounds.
-- Script argument 1 is a round tag such as "r3".
local threads = 0

function setup(thread)
   threads = threads + 1
   thread:set("tid", threads)
end

function init(args)
   tag = args[1] or "r0"
   counter = 0
end

function request()
   counter = counter + 1
   local body = string.format('{"slug":"b%st%d-%d","name":"Bench org %d"}',
                              tag, tid, counter, counter)
   return wrk.format("POST", nil, nil, body)
end
EOF

    # sanity check: one request by hand must answer 201
    code=$(curl -sS -o "$WORK/probe.json" -w '%{http_code}' --max-time 10 \
        -X POST "$OP_URL/v1/orgs" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        --data '{"slug":"bench-probe","name":"Bench org probe"}')
    [ "$code" = 201 ] || { cat "$WORK/probe.json" >&2; die "POST /v1/orgs answered $code, expected 201"; }
    POST_URL=$OP_URL/v1/orgs
    LUA=$WORK/orgs_post.lua
    if [ "$TARGET" = messages ]; then
        ORG_ID=$("${BENCHSTAT[@]}" json-get id <"$WORK/probe.json")
        INV=$(curl -fsS -X POST "$OP_URL/v1/orgs/$ORG_ID/invitations" -H "Authorization: Bearer $KEY" \
            -H 'Content-Type: application/json' --data '{"email":"poster@example.org","role":"member"}' | "${BENCHSTAT[@]}" json-get token)
        curl -fsS -o /dev/null -X POST "$OP_URL/v1/auth/invitations/accept" -H 'Content-Type: application/json' \
            --data "{\"token\":\"$INV\",\"username\":\"poster\",\"password\":\"bench password 123\"}"
        KEY=$(curl -fsS -X POST "$OP_URL/v1/auth/login" -H 'Content-Type: application/json' \
            --data '{"org":"bench-probe","login":"poster","password":"bench password 123"}' | "${BENCHSTAT[@]}" json-get access_token)
        CH=$(curl -fsS -X POST "$OP_URL/v1/channels" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
            --data '{"kind":"public","name":"bench"}' | "${BENCHSTAT[@]}" json-get id)
        POST_URL=$OP_URL/v1/channels/$CH/messages
        LUA=$WORK/messages_post.lua
        printf '%s\n' '-- POST a chat message; the text varies per request.' 'counter = 0' 'function request()' \
            '   counter = counter + 1' \
            '   return wrk.format("POST", nil, nil, string.format([[{"text":"bench message %d with a few words of text"}]], counter))' \
            'end' >"$LUA"
        code=$(curl -sS -o "$WORK/probe-msg.json" -w '%{http_code}' -X POST "$POST_URL" -H "Authorization: Bearer $KEY" \
            -H 'Content-Type: application/json' --data '{"text":"probe"}')
        [ "$code" = 201 ] || { cat "$WORK/probe-msg.json" >&2; die "POST a message answered $code, expected 201"; }
    fi
fi

run_outpost() {
    local r=$1 out=$WORK/wrk-writes-$1.txt rps ok req non err
    run_measured "$out" "$OP_PID" self -- \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s --latency \
        -s "$LUA" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        "$POST_URL" -- "r$r"
    rps=$(wrk_rps "$out"); ok=$(wrk_ok_rps "$out"); req=$(wrk_requests "$out")
    non=$(wrk_non2xx "$out"); err=$(wrk_socket_errors "$out")
    log "round $r outpost: ${ok} created/s (all responses ${rps}/s, non-2xx $non, socket errors $err, latency p50/p99 $(wrk_latency_p50_p99 "$out")) cpu ${RUN_CPU_S}s ($(awk -v c="$RUN_CPU_S" -v n="$req" 'BEGIN{printf "%.0f", n ? c * 1e6 / n : 0}') µs a request), page faults ${RUN_MINFLT} ($(awk -v f="$RUN_MINFLT" -v n="$req" 'BEGIN{printf "%.2f", n ? f / n : 0}') a request)"
    local note=""
    [ "$non" -gt 0 ] && note="non-2xx responses: $non in round $r"
    [ "$err" -gt 0 ] && note="${note:+$note; }socket errors: $err in round $r"
    record_row "$TSV" "$r" outpost "$ok" "$((req - non))" "$RUN_CPU_S" "$RUN_HWM_KB" "$RUN_PSS_KB" "$note"
}

# -------------------------------------------------------------- PostgreSQL ----
if side_enabled peer; then
    start_postgres "$WORK/pg" "$PG_PORT"
    pg_sql "CREATE TABLE orgs (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                slug text NOT NULL UNIQUE,
                name text NOT NULL,
                settings jsonb NOT NULL DEFAULT '{}'::jsonb,
                created_at timestamptz NOT NULL DEFAULT now()
            );"
    # Slug from round, client id and a 50-bit random; ON CONFLICT mirrors
    # Outpost's 409 slug_taken instead of aborting the client.
    cat >"$WORK/orgs_insert.sql" <<'EOF'
\set r random(0, 999999999999999)
INSERT INTO orgs (slug, name, settings)
VALUES ('b' || :round::text || 'c' || :client_id::text || '-' || :r::text,
        'Bench org ' || :r::text,
        '{}'::jsonb)
ON CONFLICT (slug) DO NOTHING
RETURNING id, slug, name, settings, created_at;
EOF
    # The same shape for messages: an index on channel and time, as history reads need.
    pg_sql "CREATE TABLE messages (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                channel_id uuid NOT NULL,
                author_id uuid NOT NULL,
                body text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now()
            );
            CREATE INDEX messages_channel_time ON messages (channel_id, created_at);"
    if [ "${PG_SEARCH:-0}" = 1 ]; then
        # What Outpost's search index gives its messages: words found in the text.
        pg_sql "CREATE INDEX messages_text_search ON messages USING gin (to_tsvector('simple', body));"
        log "postgres: messages also indexed for full-text search (GIN on to_tsvector('simple', body))"
    fi
    printf '%s\n' '\set r random(0, 999999999999999)' \
        'INSERT INTO messages (channel_id, author_id, body)' \
        "VALUES ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002'," \
        "        'bench message ' || :r::text || ' with a few words of text')" \
        'RETURNING id, created_at;' >"$WORK/messages_insert.sql"
    log "postgres: synchronous_commit=$(pg_sql 'SHOW synchronous_commit') fsync=$(pg_sql 'SHOW fsync') wal_sync_method=$(pg_sql 'SHOW wal_sync_method')"
    PG_LSN0=$(pg_sql 'SELECT pg_current_wal_lsn()')
fi

run_peer() {
    local r=$1 out=$WORK/pgbench-$1.txt tps n failed
    run_measured "$out" "$PG_PID" tree -- \
        "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n \
        -c "$CONNECTIONS" -j "$THREADS" -T "$DURATION" -M prepared \
        -D round="$r" -f "$WORK/${TARGET}_insert.sql" postgres
    tps=$(awk '/^tps = /{print $3; exit}' "$out")
    n=$(awk -F': ' '/^number of transactions actually processed/{print $2; exit}' "$out" | awk '{print $1}')
    failed=$(awk -F': ' '/^number of failed transactions/{print $2; exit}' "$out" | awk '{print $1}')
    [ -n "$tps" ] || { cat "$out" >&2; die "could not parse pgbench output"; }
    log "round $r pgbench: ${tps} inserts/s ($n transactions, failed ${failed:-0}, latency avg $(awk '/^latency average/{print $4, $5; exit}' "$out")) cpu ${RUN_CPU_S}s"
    local note=""
    [ "${failed:-0}" != 0 ] && note="failed transactions: $failed in round $r"
    record_row "$TSV" "$r" peer "$tps" "${n:-0}" "$RUN_CPU_S" "$RUN_HWM_KB" "$RUN_PSS_KB" "$note"
}

# ------------------------------------------------------------------ rounds ----
for ((r = 0; r <= ROUNDS; r++)); do
    for side in $(bench_order "$r"); do
        if [ "$side" = outpost ]; then run_outpost "$r"; else run_peer "$r"; fi
        sleep 1
    done
done

if side_enabled peer; then
    log "postgres: $(pg_sql 'SELECT count(*) FROM orgs') rows in orgs, $(pg_sql "SELECT pg_size_pretty(pg_database_size('postgres'))") database"
fi

# Bytes on disk per message, both sides holding what they wrote in the rounds above.
if [ "$TARGET" = messages ]; then
    echo "== bytes on disk per message =="
    if side_enabled outpost; then
        "$OP_BIN" space --json --data "$WORK/outpost-data" >"$WORK/space.json" ||
            die "outpost space failed"
        python3 - "$WORK/space.json" "$(du -sb "$WORK/outpost-data/search" | cut -f1)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); search = int(sys.argv[2])
t = {x["table"]: x for x in r["tables"]}
n = t["messages"]["entries"]
pages = lambda x: x["pages"] * 4096
log = sum(pages(t[k]) for k in ("events", "event_topics", "log_order") if k in t)
tables = sum(pages(x) for x in r["tables"])
print(f"outpost: {n} messages; the store's tables {tables} bytes ({tables / n:.0f}/message; the file "
      f"{r['file_bytes']} long while the server runs, redb growing it ahead of use), "
      f"search index {search} ({search / n:.0f}/message)")
for x in r["tables"]:
    if x["entries"] >= n // 2:
        print(f"  {x['table']:<14} {pages(x) / n:6.0f} bytes/message in pages "
              f"({x['stored_bytes'] / x['entries']:.0f} of it keys and values)")
print(f"  the event log's share (events, topic index, commit order): {log / n:.0f} bytes/message, "
      f"kept for events.retention_age_s / retention_count_max")
print(f"outpost_bytes_per_message={(tables + search) / n:.0f} without_event_log={(tables - log + search) / n:.0f}")
PY
    fi
    if side_enabled peer; then
        pg_sql "CHECKPOINT" >/dev/null
        read -r n rel idx wal <<<"$(pg_sql "SELECT count(*), pg_relation_size('messages'), pg_indexes_size('messages'),
            pg_wal_lsn_diff(pg_current_wal_lsn(), '$PG_LSN0')::bigint FROM messages" | tr '|' ' ')"
        echo "postgres: $n messages; table $rel bytes ($((rel / n))/message), indexes $idx ($((idx / n))/message), WAL written $wal ($((wal / n))/message)"
        echo "postgres_bytes_per_message=$(((rel + idx) / n)) with_wal=$(((rel + idx + wal) / n))"
    fi
fi

report "$TSV" "$TARGET create throughput (POST vs INSERT, durable commits)" \
    "created/s" "writes: $TARGET, c${CONNECTIONS}" "pgbench+pg15$([ "${PG_SEARCH:-0}" = 1 ] && echo "+gin")"
