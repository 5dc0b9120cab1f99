#!/usr/bin/env bash
# The media relay's forwarding capacity beside Janus VideoRoom 1.1 (Debian `janus`), same
# clients, same run (load generator: benches/sfu_load.rs). For each shape in SHAPES and each N
# in SUBS:
#   video    one publisher sending VIDEO_KBPS of video plus audio to N players (Outpost: WHIP
#            and WHEP; Janus: a publisher and N subscribers of its feed);
#   audio10  ten audio publishers heard by N participants (Outpost: call participants on the
#            realtime socket; Janus: N subscribers of all ten feeds).
# Each client is its own WebRTC connection (DTLS-SRTP, no decoding). Reports forwarded packets
# per second, per busy server core and per player's share of a core, added delay p50/p99, join
# time p50/p99, loss and server RSS, then Outpost's figures over Janus's.
#
#   bash benches/sfu.sh          # SUBS=10,25,50,100 VIDEO_KBPS=1500 DURATION=8 SIDES=both
#
# Janus will not use loopback for ICE, so when it runs (SIDES=both or peer; needs root, `ip`
# and `janus`) both servers run in a network namespace of their own and the clients reach them
# over a veth pair: $NET.1 (clients) to $NET.2 (servers). SIDES=outpost alone stays on
# 127.0.0.1. The load generator runs on the same machine and takes CPU of its own (about as
# much as a server per packet: it encrypts and decrypts too); watch cpu_cores against nproc.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

OP_PORT=${OP_PORT:-18080}
JANUS_PORT=${JANUS_PORT:-18088}
SUBS=${SUBS:-10,25,50,100}
SHAPES=${SHAPES:-video audio10}
VIDEO_KBPS=${VIDEO_KBPS:-1500}
NET=${NET:-10.231.0}
side_enabled outpost && require_outpost
if side_enabled peer; then
    [ "$(id -u)" -eq 0 ] || die "the Janus side needs root for its network namespace (or SIDES=outpost)"
    require_cmd janus ip
fi
require_cmd curl
bench_init

(cd "$REPO_DIR" && cargo bench --bench sfu_load --no-run -q 2>/dev/null)
LOAD=$(cd "$REPO_DIR" && cargo bench --bench sfu_load --no-run 2>&1 | awk '/Executable/{gsub(/[()]/,"",$NF); print $NF}' | tail -1)
[ -x "$LOAD" ] || die "no load generator built"

CLIENT_IP=127.0.0.1
SERVER_IP=127.0.0.1
NETNS=
netns_up() {
    NETNS=opsfu$$
    local veth=opv$$
    ip netns add "$NETNS"
    BENCH_CLEANUP_HOOKS+=(netns_down)
    ip link add "${veth}a" type veth peer name "${veth}b"
    ip link set "${veth}b" netns "$NETNS"
    ip addr add "$NET.1/24" dev "${veth}a"
    ip link set "${veth}a" up
    ip netns exec "$NETNS" ip addr add "$NET.2/24" dev "${veth}b"
    ip netns exec "$NETNS" ip link set "${veth}b" up
    ip netns exec "$NETNS" ip link set lo up
    CLIENT_IP=$NET.1 SERVER_IP=$NET.2 JANUS_IFACE="${veth}b"
}
# Deleting the namespace takes the veth pair with it once the servers in it are gone.
netns_down() { [ -z "$NETNS" ] || ip netns del "$NETNS"; }

