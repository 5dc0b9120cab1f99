#!/usr/bin/env bash
# Installs what the test suite needs (if missing) and runs all of it: formatting, lints,
# unit and integration tests, the API document check, the static release build, and the
# packages built from it (scripts/package-test.sh: deb and rpm, amd64 and arm64, under systemd).
# Safe to run again: installs are skipped when present. Needs root (or sudo) for apt-get the
# first time on a fresh machine.
#
# On 2 cores the run is mostly compiling, so it compiles each thing once where it can. The tests
# are built as the release is (release profile, static musl), in target/, and no dev-dependency
# turns on a feature the shipped build lacks (Cargo.toml), so the shipped x86_64 binary built
# after them reuses every dependency and compiles only this crate. (A test-only feature low in
# the tree, such as idna's `default` through reqwest's cookie store, would make dozens of crates
# compile twice.) Work that waits on the network or leaves a core idle runs beside it: the
# Python and npm installs and the Debian root from the start; the aarch64 release build from
# the start, at nice 19 in target/release-build (a target dir of its own, so it need not wait
# for the test build's lock); the x86_64 release build and the previous version the package
# test upgrades from (scripts/package-test.sh release-build x86) at nice 19 beside the
# contract tests, whose Python keeps one core busy. Their logs are in target/ci/.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each section prints how long the one before it took, so a run's log says what each part adds.
last_section=$SECONDS
say() {
    printf '\n==> %s   (previous section: %d s; %d s in all)\n' "$*" $((SECONDS - last_section)) "$SECONDS"
    last_section=$SECONDS
}

# as_root, apt_install
source scripts/apt.sh

# Background jobs: each in a session of its own (so that a failed run stops all of it), its
# output in target/ci/NAME.log. `bg_start NAME [--nice N] COMMAND...`: with --nice, the job's
# scheduling group gets that niceness too. A new session is a new autogroup where the kernel has
# them (sched_autogroup_enabled), and autogroups share the CPU equally whatever the niceness of
# their processes, so a plain `nice` would leave the job an equal share beside the foreground.
CI_LOGS=target/ci
declare -A BG_PID=() BG_START=()
bg_start() {
    local name=$1 nice=0
    shift
    if [ "$1" = --nice ]; then
        nice=$2
        shift 2
    fi
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null || true; exec nice -n "$0" "$@"' "$nice" "$@" \
        >"$CI_LOGS/$name.log" 2>&1 </dev/null &
    BG_PID[$name]=$!
    BG_START[$name]=$SECONDS
    echo "started in the background: $name (log: $CI_LOGS/$name.log)"
}
bg_wait() {
    local name=$1 rc=0
    wait "${BG_PID[$name]}" || rc=$?
    unset "BG_PID[$name]"
    if [ "$rc" != 0 ]; then
        tail -40 "$CI_LOGS/$name.log"
        echo "error: $name failed (exit $rc); its whole log is $CI_LOGS/$name.log" >&2
        exit 1
    fi
    echo "$name: done, $((SECONDS - BG_START[$name])) s after it started ($(tail -1 "$CI_LOGS/$name.log" | cut -c1-120))"
}
bg_stop_all() {
    local pid
    for pid in "${BG_PID[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
}
trap bg_stop_all EXIT

say "checking tools (Debian packages, Rust targets and components)"
apt_install musl-tools file openssl curl python3-venv chromium
command -v node >/dev/null 2>&1 || apt_install nodejs npm
bash scripts/package-test.sh apt
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
mkdir -p "$CI_LOGS"

