#!/usr/bin/env bash
# The side-by-side harness in ../shared/bench: the raw floor, PGQueuer, pq, procrastinate and
# sa_pgtq, each on a fresh embedded PostgreSQL in one run; one JSON line per system.
#   bench/peers.sh [systems...]     (default: raw pgqueuer sa_pgtq)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
harness="$here/../../shared/bench"
[ -d "$harness" ] || { echo "no side-by-side harness at $harness" >&2; exit 1; }
py="$(BENCH_VENV="${BENCH_VENV:-/tmp/bench-venv}" "$harness/setup.sh")"
"$(dirname "$py")/pip" install -q -e "$here/.."
exec "$harness/run_peers.sh" "$py" "${@:-raw pgqueuer sa_pgtq}"
