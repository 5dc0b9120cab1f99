#!/usr/bin/env bash
# The package test: builds the .deb and .rpm from the static musl binaries (amd64 and arm64),
# lints them, installs the .deb on a Debian system booted under systemd (systemd-nspawn -b) and
# runs it there (an upgrade from the build before the last schema change, with data kept and
# the migration run once; start, READY, operator key, reload/restart/stop, watchdog,
# sandboxing, remove, purge, install again on the kept data), installs the .rpm into an rpm
# root and checks its scriptlets and file list, and smoke-tests the arm64 binary under qemu-user.
#
# Called by scripts/test-all.sh after the tests. Installs what it needs when missing (apt
# packages, cargo-deb and cargo-generate-rpm pinned into .cache/tools, a debootstrap root in
# .cache/debootstrap). Run alone, it makes the release builds itself (x86_64, then the upgrade's
# N, both in target/; aarch64 in target/release-build) while it prepares the rest;
# scripts/test-all.sh makes them in parts beside its other work (`release-build arm64` from the
# start, `release-build x86` once the tests, whose build shares its dependencies, have run) and
# says so with PKGTEST_BUILT=1. Prints PASS/FAIL and the time of every step, and ends with
# "N passed, M failed". Needs root.
#
#   bash scripts/package-test.sh                everything
#   SKIP_ARM64=1 bash scripts/package-test.sh   without the aarch64 build and smoke test
#   ARM_OPT_LEVEL=3 bash scripts/package-test.sh the arm64 binary optimized and its packages
#                                               compressed as released (0 here: unoptimized,
#                                               compressed fast)
#   bash scripts/package-test.sh apt            only the Debian packages it needs
#   bash scripts/package-test.sh prepare        only its tools and the Debian root (no apt)
#   bash scripts/package-test.sh release-build [arm64|x86|all]
#                                               only the release builds (all: both parts); a
#                                               later run with PKGTEST_BUILT=1 packages them
#                                               without building
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
DEBIAN_SUITE=bookworm
ROOT_PACKAGES=systemd,systemd-sysv,dbus,ca-certificates,curl,man-db,sudo

CACHE=$REPO/.cache
TOOLS=$CACHE/tools
ROOT=$CACHE/debootstrap/$DEBIAN_SUITE
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WORK=$TARGET_DIR/package-test
X86=x86_64-unknown-linux-musl
ARM=aarch64-unknown-linux-musl
VERSION=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])')
# The upgrade's N: this repository at the last commit of schema 1 (before tasks were indexed by
# assignee), packaged with a lower version. N+1 is this tree's package, so the upgrade runs every
# migration since (2: tasks by assignee; 3: audit records and events in binary) and the chains
# it then verifies hold records written by both builds. A later migration adds its lines to
# `upgrade` and `migrated_once`.
UPGRADE_FROM=922bf54f4c76043894de97b28741fc30e46c7a3d
PREV_VERSION="$VERSION~schema1"
PREV_DEB=outpost_${PREV_VERSION}-1_amd64.deb
REL_DIR=$TARGET_DIR/release-build
PREV_SRC=$WORK/prev-src
# N's binary and its generated man page and completions, where cargo-deb looks for them when
# this is its target dir.
PREV_DIR=$WORK/prev-target
export PATH="$TOOLS/bin:$PATH"

passed=0
failed=0
failures=()

# step NAME COMMAND...: runs COMMAND, its output indented; PASS or FAIL with the time it took.
step() {
    local name=$1
    shift
    printf '\n--- %s\n' "$name"
    local t0 rc dt
    t0=$(date +%s.%N)
    # The step runs in this shell (not a pipeline's subshell), so what it sets stays set. Its
    # output goes through sed on fd 3; the sed's PID is taken before the step runs, because a
    # step may start background jobs of its own (the container), which would change $!.
    local indent
    exec 3> >(sed 's/^/    /')
    indent=$!
    "$@" >&3 2>&1
    rc=$?
    exec 3>&-
    wait "$indent" 2>/dev/null
    dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    if [ "$rc" = 0 ]; then
        passed=$((passed + 1))
        printf 'PASS %s (%s s)\n' "$name" "$dt"
    else
        failed=$((failed + 1))
        failures+=("$name")
        printf 'FAIL %s (%s s, exit %s)\n' "$name" "$dt" "$rc"
    fi
    return "$rc"
}

# as_root, apt_install
source scripts/apt.sh

# ---------------------------------------------------------------------------------------------
# Tools

