#!/usr/bin/env bash
# README's test command: set up what the tests need, lint, and run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k ingest).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
scripts/ensure-postgres.sh
scripts/ensure-redis.sh
scripts/ensure-chromium.sh
scripts/ensure-fonts.sh
scripts/ensure-libreoffice.sh
export LABELLOOP_TEST_PG_ADMIN_URL=${LABELLOOP_TEST_PG_ADMIN_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/postgres}
.venv/bin/ruff check .
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then
  echo "test.sh: pytest collected no tests - failing on purpose" >&2
  exit 1
fi
exit $rc
