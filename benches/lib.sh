# shellcheck shell=bash
# Shared helpers for the load benchmarks in this directory. Source it:
#     . "$(dirname "$0")/lib.sh"
#
# Outpost:   outpost_operator_key, outpost_member_token (an org and a logged-in member)
# Servers:   start_outpost / stop_outpost, start_postgres / stop_postgres,
#            start_nginx / stop_nginx. Each start_* exports the server PID
#            (OP_PID, PG_PID, NGINX_PID); each stop_* signals exactly
#            that PID and waits (bounded) for it to exit.
# Node:      install_node_peers (the node peers' packages), start_node_peer
# /proc:     proc_cpu_s, proc_tree_cpu_s, proc_rss_peak_kb, proc_rss_kb,
#            proc_tree_rss_peak_kb
# wrk:       wrk_rps, wrk_requests, wrk_elapsed_s, wrk_non2xx,
#            wrk_socket_errors, wrk_latency_p50_p99
# Rounds:    run_measured (CPU/memory accounting around one load run),
#            bench_order (alternating side order), record_row, report
#
# Everything listens on 127.0.0.1 only (sfu.sh puts the servers in a network namespace of
# its own, see there). bench_init installs an EXIT trap that
# stops whatever was started and removes the work directory (KEEP_WORK=1 keeps it).
#
# Environment (all optional):
#   OP_BIN    server binary (default target/release/outpost, relative to the repo root)
#   PG_BIN         PostgreSQL server binaries (default /usr/lib/postgresql/15/bin)
#   BENCH_TMPDIR   where work directories go (default /var/tmp; keep it on a real
#                  disk, not tmpfs, so fsync costs what it costs in production)
#   DURATION       seconds per measured run (default 8)
#   ROUNDS         measured rounds after the warm-up round (default 5)
#   CONNECTIONS    wrk connections / pgbench clients (default 64)
#   THREADS        wrk / pgbench threads (default 2)
#   SIDES          "both" (default), "outpost" or "peer"
#   MEMWATCH       1 (default) samples the server's process-tree PSS during each run; 0 disables
#   KEEP_WORK      1 keeps the work directory (logs, raw wrk/pgbench output)

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")