# The Debian packages and the aarch64 Rust target.
tools_apt() {
    if [ "${SKIP_ARM64:-}" != 1 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
        as_root dpkg --add-architecture arm64
        as_root apt-get update -qq
    fi
    local pkgs=(lintian rpm rpmlint systemd-container debootstrap file)
    [ "${SKIP_ARM64:-}" = 1 ] || pkgs+=(gcc-aarch64-linux-gnu musl-dev:arm64 qemu-user)
    apt_install "${pkgs[@]}" || return 1
    if [ "${SKIP_ARM64:-}" != 1 ] && ! rustup target list --installed | grep -qx "$ARM"; then
        rustup target add "$ARM" || return 1
    fi
}

tools() {
    tools_apt || return 1
    # Built in a folder of their own (not the project's target dir), shared by the two so that
    # what they have in common compiles once, and without LTO: they only pack files.
    local build=(env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_LTO=false
        cargo install --locked --quiet --root "$TOOLS" --target-dir "$TOOLS/build")
    if ! cargo-deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
        "${build[@]}" --version "$CARGO_DEB_VERSION" cargo-deb || return 1
    fi
    if ! cargo-generate-rpm --version 2>/dev/null | grep -q "$CARGO_GENERATE_RPM_VERSION"; then
        "${build[@]}" --version "$CARGO_GENERATE_RPM_VERSION" cargo-generate-rpm || return 1
    fi
    cargo-deb --version && cargo-generate-rpm --version && lintian --version && rpmlint --version | head -1
}

# The Debian root the containers boot, made once and kept in .cache (never booted writable).
debian_root() {
    if [ -f "$ROOT/.outpost-root" ] && [ "$(cat "$ROOT/.outpost-root")" = "$ROOT_PACKAGES" ]; then
        echo "cached: $ROOT ($(du -sh "$ROOT" | cut -f1))"
        return 0
    fi
    local mirror
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)
    rm -rf "$ROOT" "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    debootstrap --variant=minbase --include="$ROOT_PACKAGES" "$DEBIAN_SUITE" "$ROOT.partial" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log"; return 1; }
    echo "$ROOT_PACKAGES" >"$ROOT.partial/.outpost-root"
    mv "$ROOT.partial" "$ROOT"
    echo "made $ROOT ($(du -sh "$ROOT" | cut -f1))"
}

# ---------------------------------------------------------------------------------------------
# Building and linting

# The release builds, at the lowest priority; each part's exit status lands in its .rc file.
#  - arm64: this tree for aarch64 in a target dir of its own (target/release-build), so that it
#    can run beside the test build in target/ from the start (two cargo runs in one dir take
#    turns); the binary is copied to target/aarch64-unknown-linux-musl/release/, where the
#    packaging looks.
#  - x86: this tree for x86_64 in target/, where the test build (scripts/test-all.sh) has already
#    made most of what it needs, then N (build_prev_binary) in the same dir.
# `release_build all` runs both, one after the other.
release_build() {
    local part=${1:-all} rc=0
    mkdir -p "$WORK"
    rm -f "$WORK/release-build-$part.rc"
    case "$part" in
        arm64) release_arm64 ;;
        x86) release_x86 ;;
        all) release_x86 && { [ "${SKIP_ARM64:-}" = 1 ] || release_arm64; } ;;
        *) echo "release-build: no part $part (arm64, x86 or all)" && false ;;
    esac >"$WORK/release-build-$part.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/release-build-$part.rc"
    return "$rc"
}

# The aarch64 binary is optimized at ARM_OPT_LEVEL (0 unless set): this test only packages it
# and runs it under qemu-user for a smoke test, and optimizing a second target costs as much
# again as the first on two cores (this crate alone compiled in 101 s unoptimized, 242 s at
# level 1). It is the long pole of a cold CI run. The x86_64 binary, which the package test
# installs and upgrades, is built as released. ARM_OPT_LEVEL=3 builds the arm64 package as
# released.
release_arm64() {
    CARGO_TARGET_DIR=$REL_DIR CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-musl-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="-C opt-level=${ARM_OPT_LEVEL:-0}" \
        nice -n 19 cargo build --release --locked --target "$ARM" || return 1
    mkdir -p "$TARGET_DIR/$ARM/release" || return 1
    cp --remove-destination "$REL_DIR/$ARM/release/outpost" "$TARGET_DIR/$ARM/release/outpost" || return 1
    echo "release build done: $ARM"
}

release_x86() {
    CARGO_TARGET_DIR=$TARGET_DIR nice -n 19 cargo build --release --locked --target "$X86" || return 1
    build_prev_binary || return 1
    echo "release build done: $X86, and N"
}

# N: the tree at UPGRADE_FROM, built for x86_64 in target/ with its own code unoptimized. Its
# binary passes through the path of this tree's, so this tree's is put aside and back.
#
# N compiles against this tree's manifest and lock (its [[bench]] entries left out, since N has
# fewer benches): every crate N uses is in them at the same version, and with the same features
# and profile its dependencies are the very units the x86_64 build above has just made, so only
# N's own code compiles. With N's own manifest (panic = "abort" then, fewer features on tokio,
# serde and hyper) the build remade almost the whole dependency tree, optimized: nearly as long
# again as the x86_64 build. N's manifest and lock come back afterwards for its packaging.
#
# One feature differs: N's sockets speak WebSocket through poem's `websocket` feature, which this
# tree no longer turns on (src/http/ws.rs). N's copy of the manifest turns it back on, and cargo
# adds poem's edges to crates the lock already holds at their versions: `--offline` rather than
# `--locked`, so nothing is fetched and no version moves. poem and what depends on it compile
# again for N (about a minute).
build_prev_binary() {
    local bin=$TARGET_DIR/$X86/release/outpost kept=$WORK/outpost.$X86 rc=0
    rm -rf "$PREV_SRC" "$PREV_DIR" && mkdir -p "$PREV_SRC" "$PREV_DIR/$X86/release" || return 1
    cp "$bin" "$kept" || return 1
    # -m: the files get the time of extraction, not of the commit. Cargo sees this tree and ours
    # as one package (a path package is known by its path in the workspace), so an old mtime
    # would let it take an earlier build of another commit as up to date.
    git -C "$REPO" archive "$UPGRADE_FROM" | tar -x -m -C "$PREV_SRC" || return 1
    mv "$PREV_SRC/Cargo.toml" "$PREV_SRC/Cargo.toml.own" && mv "$PREV_SRC/Cargo.lock" "$PREV_SRC/Cargo.lock.own" \
        && cp "$REPO/Cargo.lock" "$PREV_SRC/Cargo.lock" || return 1
    python3 - "$REPO/Cargo.toml" >"$PREV_SRC/Cargo.toml" <<'PY' || return 1
import re, sys
manifest = re.sub(r"(?ms)^\[\[bench\]\]\n.*?(?=^\[|\Z)", "", open(sys.argv[1]).read())
manifest, n = re.subn(r'(?m)^poem = "([^"]+)"$', r'poem = { version = "\1", features = ["websocket"] }', manifest)
if n != 1:
    sys.exit("package-test: no `poem = \"…\"` line in Cargo.toml to give N its websocket feature")
print(manifest, end="")
PY
    (
        cd "$PREV_SRC" \
            && CARGO_TARGET_DIR=$TARGET_DIR nice -n 19 cargo build --release --offline --target "$X86" \
                --config 'profile.release.package.outpost.opt-level=0' \
                --config 'profile.release.package.outpost.codegen-units=16'
    ) && cp "$bin" "$PREV_DIR/$X86/release/outpost" || rc=1
    mv "$PREV_SRC/Cargo.toml.own" "$PREV_SRC/Cargo.toml" && mv "$PREV_SRC/Cargo.lock.own" "$PREV_SRC/Cargo.lock" || return 1
    cp --remove-destination "$kept" "$bin" && rm -f "$kept" || return 1
    [ "$rc" = 0 ] && "$PREV_DIR/$X86/release/outpost" --version
}

