#!/usr/bin/env bash
# Single sign-on end to end against the certified `oidc-provider` (Node, loopback) as the
# organization's identity provider, in one run with password logins:
#   1. N sign-ins, each timed in parts: the start and the callback (Outpost) and the
#      provider's own hops; password logins of the same organization for comparison;
#   2. the provider's keys: fetches over the N sign-ins (0: kept), after a key rotation (1:
#      fetched again at once, no failed sign-in) and at the next sign-in (0).
# ROUNDS rounds, each on a fresh organization; medians reported.
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/sso.sh
#   N=200 ROUNDS=3 …
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18088}
IDP_PORT=${IDP_PORT:-18089}
N=${N:-200}
ROUNDS=${ROUNDS:-3}
PY=${PY:-$REPO_DIR/.venv-peers/bin/python}
require_outpost
[ -x "$PY" ] || die "no Python with requests at $PY (scripts/test-all.sh makes .venv-peers)"
[ -d "$REPO_DIR/tests/peers/node_modules/oidc-provider" ] || (cd "$REPO_DIR/tests/peers" && npm ci --silent)
bench_init

export OUTPOST_LIMITS__LOGIN_PER_ADDR_PER_MIN=100000000 OUTPOST_AUTH__SESSIONS_PER_USER_MAX=100000 \
    OUTPOST_EGRESS__ALLOW_CIDRS='["127.0.0.0/8"]'
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
log "$(machine_desc); $N sign-ins per round"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    slug="bench-sso-$round"
    token=$(outpost_member_token "$KEY" "$slug" owner)
    cfg="{\"port\":$IDP_PORT,\"clients\":[{\"client_id\":\"outpost\",\"client_secret\":\"bench-secret\",\
\"redirect_uris\":[\"$OP_URL/v1/auth/sso/callback\"],\"grant_types\":[\"authorization_code\"],\
\"response_types\":[\"code\"]}],\"account\":{\"sub\":\"grace\",\"email\":\"grace@example.org\",\
\"email_verified\":true,\"groups\":[\"staff\"]},\"watch_stdin\":false}"
    start_node_peer "$WORK/idp-$round.log" ready node "$REPO_DIR/tests/peers/oidc_provider.mjs" "$cfg" </dev/null
    idp_pid=$NODE_PEER_PID
    curl -fsS -o /dev/null -X POST "$OP_URL/v1/sso/providers" -H "Authorization: Bearer $token" \
        -H 'Content-Type: application/json' \
        --data "{\"issuer\":\"http://127.0.0.1:$IDP_PORT\",\"client_id\":\"outpost\",\"client_secret\":\"bench-secret\",\"jit\":true}"
    cpu0=$(proc_cpu_s "$OP_PID")
    "$PY" "$BENCH_DIR/sso_flow.py" --url "$OP_URL" --idp "http://127.0.0.1:$IDP_PORT" --org "$slug" \
        --login "$slug-user" --password 'bench password 123' --n "$N" | tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') rss_kb=$(proc_rss_kb "$OP_PID")" | tee -a "$out"
    stop_pid "$idp_pid" TERM 5 oidc-provider
done

median() { grep -o "$1=[0-9.-]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo
echo "| measure (median of $ROUNDS rounds of $N) | p50 | p99 | against |"
echo "|---|---|---|---|"
echo "| SSO sign-in end to end (start, provider, callback) | $(median sso_total_p50_ms) ms | $(median sso_total_p99_ms) ms | |"
echo "| … the start (Outpost) | $(median sso_start_p50_ms) ms | $(median sso_start_p99_ms) ms | |"
echo "| … the provider's hops (oidc-provider) | $(median sso_provider_p50_ms) ms | $(median sso_provider_p99_ms) ms | |"
echo "| … the callback (Outpost: code exchange, id_token checks, session) | $(median sso_callback_p50_ms) ms | $(median sso_callback_p99_ms) ms | $(median callback_over_password)× a password login |"
echo "| password login (Argon2id) | $(median password_login_p50_ms) ms | $(median password_login_p99_ms) ms | |"
echo "| JWKS fetches over $N sign-ins / after a rotation / the next sign-in | $(median "jwks_fetches_over_${N}_sign_ins") / $(median jwks_fetches_after_rotation) / $(median jwks_fetches_next_sign_in) | | 0 / 1 / 0 = kept, followed at once |"
