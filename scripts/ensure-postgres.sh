#!/usr/bin/env bash
# Make sure the local PostgreSQL answers on 127.0.0.1:5432 (start the cluster if it is down),
# and create the databases the tests use. Tests create one more database per test from a template.
set -euo pipefail
HOST=${PGHOST:-127.0.0.1}; PORT=${PGPORT:-5432}; USER_=${PGUSER:-postgres}
if ! pg_isready -q -h "$HOST" -p "$PORT"; then
  echo "ensure-postgres: starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n1)" main start
  else
    echo "ensure-postgres: PostgreSQL is not running and pg_ctlcluster is unavailable" >&2; exit 1
  fi
  for _ in $(seq 1 30); do pg_isready -q -h "$HOST" -p "$PORT" && break; sleep 1; done
fi
pg_isready -h "$HOST" -p "$PORT"
for db in labelloop_test airflow_test; do
  if ! psql -h "$HOST" -p "$PORT" -U "$USER_" -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
    psql -h "$HOST" -p "$PORT" -U "$USER_" -d postgres -qc "CREATE DATABASE $db"
  fi
done