# Waits for the release builds this run started, unless PKGTEST_BUILT=1 says they are done
# (scripts/test-all.sh runs them in parts and waits for each).
release_binaries() {
    local log=$WORK/release-build-all.log rc=$WORK/release-build-all.rc
    if [ "${PKGTEST_BUILT:-}" != 1 ]; then
        echo "waiting for the release builds, PID $RELEASE_PID (log: $log)"
        # Until the status appears, or the process is gone (a zombie counts as gone).
        running() { local st; st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) && [ "$st" != Z ]; }
        while [ ! -f "$rc" ] && running "$RELEASE_PID"; do sleep 1; done
        [ -f "$rc" ] || { echo "the release builds ended without a status"; tail -30 "$log"; return 1; }
        [ "$(cat "$rc")" = 0 ] || { tail -30 "$log"; return 1; }
        tail -1 "$log"
    fi
    file "$TARGET_DIR/$X86/release/outpost" "$PREV_DIR/$X86/release/outpost"
}

arm64_binary() {
    local bin=$TARGET_DIR/$ARM/release/outpost
    file "$bin"
    file "$bin" | grep -q 'ARM aarch64' && file "$bin" | grep -Eq 'static(-pie)? linked|statically linked'
}

# The man page and completions, made by the binary from its own command-line definition; the
# package metadata picks them up from target/<triple>/release/pkg/.
# assets TRIPLE [TARGET_DIR]: made by that dir's x86_64 binary (N's man page is N's own).
assets() {
    local triple=$1 dir=${2:-$TARGET_DIR}
    local pkg=$dir/$triple/release/pkg gen=$dir/$X86/release/outpost
    rm -rf "$pkg" && mkdir -p "$pkg"
    mkdir -p "$pkg/man"
    "$gen" generate man "$pkg/man" && gzip -9n "$pkg"/man/*.1 || return 1
    for shell in bash zsh fish; do
        "$gen" generate completions "$shell" "$pkg" || return 1
    done
    ls -l "$pkg" && ls "$pkg/man" | tr '\n' ' ' && echo
}

# The packages of an arm64 binary built unoptimized (ARM_OPT_LEVEL 0, as CI builds it) are
# compressed fast: they are only linted and smoke-tested, and the default compression (xz for
# the .deb, zstd at a high level for the .rpm's payload) took 28 s and 50 s of them here, against
# 3 s and 4 s. Optimized as released, they are compressed as released.
fast_packages() { [ "$1" = "$ARM" ] && [ "${ARM_OPT_LEVEL:-0}" = 0 ]; }

build_deb() {
    local triple=$1 out fast=()
    fast_packages "$triple" && fast=(--fast)
    out=$(cargo deb --no-build --no-strip --target "$triple" "${fast[@]}") || return 1
    echo "$out"
    ls -l "$out"
}

# N's .deb, made by that tree's own packaging from the binary the release builds left, and
# compressed fast: it is only installed to be upgraded from (xz as released took 16-19 s here).
build_prev() {
    assets "$X86" "$PREV_DIR" >/dev/null || return 1
    (
        cd "$PREV_SRC" \
            && CARGO_TARGET_DIR=$PREV_DIR cargo deb --no-build --no-strip --target "$X86" \
                --deb-version "$PREV_VERSION-1" --output "$WORK/$PREV_DEB" --fast
    ) || return 1
    ls -l "$WORK/$PREV_DEB"
}

build_rpm() {
    local triple=$1 fast=()
    fast_packages "$triple" && fast=(--payload-compress gzip)
    cargo generate-rpm --target "$triple" "${fast[@]}" || return 1
    ls -l "$TARGET_DIR/$triple"/generate-rpm/*.rpm
}

deb_file() { ls -t "$TARGET_DIR/$1"/debian/outpost_"$VERSION"-1_*.deb | head -1; }
rpm_file() { ls -t "$TARGET_DIR/$1"/generate-rpm/outpost-"$VERSION"-1.*.rpm | head -1; }

lint_deb() {
    local deb
    deb=$(deb_file "$1")
    dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
    # Errors fail; warnings are shown.
    lintian --fail-on error --display-level '>=warning' "$deb"
}

lint_rpm() {
    local rpm
    rpm=$(rpm_file "$1")
    rpm -qpi "$rpm" 2>/dev/null | head -12
    local out rc
    out=$(rpmlint -c "$REPO/packaging/rpmlint.toml" "$rpm" 2>&1)
    rc=$?
    echo "$out"
    # rpmlint exits non-zero on errors (and on a badness over the threshold).
    [ "$rc" = 0 ] && ! echo "$out" | grep -q ' E: '
}

# ---------------------------------------------------------------------------------------------
# The .deb under a real systemd

NSPAWN_PID=
CPID=

boot() {
    [ -z "$NSPAWN_PID" ] || return 0
    rm -rf "$WORK/share" && mkdir -p "$WORK/share"
    cp "$(deb_file $X86)" "$WORK/share/outpost_${VERSION}-1_amd64.deb"
    cp "$WORK/$PREV_DEB" "$WORK/share/"
    cp "$REPO/scripts/package-client.py" "$WORK/share/"
    # --volatile=overlay: changes go to a tmpfs over the cached root, gone at power-off.
    # --private-network: the container has its own loopback, so its ports are its own.
    systemd-nspawn -b -D "$ROOT" -M outpost-pkgtest --register=no --keep-unit --volatile=overlay \
        --private-network --bind-ro="$WORK/share:/var/tmp/pkg" --console=read-only \
        </dev/null >"$WORK/nspawn.log" 2>&1 3>&- &
    NSPAWN_PID=$!
    local i state=
    for i in $(seq 1 300); do
        for c in $(pgrep -P "$NSPAWN_PID"); do
            [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] && CPID=$c
        done
        if [ -n "$CPID" ]; then
            state=$(in_ct systemctl is-system-running 2>/dev/null)
            case "$state" in running | degraded) break ;; esac
        fi
        kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn.log"; return 1; }
        sleep 0.1
    done
    echo "container PID 1 is $CPID: $state"
    [ "$state" = running ] || { in_ct systemctl --failed; return 1; }
    in_ct cat /etc/debian_version
}

poweroff() {
    [ -n "$NSPAWN_PID" ] || return 0
    [ -n "$CPID" ] && in_ct systemctl poweroff >/dev/null 2>&1
    local i
    for i in $(seq 1 300); do
        kill -0 "$NSPAWN_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$NSPAWN_PID" 2>/dev/null && kill "$NSPAWN_PID"
    wait "$NSPAWN_PID" 2>/dev/null
    NSPAWN_PID=
    CPID=
}

# A command inside the container, with a clean environment.
in_ct() { nsenter -t "$CPID" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
# The host's python client inside the container's network namespace only.
client() { nsenter -t "$CPID" -n python3 "$REPO/scripts/package-client.py" "$@"; }
BASE=http://127.0.0.1:8080

main_pid() { in_ct systemctl show -P MainPID outpost; }

# install_deb FILE: a first install (or one after a purge), its output kept in install.log.
install_deb() {
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get install -y "/var/tmp/pkg/$1" | tee "$WORK/install.log" \
        || return 1
    in_ct dpkg -s outpost | grep -E '^(Status|Version|Architecture)'
    in_ct systemctl is-enabled outpost
    in_ct id outpost
    in_ct ls -ld /var/lib/outpost /etc/outpost
    # Installed, enabled, not started.
    [ "$(in_ct systemctl is-active outpost)" = inactive ]
}

# Starts the service, and measures the time from exec to READY.
start_timed() {
    local t0 t1
    t0=$(date +%s%N)
    in_ct systemctl start outpost || { in_ct journalctl -u outpost --no-pager | tail -20; return 1; }
    t1=$(date +%s%N)
    echo "systemctl start returned after $(((t1 - t0) / 1000000)) ms"
    in_ct systemctl show outpost -p Type -p ActiveState -p SubState -p NotifyAccess -p WatchdogUSec
    [ "$(in_ct systemctl show -P ActiveState outpost)" = active ] || return 1
    # Type=notify: start returns once READY=1 came, and by then the server answers at once.
    client ready "$BASE" 0.5 || return 1
    local exec active
    exec=$(in_ct systemctl show -P ExecMainStartTimestampMonotonic outpost)
    active=$(in_ct systemctl show -P ActiveEnterTimestampMonotonic outpost)
    echo "from exec to READY (active): $(((active - exec) / 1000)) ms"
    echo "$(((active - exec) / 1000))" >"$WORK/ready_ms"
}

start_ready() {
    start_timed || return 1
    in_ct journalctl -u outpost --no-pager -o cat | grep -E 'outpost is ready|no operator key' | cut -c1-200
    # The hint names the service's user, so the key's files belong to it.
    in_ct journalctl -u outpost --no-pager -o cat | grep -q 'sudo -u outpost /usr/bin/outpost operator create-key'
}

operator_key() {
    # The command exactly as the post-install script printed it.
    local cmd
    cmd=$(grep -A1 'Create an operator key' "$WORK/install.log" | tail -1 | tr -d '\r' | sed 's/^ *//')
    echo "printed: $cmd"
    case "$cmd" in "sudo -u outpost outpost operator create-key"*) ;; *) echo "no command found"; return 1 ;; esac
    in_ct sh -c "$cmd" >"$WORK/operator.key" || return 1
    echo "key: $(cut -c1-12 "$WORK/operator.key")…"
    grep -q '^opk_' "$WORK/operator.key"
}

