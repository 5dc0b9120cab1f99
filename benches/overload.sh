#!/usr/bin/env bash
# Overload: what a legitimate client sees while another floods the server.
#
#   1. Capacity: wrk creating tasks as fast as CONNECTIONS connections go, with the rate
#      limits lifted (one user, one organization): the server's task-write capacity C.
#   2. Unloaded: the legitimate client (its own organization, from 127.0.0.1) makes PROBES
#      requests at 10 a second, alternately creating a task and listing tasks; p50 and p99.
#   3. Flood, on a server with the default limits: wrk creating tasks as one user with
#      FLOOD_CONNECTIONS connections (its offered rate is reported against C; the user's own
#      budget is 50/s, so nearly all of it must be shed with 429), plus HELD idle connections
#      from 127.0.0.3 (over http.connections_per_addr_max, so the rest are shed with 503).
#      The legitimate client runs again meanwhile; its p99 against the unloaded one is the
#      figure of merit (goal: within 2x). Server RSS peak and the shed counts from /metrics.
#   4. Recovery: the flood stops; the legitimate client's p99 again, and the flooding user
#      is served again.
#   2-4 run twice: as shipped, where a connection answered 429 is read no further until its
#   Retry-After (so wrk's closed loop is slowed to the user's budget), and with that pacing
#   off (http.pace_after_429 = false), where the flood takes all the CPU it can.
#   5. Every kind at once, as shipped: the flooding user creates tasks (FLOOD_CONNECTIONS/4
#      connections), sends Yjs updates to a document and WHIP offers to a room (wrk, 32 and 16
#      connections), its password is guessed (wrk, 64 connections), and realtime sockets
#      connect, authenticate, subscribe and go as fast as REALTIME_LOOPS loops can from
#      127.0.0.4 (python websockets from .venv-peers, made by scripts/test-all.sh), beside the
#      HELD idle connections. The legitimate client's p99 against its unloaded one, as above,
#      with what each flood got answered. ONLY_EVERY=1 runs 1 and 5 alone.
#
#   bash benches/overload.sh
#   DURATION=8 PROBES=200 FLOOD_CONNECTIONS=256 HELD=3000 OP_PORT=18080
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
PROBES=${PROBES:-200}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-256}
HELD=${HELD:-3000}
REALTIME_LOOPS=${REALTIME_LOOPS:-32}
PY_PEERS=${PY_PEERS:-$REPO_DIR/.venv-peers/bin/python}

require_cmd wrk curl python3
require_outpost
[ -x "$PY_PEERS" ] || die "no $PY_PEERS (scripts/test-all.sh makes it)"
bench_init
log "machine: $(machine_desc)"

cat >"$WORK/tasks_post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"title":"flood"}'
EOF

# The legitimate client: PROBES requests at 10/s; prints "p50_ms p99_ms errors".
cat >"$WORK/probe.py" <<'EOF'
import http.client, json, sys, time
host, port, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
conn = http.client.HTTPConnection(host, port, source_address=("127.0.0.1", 0), timeout=30)
took, errors = [], 0
for i in range(n):
    t0 = time.monotonic()
    if i % 2 == 0:
        conn.request("POST", "/v1/tasks", json.dumps({"title": "probe %d" % i}),
                     {"authorization": "Bearer " + token, "content-type": "application/json"})
    else:
        conn.request("GET", "/v1/tasks?limit=5", headers={"authorization": "Bearer " + token})
    r = conn.getresponse()
    r.read()
    took.append(time.monotonic() - t0)
    if r.status not in (200, 201):
        errors += 1
    time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
