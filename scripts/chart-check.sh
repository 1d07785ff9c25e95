#!/usr/bin/env bash
# `make chart-check`: the Helm chart (deploy/helm/paystream) checked without a cluster.
#
#   1. `helm lint --strict` with each values set below;
#   2. `helm template` with the default install (values.yaml plus only the values every install
#      must set, ci/minimal-values.yaml), values-dev.yaml and every other ci/*-values.yaml
#      (production-like, every optional component on), each rendering validated by
#      scripts/chart_validate.py: `kubernetes-validate --strict` against the newest Kubernetes
#      it ships schemas for and the chart's oldest supported one, the Prometheus Operator's CRDs
#      against our own schemas (ci/crd-schemas), nothing skipped;
#   3. every ci/bad/*.yaml must be refused, with each message its `# expect:` lines name;
#   4. README.md's values table must match values.yaml (scripts/chart-readme.py).
#
# Helm is built once from the Go module proxy (scripts/helm.sh), kubernetes-validate comes from
# the test venv (scripts/python-env.sh). Environment: PAYSTREAM_CACHE_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHART="$ROOT/deploy/helm/paystream"
# The newest Kubernetes kubernetes-validate 1.37.0 ships schemas for, and the chart's floor
# (Chart.yaml kubeVersion >=1.25).
KUBE_VERSIONS=(1.37.0 1.25.0)
RELEASE=paystream

HELM=$("$ROOT/scripts/helm.sh")
PYTHON=$("$ROOT/scripts/python-env.sh")
VENV_BIN="$(dirname "$PYTHON")"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=0
fail() { printf 'chart-check: FAILED: %s\n' "$*"; failed=1; }

cd "$CHART"
# The renderings: label and values file ("" = the chart's defaults alone, never installable).
sets=("default install (ci/minimal-values.yaml)=ci/minimal-values.yaml" "values-dev.yaml=values-dev.yaml")
for f in ci/*-values.yaml; do
  [[ $f == ci/minimal-values.yaml ]] || sets+=("$f=$f")
done

echo "-- helm lint --strict ($("$HELM" version --template '{{.Version}}'))"
for set in "${sets[@]}"; do
  file=${set#*=}
  if out=$("$HELM" lint --strict . -f "$file" 2>&1); then
    echo "$file: $(tail -1 <<<"$out")"
  else
    echo "$out"
    fail "helm lint --strict -f $file"
  fi
done

echo "-- helm template + kubernetes-validate --strict (Kubernetes ${KUBE_VERSIONS[*]})"
validate_args=(--crd-schemas "$CHART/ci/crd-schemas" --kubernetes-validate "$VENV_BIN/kubernetes-validate")
for v in "${KUBE_VERSIONS[@]}"; do validate_args+=(--kube-version "$v"); done
for set in "${sets[@]}"; do
  label=${set%%=*} file=${set#*=}
  rendering="$WORK/$(basename "$file").rendered.yaml"
  if ! "$HELM" template "$RELEASE" . -f "$file" >"$rendering" 2>"$WORK/err"; then
    cat "$WORK/err"
    fail "helm template -f $file"
    continue
  fi
  "$PYTHON" "$ROOT/scripts/chart_validate.py" --label "$label" "${validate_args[@]}" "$rendering" ||
    fail "$label does not validate"
done

echo "-- values the chart must refuse (ci/bad)"
for file in ci/bad/*.yaml; do
  mapfile -t expected < <(sed -n 's/^# expect: //p' "$file")
  if [[ ${#expected[@]} -eq 0 ]]; then
    fail "$file has no '# expect: <message>' line"
    continue
  fi
  if "$HELM" template "$RELEASE" . -f "$file" >/dev/null 2>"$WORK/err"; then
    fail "$file rendered, but must be refused with: ${expected[*]}"
    continue
  fi
  missing=()
  for message in "${expected[@]}"; do
    grep -qF -- "$message" "$WORK/err" || missing+=("$message")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then
    cat "$WORK/err"
    fail "$file was refused, but without: ${missing[*]}"
  else
    echo "$file: refused: $(printf '%s; ' "${expected[@]}" | sed 's/; $//')"
  fi
done

echo "-- README.md values table"
if "$PYTHON" "$ROOT/scripts/chart-readme.py" --check; then
  echo "README.md lists every value of values.yaml"
else
  fail "README.md is stale: run scripts/chart-readme.py"
fi

if [[ $failed -ne 0 ]]; then
  echo "chart-check: FAILED (above)"
  exit 1
fi
echo "chart-check: OK"
