#!/usr/bin/env bash
# Installs what the test suite needs (if missing) and runs all of it: formatting, lints,
# unit and integration tests, the API document check, the static release build, and the
# packages built from it (scripts/package-test.sh: deb and rpm, amd64 and arm64, under systemd).
# Safe to run again: installs are skipped when present. Needs root (or sudo) for apt-get the
# first time on a fresh machine.
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

say "checking tools"
apt_install musl-tools file openssl curl
if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

say "peer clients (.venv-peers: websockets, aiortc, tuspy, standardwebhooks, authlib, mcp)"
apt_install python3-venv
if ! .venv-peers/bin/python -c 'import websockets, aiortc, numpy, jsonschema, rfc3339_validator, tusclient, standardwebhooks, authlib, requests, mcp.server.mcpserver' >/dev/null 2>&1; then
    [ -x .venv-peers/bin/pip ] || python3 -m venv .venv-peers
    .venv-peers/bin/pip install --quiet --disable-pip-version-check 'websockets>=15,<18' 'aiortc>=1.14,<2' 'numpy>=1.26,<3' \
        'jsonschema>=4.23,<5' 'rfc3339-validator>=0.1.4,<0.2' 'tuspy>=1.1,<2' 'standardwebhooks>=1.3,<2' \
        'authlib>=1.3,<2' 'requests>=2.31,<3' 'mcp>=2.3,<3'
fi

say "peer clients (tests/peers/node_modules: yjs, y-websocket, ws, playwright-core, oidc-provider, MCP server-everything; Debian chromium)"
command -v node >/dev/null 2>&1 || apt_install nodejs npm
apt_install chromium
if [ ! -d tests/peers/node_modules/y-websocket ] || [ ! -d tests/peers/node_modules/playwright-core ] ||
    [ ! -d tests/peers/node_modules/oidc-provider ] || [ ! -d tests/peers/node_modules/@modelcontextprotocol/server-everything ]; then
    (cd tests/peers && npm ci --no-audit --no-fund --silent)
fi

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

say "tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --no-fail-fast
else
    cargo test --locked --no-fail-fast
fi

say "API contract: generated Python and TypeScript clients, their journeys, schemathesis (scripts/contract-test.sh)"
bash scripts/contract-test.sh

say "static release binary (x86_64-unknown-linux-musl)"
cargo build --release --locked --target x86_64-unknown-linux-musl
bin=target/x86_64-unknown-linux-musl/release/outpost
file "$bin"
if ! file "$bin" | grep -Eq 'static(-pie)? linked|statically linked'; then
    echo "error: $bin is not statically linked" >&2
    exit 1
fi
"$bin" version
ls -l "$bin"

say "packages: .deb and .rpm for amd64 and arm64, lint, install and run under systemd (scripts/package-test.sh)"
bash scripts/package-test.sh
say "all checks passed"