seed_data() {
    client seed "$BASE" "$(cat "$WORK/operator.key")" "$WORK/share-state.json"
}

check_data() { client check "$BASE" "$WORK/share-state.json"; }

sandbox() {
    local pid
    pid=$(main_pid)
    echo "MainPID $pid"
    # (minbase has no ps: /proc says the same.)
    in_ct sh -c "stat -c '%U %G' /proc/$pid; tr '\\0' ' ' </proc/$pid/cmdline; echo" | tee "$WORK/ps" || return 1
    grep -qx 'outpost outpost' "$WORK/ps" && grep -q '^/usr/bin/outpost serve' "$WORK/ps" || return 1
    in_ct grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/"$pid"/status | tee "$WORK/status"
    grep -Eq 'NoNewPrivs:\s+1' "$WORK/status" && grep -Eq 'Seccomp:\s+2' "$WORK/status" \
        && grep -Eq 'CapEff:\s+0+$' "$WORK/status" && grep -Eq 'CapBnd:\s+0+$' "$WORK/status" || return 1
    # ProtectSystem=strict: the service sees /usr and /etc read-only, its state dir writable.
    in_ct nsenter -t "$pid" -m sh -c 'touch /etc/outpost/x 2>&1; touch /usr/x 2>&1; grep " /var/lib/outpost " /proc/self/mountinfo | head -1' | cut -c1-160
    in_ct systemd-analyze security outpost --no-pager | tee "$WORK/security" | tail -3
    local exposure
    exposure=$(sed -n 's/.*Overall exposure level for outpost.service: \([0-9.]*\) .*/\1/p' "$WORK/security")
    echo "$exposure" >"$WORK/exposure"
    python3 -c "import sys; sys.exit(0 if float('$exposure') <= 2.0 else 1)"
}