# Janus with the VideoRoom plugin and the HTTP transport only, on the namespace's address.
start_janus() {
    local conf="$WORK/janus" lib
    lib=$(dirname "$(dirname "$(find /usr/lib -path '*janus/plugins/libjanus_videoroom.so' | head -1)")")
    [ -d "$lib/plugins" ] || die "Janus's VideoRoom plugin not found under /usr/lib"
    mkdir -p "$conf/plugins" "$conf/transports" "$conf/none"
    ln -s "$lib/plugins/libjanus_videoroom.so" "$conf/plugins/"
    ln -s "$lib/transports/libjanus_http.so" "$conf/transports/"
    cat >"$conf/janus.jcfg" <<JCFG
general: {
    configs_folder = "$conf"
    plugins_folder = "$conf/plugins"
    transports_folder = "$conf/transports"
    events_folder = "$conf/none"
    loggers_folder = "$conf/none"
    debug_level = 3
    session_timeout = 0
}
media: {
    ipv6 = false
}
nat: {
    ice_enforce_list = "$JANUS_IFACE"
}
JCFG
    cat >"$conf/janus.transport.http.jcfg" <<JCFG
general: {
    json = "plain"
    base_path = "/janus"
    http = true
    port = $JANUS_PORT
    ip = "$SERVER_IP"
}
admin: {
    admin_http = false
}
JCFG
    printf 'general: {\n}\n' >"$conf/janus.plugin.videoroom.jcfg"
    ip netns exec "$NETNS" janus -C "$conf/janus.jcfg" -F "$conf" -i "$SERVER_IP" -N -o -L "$WORK/janus.log" &
    JANUS_PID=$!
    BENCH_CLEANUP_HOOKS=(stop_janus "${BENCH_CLEANUP_HOOKS[@]}")
    JANUS_URL="http://$SERVER_IP:$JANUS_PORT/janus"
    wait_http_200 "$JANUS_URL/info" 30 "$JANUS_PID" || { tail -n 20 "$WORK/janus.log" >&2; die "janus did not start"; }
    log "janus ready: pid $JANUS_PID on $JANUS_URL ($(janus --version 2>/dev/null | head -1))"
}
stop_janus() { [ -z "${JANUS_PID:-}" ] || stop_pid "$JANUS_PID" TERM 20 janus; }

echo "== media relay: ${VIDEO_KBPS} kbit/s video + audio -> N players; 10 audio publishers -> N =="
echo "machine: $(machine_desc)"
if side_enabled peer; then
    netns_up
    start_janus
fi
if side_enabled outpost; then
    KEY=$(outpost_operator_key "$WORK/outpost-data")
    export OUTPOST_MEDIA__RTC_LISTEN="$SERVER_IP:0" OUTPOST_LIMITS__USER_REQUESTS_PER_S=100000 \
        OUTPOST_MEDIA__ROOM_SESSIONS_MAX=2000 OUTPOST_REALTIME__CONNECTIONS_PER_USER_MAX=10000
    OP_HOST=$SERVER_IP OP_WRAP=${NETNS:+ip netns exec $NETNS} start_outpost "$WORK/outpost-data" "$OP_PORT"
fi
RESULTS="$WORK/results"
: >"$RESULTS"
for shape in $SHAPES; do
    args=(--shape "$shape" --subs "$SUBS" --seconds "$DURATION" --video-kbps "$VIDEO_KBPS" --local-ip "$CLIENT_IP")
    if side_enabled outpost; then
        "$LOAD" "${args[@]}" --base "$OP_URL" --key "$KEY" --pid "$OP_PID" | grep --line-buffered '^RESULT' | tee -a "$RESULTS" || true
    fi
    if side_enabled peer; then
        "$LOAD" "${args[@]}" --janus "$JANUS_URL" --pid "$JANUS_PID" | grep --line-buffered '^RESULT' | tee -a "$RESULTS" || true
    fi
done
if side_enabled outpost && side_enabled peer; then
    echo "== Outpost / Janus, same shape and N =="
    awk '
        { delete f; for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
          k = f["shape"] " " f["subs"]
          for (m in f) v[f["server"], k, m] = f[m]
          keys[k] = 1 }
        END { for (k in keys) if ((("janus", k, "server") in v) && (("outpost", k, "server") in v)) {
            r = v["janus", k, "per_busy_core_pps"] > 0 ? v["outpost", k, "per_busy_core_pps"] / v["janus", k, "per_busy_core_pps"] : 0
            printf "%s: packets/s per busy core %s vs %s (%.2fx); delay p99 %s vs %s ms; loss %s%% vs %s%%; RSS %s vs %s kB\n", k,
                v["outpost", k, "per_busy_core_pps"], v["janus", k, "per_busy_core_pps"], r,
                v["outpost", k, "delay_p99_ms"], v["janus", k, "delay_p99_ms"],
                v["outpost", k, "loss_pct"], v["janus", k, "loss_pct"], v["outpost", k, "rss_kb"], v["janus", k, "rss_kb"] } }
    ' "$RESULTS" | sort -k1,1 -k2,2n
fi