OP_BIN=${OP_BIN:-target/release/outpost}
case "$OP_BIN" in
    /*) ;;
    *) OP_BIN="$REPO_DIR/$OP_BIN" ;;
esac
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_TMPDIR=${BENCH_TMPDIR:-/var/tmp}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
SIDES=${SIDES:-both}
MEMWATCH=${MEMWATCH:-1}
KEEP_WORK=${KEEP_WORK:-0}
CLK_TCK=$(getconf CLK_TCK)
BENCHSTAT=(python3 "$BENCH_DIR/benchstat.py")

export OP_BIN PG_BIN BENCH_TMPDIR DURATION ROUNDS CONNECTIONS THREADS SIDES

# ------------------------------------------------------------------ misc ----

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

require_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] ||
            die "'$c' not found (run: bash benches/setup.sh)"
    done
}

side_enabled() { [ "$SIDES" = both ] || [ "$SIDES" = "$1" ]; }

require_outpost() {
    [ -x "$OP_BIN" ] ||
        die "$OP_BIN not found; build it (cargo build --release) or set OP_BIN (load benches: SIDES=peer runs the peer side alone)"
}

machine_desc() {
    local cpu mem
    cpu=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
    mem=$(awk '/^MemTotal:/{printf "%.0f", $2/1048576}' /proc/meminfo)
    printf '%s vCPU %s, %s GiB RAM, Linux %s' "$(nproc)" "${cpu:-unknown CPU}" "$mem" "$(uname -r)"
}

# port_free PORT: true when nothing accepts connections on 127.0.0.1:PORT
port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

require_port_free() {
    port_free "$1" || die "127.0.0.1:$1 is already in use (set the *_PORT variable)"
}

# pid_alive PID: running and not a zombie
pid_alive() {
    local pid=$1 st
    kill -0 "$pid" 2>/dev/null || return 1
    st=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null | awk '{print $1}')
    [ -n "$st" ] && [ "$st" != Z ]
}

# wait_pid_exit PID TIMEOUT_S: poll until PID is gone; false on timeout
wait_pid_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while pid_alive "$pid"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || true   # reap if it was our child
    return 0
}

# stop_pid PID SIGNAL TIMEOUT_S NAME: signal one PID, wait, SIGKILL on timeout
stop_pid() {
    local pid=$1 sig=$2 timeout=$3 name=$4
    pid_alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill "-$sig" "$pid" 2>/dev/null || true
    if ! wait_pid_exit "$pid" "$timeout"; then
        log "$name (pid $pid) did not stop within ${timeout}s after SIG$sig; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_exit "$pid" 10 || log "$name (pid $pid) still present"
    fi
}

# wait_http_200 URL TIMEOUT_S [PID]: poll until URL answers 200; false on
# timeout or when PID (if given) has exited
wait_http_200() {
    local url=$1 deadline=$((SECONDS + $2)) pid=${3:-}
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ -n "$pid" ] && ! pid_alive "$pid"; then
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# --------------------------------------------------------- work directory ----

# Functions bench_cleanup runs first, for what a bench starts beyond the servers above.
BENCH_CLEANUP_HOOKS=()

bench_init() {
    mkdir -p "$BENCH_TMPDIR"
    WORK=$(mktemp -d "$BENCH_TMPDIR/outpost-bench.XXXXXX")
    # the PostgreSQL cluster runs as user postgres and nginx workers as
    # www-data: they must be able to traverse the work directory
    chmod 755 "$WORK"
    export WORK
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    log "work directory: $WORK"
}

bench_cleanup() {
    local rc=$? peer hook
    trap - EXIT
    for hook in "${BENCH_CLEANUP_HOOKS[@]}"; do "$hook" || true; done
    [ -n "${MEMWATCH_PID:-}" ] && stop_pid "$MEMWATCH_PID" TERM 5 memwatch
    for peer in "${NODE_PEER_PIDS[@]}"; do stop_pid "$peer" TERM 10 "node peer"; done
    [ -n "${OP_PID:-}" ] && stop_outpost
    [ -n "${NGINX_PID:-}" ] && stop_nginx
    [ -n "${PG_PID:-}" ] && stop_postgres
    if [ -n "${WORK:-}" ] && [ -d "$WORK" ]; then
        if [ "$KEEP_WORK" = 1 ] || [ "$rc" -ne 0 ]; then
            log "kept work directory $WORK (logs and raw output)"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# ------------------------------------------------------------------ /proc ----

# proc_cpu_s PID: utime+stime of PID in seconds
proc_cpu_s() {
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    # fields after "pid (comm) ": state=1 ... utime=12 stime=13
    awk -v t="$CLK_TCK" '{printf "%.2f\n", ($12 + $13) / t}' <<<"${stat##*) }"
}

# proc_tree_cpu_s PID: utime+stime of PID, of children it has reaped
# (cutime+cstime) and of its live descendants. For multi-process servers
# (PostgreSQL backends, nginx workers).
proc_tree_cpu_s() { "${BENCHSTAT[@]}" tree-cpu "$1"; }

# proc_minflt PID: minor page faults of PID so far (the kernel mapping a page on first touch)
proc_minflt() {
    local stat
    stat=$(<"/proc/$1/stat") || return 1
    # fields after "pid (comm) ": state=1 ... minflt=8
    awk '{print $8}' <<<"${stat##*) }"
}

# proc_rss_peak_kb PID: VmHWM (peak resident set since start) in kB
proc_rss_peak_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }

# proc_rss_kb PID: VmRSS in kB
proc_rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }

# proc_tree_rss_peak_kb PID: sum of VmHWM over PID and its live descendants
proc_tree_rss_peak_kb() { "${BENCHSTAT[@]}" tree-hwm "$1"; }

# -------------------------------------------------------------------- wrk ----
# All take wrk's output as a file name (or as text when no such file exists).

_wrk_text() { if [ -f "$1" ]; then cat -- "$1"; else printf '%s\n' "$1"; fi; }

# wrk_rps OUTPUT: the "Requests/sec:" figure (all responses, any status)
wrk_rps() { _wrk_text "$1" | awk '/^Requests\/sec:/{print $2; exit}'; }

# wrk_requests OUTPUT: total responses ("N requests in 8.00s")
wrk_requests() { _wrk_text "$1" | awk '/ requests in /{print $1; exit}'; }

# wrk_elapsed_s OUTPUT: measured duration in seconds
wrk_elapsed_s() {
    _wrk_text "$1" | awk '/ requests in /{
        d = $4; sub(/,$/, "", d)
        if (d ~ /ms$/) { sub(/ms$/, "", d); d /= 1000 }
        else if (d ~ /us$/) { sub(/us$/, "", d); d /= 1000000 }
        else if (d ~ /m$/) { sub(/m$/, "", d); d *= 60 }
        else if (d ~ /h$/) { sub(/h$/, "", d); d *= 3600 }
        else { sub(/s$/, "", d) }
        print d + 0; exit }'
}

# wrk_non2xx OUTPUT: responses with a status outside 2xx/3xx
wrk_non2xx() {
    _wrk_text "$1" | awk '/^ *Non-2xx or 3xx responses:/{n = $NF} END{print n + 0}'
}

# wrk_socket_errors OUTPUT: connect+read+write+timeout errors
wrk_socket_errors() {
    _wrk_text "$1" | awk '/^ *Socket errors:/{gsub(/,/, ""); n = $4 + $6 + $8 + $10} END{print n + 0}'
}

# wrk_ok_rps OUTPUT: 2xx/3xx responses per second
wrk_ok_rps() {
    local req non el
    req=$(wrk_requests "$1"); non=$(wrk_non2xx "$1"); el=$(wrk_elapsed_s "$1")
    awk -v r="${req:-0}" -v n="$non" -v e="${el:-0}" 'BEGIN{ if (e > 0) printf "%.1f\n", (r - n) / e; else print 0 }'
}

# wrk_latency_p50_p99 OUTPUT: "p50 p99" from a --latency run
wrk_latency_p50_p99() {
    _wrk_text "$1" | awk '/^ +50% /{a = $2} /^ +99% /{b = $2} END{print (a ? a : "-"), (b ? b : "-")}'
}

# ---------------------------------------------------------------- Outpost ----

# outpost_operator_key DIR: create an operator API key in the store at DIR
# (the server must not be running on DIR) and print it
outpost_operator_key() {
    local dir=$1 out key
    mkdir -p "$(dirname "$dir")"
    mkdir -p -m 700 "$dir"
    out=$(OUTPOST_LOG__LEVEL=warn "$OP_BIN" operator create-key --data "$dir" 2>>"${dir%/}.log") ||
        die "operator create-key failed (see ${dir%/}.log)"
    key=$(printf '%s\n' "$out" | awk 'NF{k = $0} END{gsub(/^[ \t]+|[ \t\r]+$/, "", k); print k}')
    [ -n "$key" ] || die "operator create-key printed no key"
    printf '%s\n' "$key"
}

# outpost_member_token KEY SLUG [ROLE]: with operator key KEY, create organization SLUG
# and a user `SLUG-user` in it (a member, or ROLE), log them in, and print their access token
outpost_member_token() {
    local key=$1 slug=$2 role=${3:-member} org inv pw='bench password 123'
    org=$(curl -fsS -X POST "$OP_URL/v1/orgs" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
        --data "{\"slug\":\"$slug\",\"name\":\"$slug\"}" | "${BENCHSTAT[@]}" json-get id)
    inv=$(curl -fsS -X POST "$OP_URL/v1/orgs/$org/invitations" -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' --data "{\"email\":\"$slug@example.org\",\"role\":\"$role\"}" |
        "${BENCHSTAT[@]}" json-get token)
    curl -fsS -o /dev/null -X POST "$OP_URL/v1/auth/invitations/accept" -H 'Content-Type: application/json' \
        --data "{\"token\":\"$inv\",\"username\":\"$slug-user\",\"password\":\"$pw\"}"
    curl -fsS -X POST "$OP_URL/v1/auth/login" -H 'Content-Type: application/json' \
        --data "{\"org\":\"$slug\",\"login\":\"$slug-user\",\"password\":\"$pw\"}" |
        "${BENCHSTAT[@]}" json-get access_token
}

# start_outpost DIR PORT: serve with data dir DIR on 127.0.0.1:PORT, wait
# for GET /health/ready == 200, export OP_PID and OP_URL.
# Server output goes to DIR.log.
# start_outpost DIR PORT: on 127.0.0.1, or on OP_HOST when set; OP_WRAP, when set, is a
# command prefix that execs the server (e.g. `ip netns exec NS`, which keeps the PID).
start_outpost() {
    local dir=$1 port=$2 host=${OP_HOST:-127.0.0.1}
    require_outpost
    [ "$host" != 127.0.0.1 ] || require_port_free "$port"
    mkdir -p "$(dirname "$dir")"
    mkdir -p -m 700 "$dir"
    # shellcheck disable=SC2086 # OP_WRAP is a command prefix, split on purpose
    OUTPOST_LOG__LEVEL=warn ${OP_WRAP:-} "$OP_BIN" serve --data "$dir" --listen "$host:$port" \
        >>"${dir%/}.log" 2>&1 &
    OP_PID=$!
    OP_URL="http://$host:$port"
    export OP_PID OP_URL
    if ! wait_http_200 "$OP_URL/health/ready" 60 "$OP_PID"; then
        tail -n 20 "${dir%/}.log" >&2 || true
        die "outpost did not become ready on $OP_URL"
    fi
    log "outpost ready: pid $OP_PID on $OP_URL (data $dir)"
}

stop_outpost() {
    [ -n "${OP_PID:-}" ] || return 0
    stop_pid "$OP_PID" TERM 30 outpost
    unset OP_PID
}

# ------------------------------------------------------------- node peers ----

# The node peers' packages, one list for every bench using benches/peers: an
# `npm install --no-save` removes what its command line does not name, so one
# bench installing its own list would undo the other's.
NODE_PEERS=(socket.io@4 @hocuspocus/server@3.4 @hocuspocus/provider@3.4 yjs@13.6 y-websocket@3 ws@8)
NODE_PEER_PIDS=()

# install_node_peers: NODE_PEERS into benches/peers/node_modules (ignored), unless
# that exact list is there already
install_node_peers() {
    local dir="$BENCH_DIR/peers" stamp="$BENCH_DIR/peers/node_modules/.bench-peers"
    [ "$(cat "$stamp" 2>/dev/null)" = "${NODE_PEERS[*]}" ] && return 0
    log "installing ${NODE_PEERS[*]} into $dir/node_modules"
    npm install --prefix "$dir" --silent --no-audit --no-fund --no-save "${NODE_PEERS[@]}" >/dev/null
    printf '%s\n' "${NODE_PEERS[*]}" >"$stamp"
}

# start_node_peer LOG READY_TEXT CMD...: run CMD in the background (output to
# LOG), wait until LOG shows READY_TEXT, set NODE_PEER_PID; bench_cleanup stops it
start_node_peer() {
    local log=$1 ready=$2 deadline=$((SECONDS + 30))
    shift 2
    "$@" >"$log" 2>&1 &
    NODE_PEER_PID=$!
    NODE_PEER_PIDS+=("$NODE_PEER_PID")
    until grep -q -- "$ready" "$log" 2>/dev/null; do
        if ! pid_alive "$NODE_PEER_PID" || [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$log" >&2 || true
            die "$* did not start"
        fi
        sleep 0.1
    done
    log "$(basename "$log" .log) ready: pid $NODE_PEER_PID"
}

# ------------------------------------------------------------- PostgreSQL ----

# run a command as the postgres user when we are root (initdb/postgres refuse root)
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# start_postgres DIR PORT: own cluster in DIR/data on 127.0.0.1:PORT
# (fsync=on, synchronous_commit=on, max_connections=200, trust auth for
# user postgres over 127.0.0.1), export PG_PID, PG_DIR, PG_PORT.
start_postgres() {
    local dir=$1 port=$2
    require_cmd "$PG_BIN/initdb" "$PG_BIN/pg_ctl"
    require_port_free "$port"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        as_pg tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# --- outpost benches ---
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
    fi
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
        -o "-p $port" start >/dev/null ||
        { tail -n 20 "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
    PG_PID=$(head -n 1 "$dir/data/postmaster.pid")
    PG_DIR=$dir
    PG_PORT=$port
    export PG_PID PG_DIR PG_PORT
    log "postgres ready: pid $PG_PID on 127.0.0.1:$port (data $dir/data)"
}

# stop_postgres: fast shutdown (SIGINT to the postmaster PID), bounded wait
stop_postgres() {
    [ -n "${PG_PID:-}" ] || return 0
    stop_pid "$PG_PID" INT 60 postgres
    unset PG_PID
}

# pg_sql SQL: run SQL against the bench cluster, unaligned output
pg_sql() {
    "$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
        -X -q -A -t -v ON_ERROR_STOP=1 -c "$1"
}

# ------------------------------------------------------------------ nginx ----

# nginx_conf_head DIR NAME: the start of a generated nginx.conf, printed (2 workers, access_log
# off, keepalive, temp paths under DIR/tmp), open inside `http {` for the caller's own lines and
# its closing brace. Makes DIR/tmp and opens DIR to nginx's workers.
nginx_conf_head() {
    local dir=$1 name=$2 user_line=""
    mkdir -p "$dir/tmp"
    chmod -R a+rX "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        if id www-data >/dev/null 2>&1; then user_line="user www-data;"; else user_line="user nobody;"; fi
    fi
    cat <<EOF
# generated by benches/lib.sh $name
$user_line
worker_processes 2;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    server_tokens off;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
EOF
}

# nginx_launch DIR: runs nginx on DIR/nginx.conf in the background; export NGINX_PID.
nginx_launch() {
    nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" >>"$1/stdout.log" 2>&1 &
    NGINX_PID=$!
    export NGINX_PID
}

# start_nginx DIR PORT FILE [URL_PATH]: nginx (2 workers, access_log off)
# serving FILE's bytes at URL_PATH (default /<basename FILE>) with
# Content-Type application/json; export NGINX_PID (the master).
start_nginx() {
    local dir=$1 port=$2 file=$3 path=${4:-/$(basename "$3")}
    require_cmd nginx
    require_port_free "$port"
    case "$path" in /*) ;; *) path=/$path ;; esac
    mkdir -p "$dir/www$(dirname "$path")"
    cp -- "$file" "$dir/www$path"
    {
        nginx_conf_head "$dir" start_nginx
        cat <<EOF
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=60s;
    types { }
    default_type application/json;

    server {
        listen 127.0.0.1:$port;
        root $dir/www;
        location = $path { }
        location / { return 404; }
    }
}
EOF
    } >"$dir/nginx.conf"
    nginx_launch "$dir"
    if ! wait_http_200 "http://127.0.0.1:$port$path" 30 "$NGINX_PID"; then
        tail -n 20 "$dir/error.log" >&2 || true
        die "nginx did not serve http://127.0.0.1:$port$path"
    fi
    log "nginx ready: pid $NGINX_PID on http://127.0.0.1:$port$path"
}

# start_nginx_proxy DIR PORT UPSTREAM_PORT: nginx (2 workers, access_log off) as a
# reverse proxy to http://127.0.0.1:UPSTREAM_PORT, its upstream connections kept alive;
# export NGINX_PID (the master). Ready once it answers anything (the upstream may not be up).
start_nginx_proxy() {
    local dir=$1 port=$2 upstream=$3 deadline
    require_cmd nginx
    require_port_free "$port"
    mkdir -p "$dir"
    {
        nginx_conf_head "$dir" start_nginx_proxy
        cat <<EOF

    upstream service {
        server 127.0.0.1:$upstream;
        keepalive 64;
        keepalive_requests 1000000;
    }

    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$dir/nginx.conf"
    nginx_launch "$dir"
    deadline=$((SECONDS + 30))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/" 2>/dev/null)" != "000" ]; do
        if ! pid_alive "$NGINX_PID" || [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$dir/error.log" >&2 || true
            die "nginx did not listen on 127.0.0.1:$port"
        fi
        sleep 0.05
    done
    log "nginx proxy ready: pid $NGINX_PID on http://127.0.0.1:$port -> 127.0.0.1:$upstream"
}

# stop_nginx: SIGTERM (fast shutdown) to the master PID, bounded wait
stop_nginx() {
    [ -n "${NGINX_PID:-}" ] || return 0
    stop_pid "$NGINX_PID" TERM 30 nginx
    unset NGINX_PID
}

# ----------------------------------------------------------------- rounds ----

# bench_order ROUND: side order for a round; alternates so neither side
# always runs first (round 0 = warm-up)
bench_order() {
    local sides=()
    side_enabled outpost && sides+=(outpost)
    side_enabled peer && sides+=(peer)
    if [ $(($1 % 2)) -eq 1 ] && [ "${#sides[@]}" -eq 2 ]; then
        echo "peer outpost"
    else
        echo "${sides[*]}"
    fi
}

# run_measured OUTFILE PID self|tree -- CMD...: run CMD (stdout+stderr to
# OUTFILE, killed after DURATION+60 s), and measure the server PID around it.
# Sets RUN_CPU_S (CPU delta; "tree" includes children/descendants),
# RUN_HWM_KB (VmHWM; for "tree" the sum over live processes),
# RUN_PSS_KB (sampled peak of the tree's summed PSS, 0 if MEMWATCH=0) and,
# for "self", RUN_MINFLT (minor page faults during the run; empty for "tree").
run_measured() {
    local out=$1 pid=$2 mode=$3 cpu0 cpu1 flt0="" rc=0
    shift 3
    [ "$1" = -- ] && shift
    pid_alive "$pid" || die "server pid $pid is not running"
    RUN_PSS_KB=0
    if [ "$MEMWATCH" = 1 ]; then
        rm -f "$out.pss"
        "${BENCHSTAT[@]}" memwatch "$pid" "$((DURATION + 60))" "$out.pss" &
        MEMWATCH_PID=$!
    fi
    if [ "$mode" = tree ]; then cpu0=$(proc_tree_cpu_s "$pid"); else cpu0=$(proc_cpu_s "$pid"); flt0=$(proc_minflt "$pid"); fi
    timeout -k 5 "$((DURATION + 60))" "$@" >"$out" 2>&1 || rc=$?
    # let connections close and PostgreSQL backends exit (their CPU then
    # shows up in the postmaster's cutime/cstime)
    sleep 1
    if [ "$mode" = tree ]; then cpu1=$(proc_tree_cpu_s "$pid"); else cpu1=$(proc_cpu_s "$pid"); fi
    if [ -n "${MEMWATCH_PID:-}" ]; then
        stop_pid "$MEMWATCH_PID" TERM 5 memwatch
        unset MEMWATCH_PID
        RUN_PSS_KB=$(cat "$out.pss" 2>/dev/null || echo 0)
    fi
    if [ "$mode" = tree ]; then RUN_HWM_KB=$(proc_tree_rss_peak_kb "$pid"); else RUN_HWM_KB=$(proc_rss_peak_kb "$pid"); fi
    RUN_CPU_S=$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN{printf "%.2f", b - a}')
    RUN_MINFLT=""
    [ -n "$flt0" ] && RUN_MINFLT=$(($(proc_minflt "$pid") - flt0))
    if [ "$rc" -ne 0 ]; then
        tail -n 20 "$out" >&2
        die "load run failed with status $rc: $*"
    fi
}

# record_row TSV ROUND SIDE VALUE OPS CPU_S HWM_KB PSS_KB [NOTE]
record_row() {
    local tsv=$1
    shift
    [ -f "$tsv" ] || printf 'round\tside\tvalue\tops\tcpu_s\thwm_kb\tpss_peak_kb\tnote\n' >"$tsv"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${8:-}" >>"$tsv"
}

# report TSV TITLE UNIT SCENARIO PEER_NAME
report() {
    "${BENCHSTAT[@]}" report "$1" --title "$2" --unit "$3" --scenario "$4" \
        --peer-name "$5" --machine "$(machine_desc)"
}