reload_restart_stop() {
    local before after
    before=$(main_pid)
    # The unit has no ExecReload: systemd refuses a reload and leaves the server running as it was.
    if in_ct systemctl reload outpost 2>"$WORK/reload.err"; then
        echo "reload unexpectedly accepted"
        return 1
    fi
    cat "$WORK/reload.err"
    grep -q 'not applicable' "$WORK/reload.err" || return 1
    [ "$(main_pid)" = "$before" ] && [ "$(in_ct systemctl is-active outpost)" = active ] || return 1
    echo "reload refused; still active, same MainPID $before"
    in_ct systemctl restart outpost || return 1
    after=$(main_pid)
    echo "restart: MainPID $before -> $after"
    [ "$after" != "$before" ] || return 1
    client ready "$BASE" 0.5 && check_data || return 1
    in_ct systemctl stop outpost || return 1
    in_ct systemctl show outpost -p ActiveState -p Result -p ExecMainCode -p ExecMainStatus | tee "$WORK/stopped"
    grep -qx 'Result=success' "$WORK/stopped" && grep -qx 'ExecMainStatus=0' "$WORK/stopped" || return 1
    in_ct journalctl -u outpost --no-pager -o cat | grep -Ei 'stopping|stopped|drain' | tail -3 | cut -c1-200
    in_ct systemctl start outpost && client ready "$BASE" 5 && check_data
}

watchdog() {
    local before after n0
    before=$(main_pid)
    # The shipped WatchdogSec=30s, shortened by a runtime drop-in so the test waits 3 s, not 30.
    in_ct mkdir -p /run/systemd/system/outpost.service.d
    in_ct sh -c 'printf "[Service]\nWatchdogSec=3s\n" >/run/systemd/system/outpost.service.d/watchdog.conf'
    in_ct systemctl daemon-reload && in_ct systemctl restart outpost || return 1
    in_ct systemctl show -P WatchdogUSec outpost
    before=$(main_pid)
    n0=$(in_ct systemctl show -P NRestarts outpost)
    # A process that stops answering: frozen, it sends no WATCHDOG=1.
    in_ct systemctl kill --kill-whom=main --signal=SIGSTOP outpost
    local i
    for i in $(seq 1 600); do
        after=$(main_pid)
        [ -n "$after" ] && [ "$after" != 0 ] && [ "$after" != "$before" ] && [ "$(in_ct systemctl is-active outpost)" = active ] && break
        sleep 0.1
    done
    echo "MainPID $before -> $after after $((i / 10)) s; NRestarts $n0 -> $(in_ct systemctl show -P NRestarts outpost)"
    in_ct journalctl -u outpost --no-pager -o cat | grep -i 'watchdog' | tail -2
    [ "$after" != "$before" ] && [ "$(in_ct systemctl show -P NRestarts outpost)" -gt "$n0" ] || return 1
    client ready "$BASE" 10 && check_data || return 1
    in_ct rm -r /run/systemd/system/outpost.service.d
    in_ct systemctl daemon-reload && in_ct systemctl restart outpost && client ready "$BASE" 10
}

man_and_completions() {
    in_ct dpkg -L outpost | grep -E 'man1|completions|vendor_completions|/usr/share/outpost/'
    in_ct sh -c 'MANPAGER=cat MANWIDTH=100 man outpost' >"$WORK/man.txt" 2>&1 || { cat "$WORK/man.txt"; return 1; }
    head -12 "$WORK/man.txt"
    grep -q 'operator' "$WORK/man.txt" && grep -q 'serve' "$WORK/man.txt" || return 1
    in_ct test -s /usr/share/bash-completion/completions/outpost \
        && in_ct test -s /usr/share/zsh/vendor-completions/_outpost \
        && in_ct test -s /usr/share/fish/vendor_completions.d/outpost.fish
}

