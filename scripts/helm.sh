#!/usr/bin/env bash
# Helm v3, built from source through the Go module proxy (tools/helm pins it with go.mod +
# go.sum) into the cache outside the repo. Idempotent: nothing is done when the binary is
# there. Prints the binary's path.
#
#   scripts/helm.sh            build if needed, print the path
#   scripts/helm.sh ARGS...    build if needed, then run helm ARGS...
#
# Environment: PAYSTREAM_CACHE_DIR (~/.cache/paystream), GO (go).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
# Keep in step with the helm.sh/helm/v3 version in tools/helm/go.mod (checked below).
HELM_VERSION=3.22.0
HELM_DIR="$CACHE_DIR/helm-$HELM_VERSION"
HELM="$HELM_DIR/helm"
GO="${GO:-go}"

die() { printf 'helm: %s\n' "$*" >&2; exit 1; }

if [[ ! -x $HELM ]]; then
  grep -Eq "^\s*helm.sh/helm/v3 v$HELM_VERSION( |\$)" "$ROOT/tools/helm/go.mod" ||
    die "tools/helm/go.mod and scripts/helm.sh name different Helm versions"
  command -v "$GO" >/dev/null ||
    die "Go is needed to build Helm $HELM_VERSION (apt-get install golang, or set GO)"
  echo "[helm] building Helm $HELM_VERSION from the Go module proxy into $HELM_DIR (a few minutes, once)" >&2
  mkdir -p "$HELM_DIR"
  # Linker flags as in Helm's own Makefile: the version it prints, and the Kubernetes version
  # `helm lint` and `helm template` assume (client-go v0.X.Y -> 1.X).
  k8s_minor=$(sed -nE 's/^\s*k8s.io\/client-go v0\.([0-9]+)\..*/\1/p' "$ROOT/tools/helm/go.mod")
  [[ -n $k8s_minor ]] || die "no k8s.io/client-go in tools/helm/go.mod"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.metadata="
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
  done
  (cd "$ROOT/tools/helm" &&
    CGO_ENABLED=0 "$GO" build -trimpath -o "$HELM.tmp" -ldflags "$ldflags" helm.sh/helm/v3/cmd/helm) ||
    die "could not build Helm $HELM_VERSION (above); check the network to the Go module proxy"
  mv "$HELM.tmp" "$HELM"
fi
if [[ $# -eq 0 ]]; then echo "$HELM"; else exec "$HELM" "$@"; fi
