#!/usr/bin/env bash
# `make chaos`: the chaos soak (services/e2e-tests/src/chaos/) with CHAOS_PAYMENTS payments
# (default 100,000; CHAOS_RATE arrivals/s, default 60; CHAOS_SEED to replay a run). It runs its
# own broker and Postgres (restarted during the soak) and uses the stack's schema registry and
# the venv's Python confluent-kafka as the read_committed oracle. Prints the verdict table,
# keeps it in .chaos/, and exits non-zero on any miss.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
cd "$ROOT"

"$ROOT/scripts/stack.sh" up # builds the service binaries the soak runs
PAYSTREAM_PYTHON=$("$ROOT/scripts/python-env.sh")
export PAYSTREAM_PYTHON
cargo build --quiet -p paystream-e2e-tests --bin chaos
echo "== chaos soak: ${CHAOS_PAYMENTS:-100000} payments, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
exec "$CARGO_TARGET_DIR/debug/chaos"
