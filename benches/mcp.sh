#!/usr/bin/env bash
# MCP tool calls through Outpost against the same server called directly, in one run
# (mcp_calls.py): the reference server `@modelcontextprotocol/server-everything` over
# Streamable HTTP on loopback, its `echo` tool, one caller, alternating blocks. ROUNDS rounds;
# medians reported, with what Outpost adds at p50 and p99 (goal: under 2 ms at p99).
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/mcp.sh
#   CALLS=2000 ROUNDS=5 …
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18091}
MCP_PORT=${MCP_PORT:-18092}
CALLS=${CALLS:-2000}
ROUNDS=${ROUNDS:-5}
PY=${PY:-$REPO_DIR/.venv-peers/bin/python}
EVERYTHING=$REPO_DIR/tests/peers/node_modules/@modelcontextprotocol/server-everything/dist/index.js
require_outpost
[ -x "$PY" ] || die "no Python at $PY (scripts/test-all.sh makes .venv-peers)"
[ -f "$EVERYTHING" ] || die "no server-everything at $EVERYTHING (scripts/test-all.sh installs tests/peers)"
require_port_free "$MCP_PORT"
bench_init

# The server answers with its environment from one of its tools: it gets none of ours.
start_node_peer "$WORK/everything.log" "listening" env -i PATH="$PATH" PORT="$MCP_PORT" node "$EVERYTHING" streamableHttp
MCP_URL="http://127.0.0.1:$MCP_PORT/mcp"

export OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 \
    OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]'
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
log "$(machine_desc); $CALLS calls per path per round, one caller"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    slug="bench-mcp-$round"
    token=$(outpost_member_token "$KEY" "$slug" owner)
    made=$(curl -fsS -X POST "$OP_URL/v1/services" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "{\"name\":\"everything\",\"kind\":\"mcp\",\"base_url\":\"$MCP_URL\",\"mcp\":{}}")
    service=$(printf '%s' "$made" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["service"]["id"])')
    cpu0=$(proc_cpu_s "$OP_PID")
    "$PY" "$BENCH_DIR/mcp_calls.py" --mcp "$MCP_URL" --url "$OP_URL" --token "$token" --service "$service" \
        --calls "$CALLS" | tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "outpost_cpu_us_per_call=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$CALLS" 'BEGIN{printf "%.0f", (b-a)*1e6/(n+50)}') rss_kb=$(proc_rss_kb "$OP_PID")" |
        tee -a "$out"
done

median() { grep -o "$1=[0-9.-]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo
echo "| echo tool call (median of $ROUNDS, $CALLS calls each) | p50 ms | p99 ms |"
echo "|---|---|---|"
echo "| directly (MCP Streamable HTTP) | $(median direct_p50_ms) | $(median direct_p99_ms) |"
echo "| through Outpost (REST → MCP session) | $(median outpost_p50_ms) | $(median outpost_p99_ms) |"
echo "| added by Outpost | $(median added_p50_ms) | $(median added_p99_ms) |"
echo
echo "Outpost CPU per call (µs, median): $(median outpost_cpu_us_per_call)"
