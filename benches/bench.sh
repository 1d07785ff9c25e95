#!/usr/bin/env bash
# `make bench`: the criterion micro-benchmarks, then the load suite against the running stack
# (`make bench` starts the stack first). The report goes to .bench/<UTC timestamp>/.
#
#   BENCH_QUICK=1      short runs at low rates (development; about two minutes)
#   BENCH_PROFILE=dev  cargo profile of the generator and micro-benchmarks (default dev: the
#                      profile the local stack runs; `release` builds everything optimised)
#   extra arguments go to `paystream-load suite` (see `paystream-load suite --help`)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
PROFILE="${BENCH_PROFILE:-dev}"
OUT="${PAYSTREAM_BENCH_OUT:-$ROOT/.bench}"
GATEWAY="${PAYSTREAM_LOAD_GATEWAY_URL:-http://127.0.0.1:8080}"
cd "$ROOT"

quick=()
if [[ "${BENCH_QUICK:-0}" != 0 ]]; then quick=(--quick); fi
case "$PROFILE" in
  dev) BIN_DIR="$CARGO_TARGET_DIR/debug" ;;
  *) BIN_DIR="$CARGO_TARGET_DIR/$PROFILE" ;;
esac

if ! curl -fsS -o /dev/null "$GATEWAY/health/ready"; then
  echo "the gateway at $GATEWAY is not ready: start the stack first (make up)" >&2
  exit 1
fi

started=$(date +%s)
echo "== building (profile $PROFILE)"
cargo build --profile "$PROFILE" -p paystream-load --bins --quiet
cargo bench --profile "$PROFILE" -p paystream-benches --bench micro --no-run --quiet

echo "== micro-benchmarks (criterion)"
mkdir -p "$OUT/criterion"
CRITERION_HOME="$OUT/criterion" cargo bench --profile "$PROFILE" -p paystream-benches \
  --bench micro --quiet -- "${quick[@]}"

echo "== load suite"
"$BIN_DIR/paystream-load" --out "$OUT" suite --criterion-dir "$OUT/criterion" "${quick[@]}" "$@"
echo "== make bench took $(( $(date +%s) - started )) s (builds included)"