took.sort()
print("%.2f %.2f %d" % (took[len(took) // 2] * 1e3, took[min(len(took) - 1, len(took) * 99 // 100)] * 1e3, errors))
EOF

# Idle connections from 127.0.0.3, each asking once after all are open (and HOLD seconds);
# prints "served shed" (shed: answered 503, or closed unanswered once its shedding time ran out).
cat >"$WORK/held.py" <<'EOF'
import socket, sys, time
host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
conns = []
for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.3", 0))
    s.connect((host, port))
    conns.append(s)
time.sleep(hold)
served = shed = 0
for s in conns:
    try:
        s.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        head = s.recv(64)
        served += head.startswith(b"HTTP/1.1 200")
        shed += head.startswith(b"HTTP/1.1 503") or head == b""
    except OSError:
        shed += 1
    s.close()
print(served, shed)
EOF

# wrk scripts for the other floods: a body from a file (binary-safe), and a login that fails.
cat >"$WORK/body_post.lua" <<'EOF'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("BODY_TYPE")
wrk.body = f:read("*a")
f:close()
EOF
# One Yjs update (v1): the text "x" in the root text "t", as client 1 at clock 0.
printf '\x01\x01\x01\x00\x04\x01\x01t\x01x\x00' >"$WORK/update.bin"

# Realtime sockets from 127.0.0.4 in LOOPS loops for SECONDS: connect, authenticate,
# subscribe to the organization, close; prints "subscribed refused".
cat >"$WORK/realtime_flood.py" <<'EOF'
import asyncio, json, sys, time
import websockets
url, token, loops, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
done = {"subscribed": 0, "refused": 0}
async def loop(end):
    while time.monotonic() < end:
        try:
            async with websockets.connect(url, open_timeout=5, close_timeout=1,
                                          local_addr=("127.0.0.4", 0)) as ws:
                await ws.send(json.dumps({"op": "auth", "token": token}))
                await ws.send(json.dumps({"op": "subscribe", "topic": "org"}))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if frame.get("op") == "subscribed":
                        done["subscribed"] += 1
                        break
        except Exception:
            done["refused"] += 1
            await asyncio.sleep(0.01)
async def main():
    end = time.monotonic() + seconds
    await asyncio.gather(*(loop(end) for _ in range(loops)))
asyncio.run(main())
print(done["subscribed"], done["refused"])
EOF

# legit_report RSS_PEAK_KB: the legitimate client's figures (U*, L*, R*: unloaded, flooded,
# after), the flooder's next write (AFTER) and the RSS peak; fails if any probe erred or the
# flooder is not served again.
legit_report() {
    printf '%-44s p50 %s ms, p99 %s ms (%s errors)\n' "legitimate client, unloaded" "$U50" "$U99" "$UERR"
    printf '%-44s p50 %s ms, p99 %s ms (%s errors); p99 ratio %s\n' "legitimate client, flooded" "$L50" "$L99" "$LERR" \
        "$(python3 -c "print(f'{$L99 / $U99:.2f}')")"
    printf '%-44s p50 %s ms, p99 %s ms (%s errors); flooder next write %s\n' "legitimate client, after" "$R50" "$R99" "$RERR" "$AFTER"
    printf '%-44s %s MiB\n' "server RSS peak" "$(($1 / 1024))"
    [ "$UERR" = 0 ] && [ "$LERR" = 0 ] && [ "$RERR" = 0 ] && [ "$AFTER" = 201 ]
}

probe() { python3 "$WORK/probe.py" 127.0.0.1 "$OP_PORT" "$1" "$PROBES"; }

# wrk_codes FILE: "answered non2xx" of a wrk run.
wrk_codes() { echo "$(wrk_requests "$1") $(awk '/Non-2xx or 3xx responses:/{print $5}' "$1" | grep . || echo 0)"; }

# 1. Capacity, limits lifted.
export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000
KEY=$(outpost_operator_key "$WORK/cap-data")
start_outpost "$WORK/cap-data" "$OP_PORT"
TOKEN=$(outpost_member_token "$KEY" cap)
wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/tasks_post.lua" -H "Authorization: Bearer $TOKEN" \
    "$OP_URL/v1/tasks" >"$WORK/capacity.txt"
CAPACITY=$(wrk_rps "$WORK/capacity.txt")
log "capacity: $CAPACITY tasks/s ($CONNECTIONS connections, limits lifted)"
stop_outpost
unset OUTPOST_LIMITS__USER_REQUESTS_PER_S OUTPOST_LIMITS__ORG_REQUESTS_PER_S

# 2-4 on a server with the default limits: once as shipped (a connection answered 429 is read
# no further until its Retry-After), once with that pacing off (http.pace_after_429 = false).
flood_round() {
    local name=$1 dir=$WORK/data-$1
    KEY=$(outpost_operator_key "$dir")
    start_outpost "$dir" "$OP_PORT"
    FLOODER=$(outpost_member_token "$KEY" flood)
    LEGIT=$(outpost_member_token "$KEY" legit)
    read -r U50 U99 UERR <<<"$(probe "$LEGIT")"
    log "$name, unloaded: p50 ${U50} ms, p99 ${U99} ms, $UERR errors"

    local flood_s=$((PROBES / 10 + 6))
    python3 "$WORK/held.py" 127.0.0.1 "$OP_PORT" "$HELD" 1 >"$WORK/held-$name.txt" &
    local held_pid=$!
    wrk -t"$THREADS" -c"$FLOOD_CONNECTIONS" -d"${flood_s}s" -s "$WORK/tasks_post.lua" -H "Authorization: Bearer $FLOODER" \
        "$OP_URL/v1/tasks" >"$WORK/flood-$name.txt" &
    local wrk_pid=$!
    sleep 2
    read -r L50 L99 LERR <<<"$(probe "$LEGIT")"
    wait "$wrk_pid" "$held_pid"
    local rss_peak flood_rps flood_all flood_non2xx held_served held_shed shed_metric
    rss_peak=$(proc_rss_peak_kb "$OP_PID")
    flood_rps=$(wrk_rps "$WORK/flood-$name.txt")
    flood_all=$(wrk_requests "$WORK/flood-$name.txt")
    flood_non2xx=$(awk '/Non-2xx or 3xx responses:/{print $5}' "$WORK/flood-$name.txt")
    read -r held_served held_shed <"$WORK/held-$name.txt"
    shed_metric=$(curl -fsS "$OP_URL/metrics" | awk '/^outpost_connections_shed_total /{print $2}')
    sleep 1
    read -r R50 R99 RERR <<<"$(probe "$LEGIT")"
    AFTER=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$OP_URL/v1/tasks" -H "Authorization: Bearer $FLOODER" \
        -H 'Content-Type: application/json' --data '{"title":"after"}')
    stop_outpost

    printf '\n== %s\n' "$name"
    printf '%-44s %s req/s answered = %sx capacity; %s of %s shed with 429 (%s%%)\n' "flood (wrk, $FLOOD_CONNECTIONS connections)" \
        "$flood_rps" "$(python3 -c "print(f'{$flood_rps / $CAPACITY:.2f}')")" "${flood_non2xx:-0}" "$flood_all" \
        "$(python3 -c "print(f'{100 * ${flood_non2xx:-0} / max(1, $flood_all):.2f}')")"
    printf '%-44s %s served, %s shed with 503 (metric %s)\n' "idle connections from one address ($HELD)" \
        "$held_served" "$held_shed" "$shed_metric"
    legit_report "$rss_peak"
}

# 5. Every kind of flood at once, as shipped.
every_kind() {
    local dir=$WORK/data-every
    KEY=$(outpost_operator_key "$dir")
    start_outpost "$dir" "$OP_PORT"
    FLOODER=$(outpost_member_token "$KEY" flood)
    LEGIT=$(outpost_member_token "$KEY" legit)
    local room doc
    room=$(curl -fsS -X POST "$OP_URL/v1/rooms" -H "Authorization: Bearer $FLOODER" -H 'Content-Type: application/json' \
        --data '{"name":"flood"}' | "${BENCHSTAT[@]}" json-get id)
    doc=$(curl -fsS -X POST "$OP_URL/v1/rooms/$room/docs" -H "Authorization: Bearer $FLOODER" \
        -H 'Content-Type: application/json' --data '{"name":"flood"}' | "${BENCHSTAT[@]}" json-get id)
    read -r U50 U99 UERR <<<"$(probe "$LEGIT")"
    log "every kind, unloaded: p50 ${U50} ms, p99 ${U99} ms, $UERR errors"

    local flood_s=$((PROBES / 10 + 6)) pids=()
    python3 "$WORK/held.py" 127.0.0.1 "$OP_PORT" "$HELD" 1 >"$WORK/held-every.txt" &
    pids+=($!)
    wrk -t1 -c$((FLOOD_CONNECTIONS / 4)) -d"${flood_s}s" -s "$WORK/tasks_post.lua" -H "Authorization: Bearer $FLOODER" \
        "$OP_URL/v1/tasks" >"$WORK/every-tasks.txt" &
    pids+=($!)
    BODY_FILE=$WORK/update.bin BODY_TYPE=application/octet-stream wrk -t1 -c32 -d"${flood_s}s" -s "$WORK/body_post.lua" \
        -H "Authorization: Bearer $FLOODER" "$OP_URL/v1/docs/$doc/updates" >"$WORK/every-updates.txt" &
    pids+=($!)
    BODY_FILE=$REPO_DIR/tests/it/fixtures/whip_offer.sdp BODY_TYPE=application/sdp wrk -t1 -c16 -d"${flood_s}s" \
        -s "$WORK/body_post.lua" -H "Authorization: Bearer $FLOODER" "$OP_URL/v1/rooms/$room/whip" >"$WORK/every-whip.txt" &
    pids+=($!)
    printf '{"org":"flood","login":"flood-user","password":"a wrong guess"}' >"$WORK/login.json"
    BODY_FILE=$WORK/login.json BODY_TYPE=application/json wrk -t1 -c64 -d"${flood_s}s" -s "$WORK/body_post.lua" \
        "$OP_URL/v1/auth/login" >"$WORK/every-logins.txt" &
    pids+=($!)
    "$PY_PEERS" "$WORK/realtime_flood.py" "${OP_URL/http:/ws:}/v1/realtime" "$FLOODER" "$REALTIME_LOOPS" "$flood_s" \
        >"$WORK/every-realtime.txt" 2>"$WORK/every-realtime.err" &
    pids+=($!)
    sleep 2
    read -r L50 L99 LERR <<<"$(probe "$LEGIT")"
    wait "${pids[@]}"
    local rss_peak
    rss_peak=$(proc_rss_peak_kb "$OP_PID")
    sleep 1
    read -r R50 R99 RERR <<<"$(probe "$LEGIT")"
    AFTER=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$OP_URL/v1/tasks" -H "Authorization: Bearer $FLOODER" \
        -H 'Content-Type: application/json' --data '{"title":"after"}')
    stop_outpost

    printf '\n== every kind at once (as shipped)\n'
    local kind all refused
    for kind in tasks updates whip logins; do
        read -r all refused <<<"$(wrk_codes "$WORK/every-$kind.txt")"
        printf '%-44s %s answered in %s s, %s refused (%s%%)\n' "flood: $kind" "$all" "$flood_s" "$refused" \
            "$(python3 -c "print(f'{100 * $refused / max(1, $all):.2f}')")"
    done
    read -r all refused <"$WORK/every-realtime.txt"
    printf '%-44s %s subscribed, %s refused or shed\n' "flood: realtime ($REALTIME_LOOPS loops)" "$all" "$refused"
    read -r all refused <"$WORK/held-every.txt"
    printf '%-44s %s served, %s shed with 503\n' "idle connections from one address ($HELD)" "$all" "$refused"
    legit_report "$rss_peak"
}

printf '\n%-44s %s req/s\n' "task-write capacity (limits lifted)" "$CAPACITY"
ok=0
if [ -n "${ONLY_EVERY:-}" ]; then
    every_kind || ok=1
    exit "$ok"
fi
flood_round paced || ok=1
OUTPOST_HTTP__PACE_AFTER_429=false flood_round unpaced || ok=1
every_kind || ok=1
exit "$ok"