# The peers the integration tests talk to: .venv-peers (websockets, aiortc, tuspy,
# standardwebhooks, authlib, mcp) and tests/peers/node_modules (yjs, y-websocket, ws,
# playwright-core, oidc-provider, MCP server-everything); then the contract tests' tools.
install_peers() {
    set -euo pipefail
    if ! .venv-peers/bin/python -c 'import websockets, aiortc, numpy, jsonschema, rfc3339_validator, tusclient, standardwebhooks, authlib, requests, mcp.server.mcpserver' >/dev/null 2>&1; then
        [ -x .venv-peers/bin/pip ] || python3 -m venv .venv-peers
        .venv-peers/bin/pip install --quiet --disable-pip-version-check 'websockets>=15,<18' 'aiortc>=1.14,<2' 'numpy>=1.26,<3' \
            'jsonschema>=4.23,<5' 'rfc3339-validator>=0.1.4,<0.2' 'tuspy>=1.1,<2' 'standardwebhooks>=1.3,<2' \
            'authlib>=1.3,<2' 'requests>=2.31,<3' 'mcp>=2.3,<3'
    fi
    if [ ! -d tests/peers/node_modules/y-websocket ] || [ ! -d tests/peers/node_modules/playwright-core ] ||
        [ ! -d tests/peers/node_modules/oidc-provider ] || [ ! -d tests/peers/node_modules/@modelcontextprotocol/server-everything ]; then
        (cd tests/peers && npm ci --no-audit --no-fund --silent)
    fi
    bash scripts/contract-test.sh tools
    echo "peers installed"
}
export -f install_peers

say "in the background: the aarch64 release build, peers (Python venvs, npm packages) and the packaging tools and Debian root"
bg_start release-arm64 --nice 19 bash scripts/package-test.sh release-build arm64
bg_start peers bash -c install_peers
bg_start package-prepare --nice 10 bash scripts/package-test.sh prepare

say "cargo fmt --check"
cargo fmt --all -- --check

# The tests' build: the release profile for the static musl target, as shipped, so that the
# dependencies are the shipped binary's. This crate's own units are built for the tests' sake,
# as a debug build would: with debug assertions and overflow checks, and not optimized (the
# shipped build compiles them again, optimized, beside the contract tests). Cold, the library
# took 101 s so, 242 s at opt-level 1 and 270 s as released; its unit tests 64, 138 and 147 s.
x86=x86_64-unknown-linux-musl
test_build=(--release --locked --target "$x86"
    --config 'profile.release.package.outpost.opt-level=0'
    --config 'profile.release.package.outpost.codegen-units=16'
    --config 'profile.release.package.outpost.debug-assertions=true'
    --config 'profile.release.package.outpost.overflow-checks=true')

# Clippy checks (no code generated) every target, benches included, for the same target; the
# build scripts and proc macros it compiles for the host are the test build's too.
say "clippy (warnings are errors) over every target"
cargo clippy --release --locked --target "$x86" --all-targets -- -D warnings

say "test build (release profile, $x86)"
cargo build "${test_build[@]}" --tests

say "tests (waiting for the peers first)"
bg_wait peers
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${test_build[@]}" --no-fail-fast
else
    cargo test "${test_build[@]}" --no-fail-fast
fi

# The contract tests run the binary the tests ran, copied aside: the release build that starts
# now puts the shipped binary, and then the previous version's, where this one was built.
tested=$CI_LOGS/outpost-tested
cp "target/$x86/release/outpost" "$tested"
say "in the background: the $x86 release build as shipped, then the version the package test upgrades from"
bg_start release-x86 --nice 19 bash scripts/package-test.sh release-build x86

say "API contract: generated Python and TypeScript clients, their journeys, schemathesis (scripts/contract-test.sh)"
OUTPOST_BIN=$tested bash scripts/contract-test.sh

say "static release binaries (waiting for the release builds)"
bg_wait release-x86
bg_wait release-arm64
bin=target/$x86/release/outpost
file "$bin"
if ! file "$bin" | grep -Eq 'static(-pie)? linked|statically linked'; then
    echo "error: $bin is not statically linked" >&2
    exit 1
fi
"$bin" version
ls -l "$bin"

say "packages: .deb and .rpm for amd64 and arm64, lint, install and run under systemd (scripts/package-test.sh)"
bg_wait package-prepare
PKGTEST_BUILT=1 bash scripts/package-test.sh
say "all checks passed"