# The journal's lines about the store's schema migration.
migration_lines() { in_ct journalctl -u outpost --no-pager -o cat | grep -E 'migrat|store schema' | cut -c1-200; }

upgrade() {
    # A local edit to the conffile survives the upgrade.
    in_ct sh -c 'sed -i "s/^level = \"info\"/level = \"info,outpost=info\"/" /etc/outpost/outpost.toml && grep -n "^level" /etc/outpost/outpost.toml'
    local before after
    before=$(main_pid)
    # Unattended, as an operator's automation runs it: the new default config beside the
    # edited one (outpost.toml.dpkg-dist), the edited one kept, no prompt.
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "/var/tmp/pkg/outpost_${VERSION}-1_amd64.deb" | tail -4 || return 1
    in_ct dpkg -s outpost | grep -E '^(Status|Version)'
    [ "$(in_ct dpkg-query -W -f '${Status} ${Version}' outpost)" = "install ok installed ${VERSION}-1" ] || return 1
    in_ct ls /etc/outpost
    after=$(main_pid)
    echo "restarted by the upgrade: MainPID $before -> $after"
    [ "$after" != "$before" ] && [ "$(in_ct systemctl is-active outpost)" = active ] || return 1
    in_ct grep -q '^level = "info,outpost=info"' /etc/outpost/outpost.toml || { echo "local config edit lost"; return 1; }
    echo "local config edit kept"
    client ready "$BASE" 10 || return 1
    migration_lines | tee "$WORK/migration"
    [ "$(grep -c 'migrating store schema 1 → 2' "$WORK/migration")" = 1 ] || { echo "the migration did not run once"; return 1; }
    grep -q 'migrated store schema to 2 (1 rows written)' "$WORK/migration" || return 1
    [ "$(grep -c 'migrating store schema 2 → 3' "$WORK/migration")" = 1 ] || { echo "the migration did not run once"; return 1; }
    grep -q 'migrated store schema to 3 (0 rows written)' "$WORK/migration" || return 1
    [ "$(grep -c 'migrating store schema 3 → 4' "$WORK/migration")" = 1 ] || { echo "the migration did not run once"; return 1; }
    # Schema 4 rewrites the topic index N wrote: one entry per event.
    grep -qE 'migrated store schema to 4 \([1-9][0-9]* rows written\)' "$WORK/migration" || return 1
    [ "$(grep -c 'migrating store schema 4 → 5' "$WORK/migration")" = 1 ] || { echo "the migration did not run once"; return 1; }
    grep -q 'migrated store schema to 5 (0 rows written)' "$WORK/migration" || return 1
    check_data
}

# After the restarts, the watchdog's kill and the stops since the upgrade, each migration step
# (1 → 2, 2 → 3, …) has still run once.
migrated_once() {
    migration_lines | tee "$WORK/migration"
    local v i
    v=$(sed -n 's/.*store schema is now version \([0-9]*\).*/\1/p' "$WORK/migration" | tail -1)
    [ -n "$v" ] || { echo "no line says the schema it reached"; return 1; }
    [ "$(grep -c 'migrating store schema' "$WORK/migration")" = $((v - 1)) ] || return 1
    for ((i = 1; i < v; i++)); do
        [ "$(grep -c "migrating store schema $i → $((i + 1)):" "$WORK/migration")" = 1 ] ||
            { echo "step $i → $((i + 1)) did not run exactly once"; return 1; }
    done
}

remove_keeps() {
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get remove -y outpost | tail -3 || return 1
    in_ct dpkg -s outpost 2>/dev/null | grep '^Status'
    [ "$(in_ct systemctl is-active outpost)" != active ] || return 1
    in_ct test ! -e /usr/bin/outpost || return 1
    in_ct ls -l /etc/outpost/outpost.toml || return 1
    in_ct ls /var/lib/outpost || return 1
    in_ct test -s /var/lib/outpost/outpost.redb
}

purge_says() {
    in_ct env DEBIAN_FRONTEND=noninteractive apt-get purge -y outpost | tee "$WORK/purge.log" | tail -8 || return 1
    in_ct test ! -e /etc/outpost/outpost.toml || { echo "config still there"; return 1; }
    echo "/etc/outpost: $(in_ct ls -d /etc/outpost 2>&1)"
    in_ct test -s /var/lib/outpost/outpost.redb || { echo "data deleted"; return 1; }
    grep -q 'kept /var/lib/outpost' "$WORK/purge.log" || { echo "purge did not say where the data is"; return 1; }
    echo "data kept and named"
}

# After a purge, the package installs again onto the data the purge kept: the post-install
# script prints the operator-key command, the service starts (the READY time reported is this
# build's) and serves the data written before, and the printed command works.
reinstall() {
    install_deb "outpost_${VERSION}-1_amd64.deb" || return 1
    start_timed && client ready "$BASE" 1 && check_data && operator_key
}

# ---------------------------------------------------------------------------------------------
# The .rpm in an rpm root

rpm_scripts() {
    local rpm
    rpm=$(rpm_file $X86)
    rpm -qp --scripts "$rpm" 2>/dev/null | tee "$WORK/rpm-scripts" | head -40
    for s in postinstall preuninstall postuninstall; do
        grep -q "^$s scriptlet" "$WORK/rpm-scripts" || { echo "no $s scriptlet"; return 1; }
    done
    # Each scriptlet parses as POSIX sh.
    python3 - "$WORK/rpm-scripts" "$WORK" <<'PY' || return 1
import re, subprocess, sys
text = open(sys.argv[1]).read()
parts = re.split(r"^(\w+) scriptlet \(using (\S+)\):\n", text, flags=re.M)
for name, shell, body in zip(parts[1::3], parts[2::3], parts[3::3]):
    r = subprocess.run(["sh", "-n"], input=body, text=True, capture_output=True)
    print(f"{name} ({shell}): sh -n {'ok' if r.returncode == 0 else 'FAILED ' + r.stderr}")
    if r.returncode:
        sys.exit(1)
PY
}

