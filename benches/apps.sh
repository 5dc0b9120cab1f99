#!/usr/bin/env bash
# Outpost as an OAuth authorization server, in one run with password logins (apps_flow.py):
# password logins, consent answers (each password-checked), code exchanges at the token
# endpoint, and refresh grants there against a login's refreshes at /v1/auth/refresh.
# ROUNDS rounds, each on a fresh organization; medians reported.
#
#   OP_BIN=target/x86_64-unknown-linux-musl/release/outpost bash benches/apps.sh
#   CONC=16 SECONDS_EACH=8 ROUNDS=3 …
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18090}
CONC=${CONC:-16}
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-3}
PY=${PY:-$REPO_DIR/.venv-peers/bin/python}
REDIRECT=http://127.0.0.1:9/callback
require_outpost
[ -x "$PY" ] || die "no Python with requests at $PY (scripts/test-all.sh makes .venv-peers)"
bench_init

export OUTPOST_LIMITS__LOGIN_PER_ADDR_PER_MIN=100000000 OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000000 \
    OUTPOST_LIMITS__ORG_REQUESTS_PER_S=100000000 OUTPOST_AUTH__SESSIONS_PER_USER_MAX=1000000
KEY=$(outpost_operator_key "$WORK/outpost-data")
start_outpost "$WORK/outpost-data" "$OP_PORT"
log "$(machine_desc); $CONC callers, ${SECONDS_EACH}s per measure"

out="$WORK/results.txt"
for round in $(seq 1 "$ROUNDS"); do
    slug="bench-apps-$round"
    token=$(outpost_member_token "$KEY" "$slug" owner)
    made=$(curl -fsS -X POST "$OP_URL/v1/oauth-apps" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        --data "{\"name\":\"bench\",\"redirect_uris\":[\"$REDIRECT\"],\"scopes\":[\"self.manage\"]}")
    cid=$(printf '%s' "$made" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["app"]["client_id"])')
    secret=$(printf '%s' "$made" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["client_secret"])')
    cpu0=$(proc_cpu_s "$OP_PID")
    "$PY" "$BENCH_DIR/apps_flow.py" --url "$OP_URL" --org "$slug" --login "$slug-user" --password 'bench password 123' \
        --client-id "$cid" --client-secret "$secret" --redirect "$REDIRECT" --conc "$CONC" --seconds "$SECONDS_EACH" |
        tee -a "$out"
    cpu1=$(proc_cpu_s "$OP_PID")
    echo "server_cpu_s=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.1f", b-a}') rss_kb=$(proc_rss_kb "$OP_PID")" | tee -a "$out"
done

median() { grep -o "$1=[0-9.-]*" "$out" | cut -d= -f2 | sort -n | awk '{v[NR]=$1} END{print v[int((NR+1)/2)]}'; }
echo
echo "| measure (median of $ROUNDS, $CONC callers) | per second | against |"
echo "|---|---|---|"
echo "| password logins (Argon2id) | $(median password_login_per_s) | |"
echo "| consent answers (password checked, a code) | $(median consent_per_s) | |"
echo "| code exchanges at /oauth/token | $(median code_exchange_per_s) | $(median exchange_over_login)× password logins |"
echo "| refresh grants at /oauth/token | $(median app_refresh_per_s) | $(median app_refresh_over_login_refresh)× /v1/auth/refresh |"
echo "| refreshes at /v1/auth/refresh | $(median login_refresh_per_s) | |"
