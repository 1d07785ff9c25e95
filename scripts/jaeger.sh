#!/usr/bin/env bash
# Jaeger v2 (the OpenTelemetry-collector based binary), built from the Go module proxy, for the
# local stack's traces: OTLP in, in-memory storage, the query API out.
#
#   scripts/jaeger.sh install     build the binary once into the cache (idempotent)
#   scripts/jaeger.sh preflight   install, then check the ports are free; one line on failure
#   scripts/jaeger.sh run         preflight, then run Jaeger in the foreground with
#                                 deploy/jaeger/config.yaml (scripts/stack.sh supervises it)
#
# The module github.com/jaegertracing/jaeger v1.76.0 carries the v2 binary (cmd/jaeger). Its
# go.mod has `replace` directives, so `go install pkg@version` refuses it: tools/jaeger is a
# small module that requires it as a tool (go.mod, go.sum, the replaces copied over), and
# `install` runs `go build` there. Needs Go 1.24+ and the module proxy (GOPROXY); GOPATH and
# GOCACHE keep their defaults. The first build takes a few minutes on two cores.
#
# Environment: PAYSTREAM_JAEGER_OTLP_GRPC_ADDR (127.0.0.1:4317), PAYSTREAM_JAEGER_OTLP_HTTP_ADDR
# (127.0.0.1:4318), PAYSTREAM_JAEGER_QUERY_ADDR (127.0.0.1:16686, HTTP query API),
# PAYSTREAM_JAEGER_QUERY_GRPC_ADDR (127.0.0.1:16685), PAYSTREAM_JAEGER_MAX_TRACES (100000 traces
# kept in memory), PAYSTREAM_CACHE_DIR (~/.cache/paystream), GO (go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
# Keep in step with the version required in tools/jaeger/go.mod (checked below).
JAEGER_VERSION=1.76.0
JAEGER_HOME="$CACHE_DIR/jaeger-$JAEGER_VERSION"
JAEGER_BIN="$JAEGER_HOME/jaeger"
TOOLS_DIR="$ROOT/tools/jaeger"
CONFIG="$ROOT/deploy/jaeger/config.yaml"
GO="${GO:-go}"

export PAYSTREAM_JAEGER_OTLP_GRPC_ADDR="${PAYSTREAM_JAEGER_OTLP_GRPC_ADDR:-127.0.0.1:4317}"
export PAYSTREAM_JAEGER_OTLP_HTTP_ADDR="${PAYSTREAM_JAEGER_OTLP_HTTP_ADDR:-127.0.0.1:4318}"
export PAYSTREAM_JAEGER_QUERY_ADDR="${PAYSTREAM_JAEGER_QUERY_ADDR:-127.0.0.1:16686}"
export PAYSTREAM_JAEGER_QUERY_GRPC_ADDR="${PAYSTREAM_JAEGER_QUERY_GRPC_ADDR:-127.0.0.1:16685}"
export PAYSTREAM_JAEGER_MAX_TRACES="${PAYSTREAM_JAEGER_MAX_TRACES:-100000}"

die() { printf 'jaeger: %s\n' "$*" >&2; exit 1; }
log() { printf '[jaeger] %s\n' "$*" >&2; }

install() {
  grep -q "github.com/jaegertracing/jaeger v$JAEGER_VERSION" "$TOOLS_DIR/go.mod" ||
    die "tools/jaeger/go.mod and scripts/jaeger.sh name different Jaeger versions"
  if [[ -x $JAEGER_BIN && -f $JAEGER_HOME/.complete ]]; then return 0; fi
  command -v "$GO" >/dev/null ||
    die "Go 1.24+ is needed to build Jaeger $JAEGER_VERSION; install it (https://go.dev/dl) or set GO"
  log "building Jaeger $JAEGER_VERSION (cmd/jaeger) from the Go module proxy into $JAEGER_HOME; a few minutes the first time"
  mkdir -p "$JAEGER_HOME"
  rm -f "$JAEGER_HOME/.complete"
  local out started=$SECONDS; out=$(mktemp)
  # -mod=mod: go.sum may lack a checksum the local toolchain wants; the proxy's checksum
  # database verifies whatever it adds. -trimpath: no build paths in the binary.
  if ! (cd "$TOOLS_DIR" && GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod" CGO_ENABLED=0 \
    "$GO" build -trimpath -o "$JAEGER_BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) >"$out" 2>&1; then
    tail -n 5 "$out" >&2
    rm -f "$out" "$JAEGER_BIN.tmp"
    die "building Jaeger $JAEGER_VERSION failed (above); check Go ($("$GO" env GOVERSION 2>/dev/null || echo unknown)) and the module proxy ($("$GO" env GOPROXY 2>/dev/null))"
  fi
  rm -f "$out"
  mv "$JAEGER_BIN.tmp" "$JAEGER_BIN"
  echo "github.com/jaegertracing/jaeger/cmd/jaeger v$JAEGER_VERSION built $(date -u +%FT%TZ) in $((SECONDS - started))s" \
    >"$JAEGER_HOME/.complete"
  log "built $JAEGER_BIN in $((SECONDS - started))s"
}

port_taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

preflight() {
  install
  [[ -f $CONFIG ]] || die "$CONFIG is missing"
  local addr
  for addr in "$PAYSTREAM_JAEGER_OTLP_GRPC_ADDR" "$PAYSTREAM_JAEGER_OTLP_HTTP_ADDR" \
    "$PAYSTREAM_JAEGER_QUERY_ADDR" "$PAYSTREAM_JAEGER_QUERY_GRPC_ADDR"; do
    if port_taken "$addr"; then
      die "$addr is already taken by another process; stop it (ss -ltnp | grep :${addr##*:}) or set the PAYSTREAM_JAEGER_*_ADDR variables"
    fi
  done
}

run() {
  preflight
  # exec: the supervisor's SIGTERM reaches Jaeger, which shuts down cleanly.
  exec "$JAEGER_BIN" --config "$CONFIG"
}

case "${1:-}" in
  install) install ;;
  preflight) preflight ;;
  run) run ;;
  *) echo "usage: $0 install|preflight|run" >&2; exit 2 ;;
esac
