#!/usr/bin/env bash
# The whole test suite against the real local stack (what `make test` and CI run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
cd "$ROOT"

"$ROOT/scripts/stack.sh" up
PYTHON=$("$ROOT/scripts/python-env.sh")
# The Rust tests' third-party oracle (Python confluent-kafka) runs from the same venv.
export PAYSTREAM_PYTHON="$PYTHON"

export PAYSTREAM_BIN_DIR="$CARGO_TARGET_DIR/debug"
"$PAYSTREAM_BIN_DIR/paystream" schemas check --dir "$ROOT/schemas" # contracts vs the registry: an incompatible edit fails here
echo "== Python confluent-kafka interoperability tests"
"$PYTHON" -m pytest -q "$ROOT/services/e2e-tests/python"

echo "== Rust unit and integration tests"
# cargo-nextest when installed (`cargo install cargo-nextest --locked`: runs test binaries in
# parallel, .config/nextest.toml serialises the heaviest); otherwise cargo test, which runs one
# test binary at a time.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "(cargo-nextest not installed: running cargo test)"
  cargo test --workspace --no-fail-fast
fi
