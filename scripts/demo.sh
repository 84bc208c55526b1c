#!/usr/bin/env bash
# README's first command: the whole platform on embedded defaults (SQLite, a local object-store
# folder, CPU backends), pre-labeling the sample data beside the checkout, with Label Studio and
# Airflow left running in the background. State lives in .demo/; running it again does no
# duplicate work.
#   scripts/demo.sh          set up, start, pre-label, print where to review
#   scripts/demo.sh stop     stop every process the demo started
#   scripts/demo.sh reset    stop, then delete .demo/
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-up}
if [[ "$cmd" == "up" ]]; then
  scripts/bootstrap.sh
fi
exec .venv/bin/python scripts/demo.py "$cmd"
