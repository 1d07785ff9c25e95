#!/usr/bin/env bash
# A virtualenv outside the repo with the real third-party Kafka client (Python confluent-kafka
# with its Avro and Schema Registry extras) and pytest. Idempotent; prints the venv's python.
set -euo pipefail
CACHE_DIR="${PAYSTREAM_CACHE_DIR:-$HOME/.cache/paystream}"
VENV="$CACHE_DIR/venv"
REQUIREMENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/services/e2e-tests/python/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
if [[ ! -x $VENV/bin/python || ! -f $STAMP || $(cat "$STAMP") != "$want" ]]; then
  echo "[python-env] installing $REQUIREMENTS into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
  echo "$want" >"$STAMP"
fi
echo "$VENV/bin/python"
