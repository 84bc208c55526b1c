#!/usr/bin/env bash
# Create or refresh .venv-mineru, MinerU 4.x in a virtualenv of its own, from requirements/mineru.txt.
# MinerU pins onnxruntime, numpy, fastapi and friends in ranges that clash with Airflow's, so it never
# enters .venv; labelloop reaches it as a subprocess (`mineru-kit parse`) or over HTTP (`mineru-api`).
# Idempotent and fast when up to date (a stamp file holds the lock's hash). Called by bootstrap.sh and
# by the tests that run MinerU (tests/mineru_env.py). Its `flash` tier needs no model download; scans
# need `mineru-kit models download` (docs/documents.md).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${LABELLOOP_MINERU_VENV:-.venv-mineru}
LOCK=requirements/mineru.txt
PYTHON_BIN=${PYTHON:-}
if [[ -z "$PYTHON_BIN" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON_BIN=$(command -v "$cand"); break
    fi
  done
fi
[[ -n "$PYTHON_BIN" ]] || { echo "ensure-mineru: Python 3.11 is required (set PYTHON=...)" >&2; exit 1; }
UV=$(command -v uv || echo "$("$PYTHON_BIN" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv")
want=$(sha256sum "$LOCK" | cut -c1-16)
if [[ -f "$DIR/.labelloop-lock" && "$(cat "$DIR/.labelloop-lock")" == "$want" && -x "$DIR/bin/mineru-kit" ]]; then
  exit 0
fi
echo "ensure-mineru: syncing $DIR from $LOCK" >&2
[[ -x "$DIR/bin/python" ]] || "$UV" venv --quiet --python "$PYTHON_BIN" "$DIR"
VIRTUAL_ENV="$PWD/$DIR" "$UV" pip sync --quiet "$LOCK"
"$DIR/bin/mineru-kit" --help >/dev/null
echo "$want" > "$DIR/.labelloop-lock"
