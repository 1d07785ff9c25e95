#!/usr/bin/env bash
# CPU profile of one running stack process under load: `perf record` on it while
# `paystream-load` drives the gateway (closed model, maximum rate). Writes the perf data and a
# text report (hottest symbols) to .bench/profile-<process>-<UTC time>.{data,txt}.
#
#   benches/profile.sh [process name, default gateway] [seconds, default 15] [clients, default 64]
#
# Needs `perf` (Debian: linux-perf; installed here when missing) and the stack (make up).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"
OUT="${PAYSTREAM_BENCH_OUT:-$ROOT/.bench}"
PROCESS="${1:-gateway}"
SECONDS_="${2:-15}"
CLIENTS="${3:-64}"
cd "$ROOT"

if ! command -v perf >/dev/null; then
  echo "installing perf (linux-perf)"
  (apt-get install -y -qq linux-perf >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq linux-perf >/dev/null)) \
    || { echo "perf is not available" >&2; exit 1; }
fi
PID="$(pgrep -x "$PROCESS" | head -1 || true)"
[[ -n "$PID" ]] || { echo "no running process named $PROCESS (make up?)" >&2; exit 1; }
if [[ "$(readlink "/proc/$PID/exe")" == *"(deleted)" ]]; then
  echo "warning: $PROCESS's binary was rebuilt since it started; its own symbols will be missing" \
       "(restart it with make up for a readable profile)" >&2
fi

cargo build -p paystream-load --bins --quiet
mkdir -p "$OUT"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
data="$OUT/profile-$PROCESS-$stamp.data"
report="$OUT/profile-$PROCESS-$stamp.txt"

echo "== perf record on $PROCESS (pid $PID) for ${SECONDS_}s under load ($CLIENTS clients)"
perf record -F 499 -g -p "$PID" -o "$data" -- sleep "$((SECONDS_ + 1))" 2>/dev/null &
perf_pid=$!
sleep 1
"$CARGO_TARGET_DIR/debug/paystream-load" --out "$OUT" run --model closed --concurrency "$CLIENTS" \
  --duration "$SECONDS_" --no-e2e >/dev/null
wait "$perf_pid"
{
  echo "# perf profile of $PROCESS (pid $PID), ${SECONDS_}s, closed model with $CLIENTS clients"
  echo
  echo "## self time by shared object"
  perf report -i "$data" --stdio --no-children --sort dso --percent-limit 1 -g none 2>/dev/null \
    | grep -v -e '^#' -e '^$'
  echo
  echo "## self time by crate (first path segment of the symbol; [k] = kernel)"
  perf report -i "$data" --stdio --no-children --sort symbol --percent-limit 0 -g none 2>/dev/null \
    | grep -v -e '^#' -e '^$' \
    | awk '{ p = $1; sub("%", "", p); kind = $2; sym = $3
             if (kind == "[k]") crate = "kernel"
             else { gsub(/^[<&*]+/, "", sym); n = split(sym, parts, "::"); crate = (n > 1) ? parts[1] : "libc/other" }
             total[crate] += p }
           END { for (c in total) if (total[c] >= 0.5) printf "%7.2f%%  %s\n", total[c], c }' \
    | sort -rn
  echo
  echo "## hottest symbols"
  perf report -i "$data" --stdio --no-children --sort dso,symbol --percent-limit 0.5 -g none 2>/dev/null \
    | grep -v -e '^#' -e '^$' | sed 's/ *- *- *$//'
} > "$report"
echo "profile: $report"
head -60 "$report"
