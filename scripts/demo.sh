#!/usr/bin/env bash
# README's first command: run labelloop's main job end to end on embedded defaults
# (SQLite curation DB, local object store folder), on the sample data beside the checkout.
# State lives in .demo/ ; running it again does no duplicate work.
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES=${LABELLOOP_SAMPLE_DATA:-$(cd .. && pwd)/shared/data}
[[ -d "$SAMPLES" ]] || { echo "demo: sample data not found at $SAMPLES (set LABELLOOP_SAMPLE_DATA)" >&2; exit 1; }

LABELLOOP_SKIP_LS_VENV=1 scripts/bootstrap.sh
export LABELLOOP_HOME="$PWD/.demo/home"
export LABELLOOP_DB__URL="sqlite:///$PWD/.demo/home/labelloop.db"
export LABELLOOP_STORAGE__ROOT="$PWD/.demo/home/objects"

.venv/bin/labelloop db upgrade
echo "== ingest $SAMPLES"
.venv/bin/labelloop ingest "$SAMPLES"
.venv/bin/labelloop status --rejects
echo
echo "Curation DB: $LABELLOOP_DB__URL   objects: $LABELLOOP_STORAGE__ROOT"
