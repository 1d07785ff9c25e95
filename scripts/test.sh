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
echo "== Helm chart: lint, renderings validated, refused values (make chart-check)"
"$ROOT/scripts/chart-check.sh"
echo "== Python tests: confluent-kafka interoperability, chart renderings, deployment configuration"
"$PYTHON" -m pytest -q "$ROOT/services/e2e-tests/python"

echo "== Rust unit and integration tests"
# cargo-nextest runs test binaries in parallel and .config/nextest.toml serialises the heaviest.
# Installed once (cached in ~/.cargo/bin, about 6 minutes on 2 cores); if that fails, cargo
# test, which runs one test binary at a time.
NEXTEST_VERSION=0.9.151
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest $NEXTEST_VERSION" >&2
  CARGO_TARGET_DIR="$CACHE_DIR/nextest-target" \
    cargo install cargo-nextest --version "$NEXTEST_VERSION" --locked --quiet ||
    echo "[test] cargo-nextest could not be installed; falling back to cargo test" >&2
fi
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  echo "(cargo-nextest not installed: running cargo test)"
  cargo test --workspace --no-fail-fast
fi
