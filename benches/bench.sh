#!/usr/bin/env bash
# `make bench`: the criterion micro-benchmarks, then the load suite (`make bench` starts the
# stack first: the suite borrows its broker, Postgres and schema registry, and starts its own
# service processes from the profile built here). The report goes to .bench/<UTC timestamp>/.
#
#   BENCH_QUICK=1          short runs at low rates and small sizes (development)
#   BENCH_PROFILE=release  cargo profile of everything measured: services, load generator,
#                          micro-benchmarks (default release; the report says which ran)
#   BENCH_* sizes          see the README's Benchmarks section (`paystream-load suite --help`)
#   extra arguments go to `paystream-load suite`
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
PROFILE="${BENCH_PROFILE:-release}"
OUT="${PAYSTREAM_BENCH_OUT:-$ROOT/.bench}"
REGISTRY="${PAYSTREAM_SCHEMA_REGISTRY__URL:-http://127.0.0.1:8081}"
cd "$ROOT"

quick=()
if [[ "${BENCH_QUICK:-0}" != 0 ]]; then quick=(--quick); fi
case "$PROFILE" in
  dev) BIN_DIR="$CARGO_TARGET_DIR/debug" ;;
  *) BIN_DIR="$CARGO_TARGET_DIR/$PROFILE" ;;
esac

if ! curl -fsS -o /dev/null "$REGISTRY/subjects"; then
  echo "the schema registry at $REGISTRY does not answer: start the stack first (make up)" >&2
  exit 1
fi

started=$(date +%s)
echo "== building (profile $PROFILE)"
# The whole workspace: the suite starts gateway, payment-processor, analytics, notifier and
# psp-simulator processes from $BIN_DIR, beside the load generator.
cargo build --profile "$PROFILE" --workspace --bins --quiet
cargo bench --profile "$PROFILE" -p paystream-benches --bench micro --no-run --quiet

echo "== micro-benchmarks (criterion)"
mkdir -p "$OUT/criterion"
CRITERION_HOME="$OUT/criterion" cargo bench --profile "$PROFILE" -p paystream-benches \
  --bench micro --quiet -- "${quick[@]}"

echo "== load suite"
"$BIN_DIR/paystream-load" --out "$OUT" --service-bin-dir "$BIN_DIR" suite --criterion-dir "$OUT/criterion" "${quick[@]}" "$@"
echo "== make bench took $(( $(date +%s) - started )) s (builds included)"