# Installs the .rpm into an overlay of the Debian root (so its scriptlets have a shell,
# systemd-sysusers and systemd-tmpfiles), with its own rpm database, then erases it.
rpm_root() {
    local rpm mnt=$WORK/rpmroot
    rpm=$(rpm_file $X86)
    rm -rf "$mnt" "$WORK/rpm-upper" "$WORK/rpm-work"
    mkdir -p "$mnt" "$WORK/rpm-upper" "$WORK/rpm-work"
    mount -t overlay overlay -o "lowerdir=$ROOT,upperdir=$WORK/rpm-upper,workdir=$WORK/rpm-work" "$mnt" || return 1
    local rc=0
    (
        set -e
        r=(rpm --root "$mnt" --dbpath /var/lib/rpm)
        "${r[@]}" --initdb
        # --nodeps: the database is empty, so even /bin/sh is not "provided" in it.
        "${r[@]}" -i --nodeps "$rpm"
        "${r[@]}" -q outpost
        "${r[@]}" -V outpost && echo "rpm -V: no differences"
        grep '^outpost:' "$mnt/etc/passwd"
        stat -c '%n %U:%G %a' "$mnt/var/lib/outpost" "$mnt/etc/outpost" "$mnt/usr/bin/outpost"
        [ "$(stat -c %U "$mnt/var/lib/outpost")" = outpost ]
        chroot "$mnt" /usr/bin/outpost version
        # The local edit survives an erase as .rpmsave (config noreplace); data is never touched.
        echo "# local edit" >>"$mnt/etc/outpost/outpost.toml"
        mkdir -p "$mnt/var/lib/outpost/marker"
        "${r[@]}" -e outpost
        ! "${r[@]}" -q outpost >/dev/null
        [ ! -e "$mnt/usr/bin/outpost" ] && [ -d "$mnt/var/lib/outpost/marker" ]
        ls "$mnt/etc/outpost/"
        echo "erased; /var/lib/outpost kept"
    ) || rc=1
    umount "$mnt"
    return $rc
}

# The two packages install the same files (the zsh completion goes where each family's zsh
# looks; the deb adds its copyright, changelog and lintian overrides, which rpm keeps elsewhere).
same_files() {
    rpm -qpl "$(rpm_file $X86)" 2>/dev/null | sed 's#/usr/share/zsh/site-functions/#/usr/share/zsh/COMPLETIONS/#' | sort >"$WORK/files.rpm"
    dpkg-deb -c "$(deb_file $X86)" | awk '$1 !~ /^d/ { print $6 }' | sed 's#^\.##' \
        | grep -v -e '^/usr/share/doc/' -e '^/usr/share/lintian/' \
        | sed 's#/usr/share/zsh/vendor-completions/#/usr/share/zsh/COMPLETIONS/#' | sort >"$WORK/files.deb"
    cat "$WORK/files.rpm"
    diff -u "$WORK/files.deb" "$WORK/files.rpm" && echo "the same $(wc -l <"$WORK/files.rpm") files"
}

# ---------------------------------------------------------------------------------------------
# arm64 under qemu-user

arm64_smoke() {
    local dir=$WORK/arm64 port
    rm -rf "$dir" && mkdir -p "$dir/extract" "$dir/run"
    dpkg-deb -x "$(deb_file $ARM)" "$dir/extract" || return 1
    local bin=$dir/extract/usr/bin/outpost
    file "$bin"
    qemu-aarch64 "$bin" version || return 1
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # Zero configuration: no file, no environment; only a free port instead of 8080.
    (cd "$dir/run" && exec qemu-aarch64 "$bin" serve --listen "127.0.0.1:$port" >"$dir/server.log" 2>&1) 3>&- &
    local pid=$!
    local rc=0
    (
        set -e
        python3 "$REPO/scripts/package-client.py" ready "http://127.0.0.1:$port" 60
        grep -o '"outpost is ready"' "$dir/server.log" | head -1
        key=$(cd "$dir/run" && qemu-aarch64 "$bin" operator create-key --name edge)
        echo "operator key ${key:0:12}…"
        python3 "$REPO/scripts/package-client.py" seed "http://127.0.0.1:$port" "$key" "$dir/state.json"
        python3 "$REPO/scripts/package-client.py" check "http://127.0.0.1:$port" "$dir/state.json"
    ) || rc=1
    kill -TERM "$pid"
    wait "$pid"
    local code=$?
    echo "server exit code after SIGTERM: $code"
    tail -2 "$dir/server.log" | cut -c1-200
    [ "$rc" = 0 ] && [ "$code" = 0 ]
}

# The arm64 steps run beside the amd64 ones, at a lower priority: they are mostly one core
# emulating the binary, while the amd64 steps are compressing the packages as released (xz on
# up to two cores, zstd on one) and then a container that mostly waits; one after the other,
# the package test took 211 s on two cores. The arm64 steps' shell counts them and ends its log
# with their tally; `arm64_results` prints the log where those steps used to run and adds the
# tally to this shell's.
arm64_steps() {
    trap - EXIT INT TERM
    renice -n 10 -p "$BASHPID" >/dev/null
    passed=0 failed=0 failures=()
    if step "arm64: static aarch64 musl binary" arm64_binary; then
        step "arm64: man page and completions" assets $ARM
        step "arm64: build .deb" build_deb $ARM
        step "arm64: build .rpm" build_rpm $ARM
        step "arm64: lintian" lint_deb $ARM
        step "arm64: rpmlint" lint_rpm $ARM
        step "arm64: smoke test under qemu-user" arm64_smoke
    fi
    printf '\n%s passed, %s failed\n' "$passed" "$failed"
}

