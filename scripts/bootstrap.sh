#!/usr/bin/env bash
# Create or refresh the virtualenvs from the pinned lock files (idempotent; fast when up to date):
#   .venv     the platform (Airflow, label-studio-sdk, GX, backends, test tools)
#   .venv-ls  the Label Studio server, whose pins clash with Airflow's
#   .venv-mineru  MinerU 4.x (scripts/ensure-mineru.sh), whose pins clash too
# Set LABELLOOP_SKIP_LS_VENV=1 / LABELLOOP_SKIP_MINERU_VENV=1 to skip those venvs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_BIN=${PYTHON:-}
if [[ -z "$PYTHON_BIN" ]]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON_BIN=$(command -v "$cand"); break
    fi
  done
fi
[[ -n "$PYTHON_BIN" ]] || { echo "bootstrap: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2; exit 1; }

UV_VERSION=0.13.8
if ! command -v uv >/dev/null || [[ "$(uv --version | awk '{print $2}')" != "$UV_VERSION" ]]; then
  echo "bootstrap: installing uv $UV_VERSION"
  "$PYTHON_BIN" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
UV=$(command -v uv || echo "$("$PYTHON_BIN" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/uv")

sync_venv() {  # sync_venv DIR LOCKFILE [editable]
  local dir=$1 lock=$2 editable=${3:-}
  local want; want=$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16)
  if [[ -f "$dir/.labelloop-lock" && "$(cat "$dir/.labelloop-lock")" == "$want" ]]; then
    echo "bootstrap: $dir up to date"; return
  fi
  echo "bootstrap: syncing $dir from $lock"
  [[ -x "$dir/bin/python" ]] || "$UV" venv --quiet --python "$PYTHON_BIN" "$dir"
  VIRTUAL_ENV="$PWD/$dir" "$UV" pip sync --quiet "$lock"
  if [[ -n "$editable" ]]; then VIRTUAL_ENV="$PWD/$dir" "$UV" pip install --quiet --no-deps -e .; fi
  echo "$want" > "$dir/.labelloop-lock"
}

sync_venv .venv requirements/lock.txt editable
if [[ "${LABELLOOP_SKIP_LS_VENV:-0}" != "1" ]]; then
  sync_venv .venv-ls requirements/label-studio.txt
fi
if [[ "${LABELLOOP_SKIP_MINERU_VENV:-0}" != "1" ]]; then
  PYTHON="$PYTHON_BIN" scripts/ensure-mineru.sh
fi
