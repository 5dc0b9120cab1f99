#!/usr/bin/env bash
# Installs the tools the load benchmarks in this directory need:
#   wrk         HTTP load generator (Outpost and nginx sides)
#   nginx       static-file peer for http_reads.sh
#   postgresql  PostgreSQL 15 server + pgbench, peer for http_writes.sh
#   fio         fsync-rate probe (fsync.sh)
#   curl, file  readiness probes and binary inspection
#   janus       Janus VideoRoom, peer for sfu.sh (iproute2 for its network namespace)
#   coturn      TURN peer for turn.sh
# Idempotent: does nothing when everything is present, and runs
# `apt-get update` only when something has to be installed.
# Needs root (or sudo) on a Debian/Ubuntu machine.
set -euo pipefail

PACKAGES=(wrk nginx postgresql fio curl file janus iproute2 coturn)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup: all packages present (${PACKAGES[*]})"
else
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        SUDO=(sudo)
    fi
    echo "setup: installing ${missing[*]}"
    "${SUDO[@]}" apt-get update
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
fi

# The Debian postgresql package starts a system cluster on port 5432; the
# benches run their own cluster on another port and leave that one alone.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
    echo "setup: /usr/lib/postgresql/15/bin/initdb not found (PostgreSQL 15 expected;" \
         "set PG_BIN to the server binaries of the installed version)" >&2
fi

command -v python3 >/dev/null || echo "setup: python3 is needed for benches/benchstat.py" >&2