arm64_results() {
    local log=$WORK/arm64-steps.log t0=$SECONDS tally name
    wait "$ARM64_PID"
    ARM64_PID=
    printf '\n=== arm64 (built and tested beside the steps above; waited %d s for it)\n' $((SECONDS - t0))
    sed '$d' "$log" | sed '${/^$/d}'
    tally=$(tail -1 "$log")
    if [[ "$tally" =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        passed=$((passed + BASH_REMATCH[1]))
        failed=$((failed + BASH_REMATCH[2]))
        while IFS= read -r name; do
            failures+=("$name")
        done < <(sed -n 's/^FAIL \(arm64: .*\) ([0-9.]* s.*$/\1/p' "$log")
    else
        failed=$((failed + 1))
        failures+=("arm64: the steps ended without a tally")
        tail -20 "$log"
    fi
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$WORK" "$CACHE"
case "${1:-all}" in
    all) ;;
    apt) tools_apt; exit ;;
    prepare) tools && debian_root; exit ;;
    release-build) release_build "${2:-all}"; exit ;;
    *) echo "usage: $0 [all|apt|prepare|release-build [arm64|x86|all]]" >&2; exit 2 ;;
esac

RELEASE_PID=
ARM64_PID=
on_exit() {
    poweroff
    if [ -n "$ARM64_PID" ] && kill -0 "$ARM64_PID" 2>/dev/null; then
        pkill -TERM -P "$ARM64_PID"
        kill "$ARM64_PID" 2>/dev/null
    fi
    if [ -n "$RELEASE_PID" ] && kill -0 "$RELEASE_PID" 2>/dev/null; then
        pkill -TERM -P "$RELEASE_PID"
        kill "$RELEASE_PID" 2>/dev/null
    fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
printf 'package test: outpost %s (upgrade from %s), target dir %s\n' "$VERSION" "$PREV_VERSION" "$TARGET_DIR"

step "tools (apt, cargo-deb $CARGO_DEB_VERSION, cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION)" tools
if [ "${PKGTEST_BUILT:-}" != 1 ]; then
    release_build all &
    RELEASE_PID=$!
fi
step "debian root (debootstrap $DEBIAN_SUITE, cached)" debian_root
step "release builds: this tree for amd64$([ "${SKIP_ARM64:-}" = 1 ] || echo ' and arm64'), then N" release_binaries \
    || { echo "$passed passed, $failed failed"; exit 1; }
if [ "${SKIP_ARM64:-}" != 1 ]; then
    arm64_steps >"$WORK/arm64-steps.log" 2>&1 &
    ARM64_PID=$!
fi
step "amd64: package N, the commit before schema 2 (${UPGRADE_FROM:0:10}), as $PREV_VERSION" build_prev
step "amd64: man page and completions" assets $X86
step "amd64: build .deb" build_deb $X86
step "amd64: build .rpm" build_rpm $X86
step "amd64: lintian" lint_deb $X86
step "amd64: rpmlint" lint_rpm $X86
step "rpm: scriptlets (rpm -qp --scripts)" rpm_scripts
step "rpm: install and erase in an rpm root" rpm_root
step "rpm: file list matches the deb's" same_files

if step "systemd: boot Debian under systemd-nspawn" boot; then
    step "systemd: install N ($PREV_VERSION)" install_deb "$PREV_DEB" \
        && step "systemd: start reaches active after READY" start_ready \
        && step "systemd: the printed operator-key command" operator_key \
        && step "systemd: write data (org, users, channel, message, document, file, task)" seed_data \
        && step "systemd: upgrade to N+1 ($VERSION) migrates the store once, keeps data and config" upgrade
    step "systemd: runs as outpost, sandboxed, systemd-analyze security" sandbox
    step "systemd: reload, restart, graceful stop" reload_restart_stop
    step "systemd: watchdog restarts a frozen process" watchdog
    step "systemd: man page and completions installed, man outpost renders" man_and_completions
    step "systemd: the migration ran once across every restart" migrated_once
    step "systemd: apt remove keeps data and config" remove_keeps
    step "systemd: apt purge removes config, keeps data and says so" purge_says
    step "systemd: install again after the purge, onto the kept data" reinstall
fi
poweroff

if [ -n "$ARM64_PID" ]; then
    arm64_results
fi

printf '\n=== package test summary\n'
for f in "$(deb_file $X86 2>/dev/null)" "$(rpm_file $X86 2>/dev/null)" "$(deb_file $ARM 2>/dev/null)" "$(rpm_file $ARM 2>/dev/null)"; do
    [ -f "$f" ] && printf '%10s bytes  %s\n' "$(stat -c %s "$f")" "$(basename "$f")"
done
[ -f "$WORK/ready_ms" ] && echo "systemctl start: exec to READY $(cat "$WORK/ready_ms") ms"
[ -f "$WORK/exposure" ] && echo "systemd-analyze security: exposure $(cat "$WORK/exposure")"
echo "package test took $(($(date +%s) - t_start)) s"
for f in "${failures[@]}"; do echo "failed: $f"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
