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
#
#   bash benches/overload.sh
#   DURATION=8 PROBES=200 FLOOD_CONNECTIONS=256 HELD=3000 OP_PORT=18080
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
PROBES=${PROBES:-200}
FLOOD_CONNECTIONS=${FLOOD_CONNECTIONS:-256}
HELD=${HELD:-3000}

require_cmd wrk curl python3
require_outpost
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

# Idle connections from 127.0.0.3, each asking once after all are open; prints "served shed".
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
        shed += head.startswith(b"HTTP/1.1 503")
    except OSError:
        pass
    s.close()
print(served, shed)
EOF

probe() { python3 "$WORK/probe.py" 127.0.0.1 "$OP_PORT" "$1" "$PROBES"; }

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

# 2-4 on a server with the default limits.
KEY=$(outpost_operator_key "$WORK/data")
start_outpost "$WORK/data" "$OP_PORT"
FLOODER=$(outpost_member_token "$KEY" flood)
LEGIT=$(outpost_member_token "$KEY" legit)
read -r U50 U99 UERR <<<"$(probe "$LEGIT")"
log "unloaded: p50 ${U50} ms, p99 ${U99} ms, $UERR errors"

FLOOD_S=$((PROBES / 10 + 6))
python3 "$WORK/held.py" 127.0.0.1 "$OP_PORT" "$HELD" $((FLOOD_S - 4)) >"$WORK/held.txt" &
HELD_PID=$!
wrk -t"$THREADS" -c"$FLOOD_CONNECTIONS" -d"${FLOOD_S}s" -s "$WORK/tasks_post.lua" -H "Authorization: Bearer $FLOODER" \
    "$OP_URL/v1/tasks" >"$WORK/flood.txt" &
WRK_PID=$!
sleep 2
read -r L50 L99 LERR <<<"$(probe "$LEGIT")"
wait "$WRK_PID" "$HELD_PID"
RSS_PEAK=$(proc_rss_peak_kb "$OP_PID")
FLOOD_RPS=$(wrk_rps "$WORK/flood.txt")
FLOOD_ALL=$(wrk_requests "$WORK/flood.txt")
FLOOD_NON2XX=$(awk '/Non-2xx or 3xx responses:/{print $5}' "$WORK/flood.txt")
read -r HELD_SERVED HELD_SHED <"$WORK/held.txt"
SHED_METRIC=$(curl -fsS "$OP_URL/metrics" | awk '/^outpost_connections_shed_total /{print $2}')
log "flood: offered $FLOOD_RPS req/s ($(python3 -c "print(f'{$FLOOD_RPS / $CAPACITY:.1f}')")x capacity), ${FLOOD_NON2XX:-0} of $FLOOD_ALL shed"
log "held connections from one address: $HELD_SERVED served, $HELD_SHED shed (metric: $SHED_METRIC)"
log "loaded: p50 ${L50} ms, p99 ${L99} ms, $LERR errors"

sleep 1
read -r R50 R99 RERR <<<"$(probe "$LEGIT")"
AFTER=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$OP_URL/v1/tasks" -H "Authorization: Bearer $FLOODER" \
    -H 'Content-Type: application/json' --data '{"title":"after"}')
log "after the flood: p50 ${R50} ms, p99 ${R99} ms, $RERR errors; the flooding user's next write: $AFTER"

printf '\n%-44s %s\n' "task-write capacity (limits lifted)" "$CAPACITY req/s"
printf '%-44s %s req/s = %sx capacity; %s of %s shed (%s%%)\n' "flood offered" "$FLOOD_RPS" \
    "$(python3 -c "print(f'{$FLOOD_RPS / $CAPACITY:.1f}')")" "${FLOOD_NON2XX:-0}" "$FLOOD_ALL" \
    "$(python3 -c "print(f'{100 * ${FLOOD_NON2XX:-0} / max(1, $FLOOD_ALL):.2f}')")"
printf '%-44s %s served, %s shed\n' "idle connections from one address ($HELD)" "$HELD_SERVED" "$HELD_SHED"
printf '%-44s p50 %s ms, p99 %s ms (%s errors)\n' "legitimate client, unloaded" "$U50" "$U99" "$UERR"
printf '%-44s p50 %s ms, p99 %s ms (%s errors); p99 ratio %s\n' "legitimate client, flooded" "$L50" "$L99" "$LERR" \
    "$(python3 -c "print(f'{$L99 / $U99:.2f}')")"
printf '%-44s p50 %s ms, p99 %s ms (%s errors)\n' "legitimate client, after" "$R50" "$R99" "$RERR"
printf '%-44s %s MiB\n' "server RSS peak" "$((RSS_PEAK / 1024))"
[ "$UERR" = 0 ] && [ "$LERR" = 0 ] && [ "$RERR" = 0 ] && [ "$AFTER" = 201 ]
