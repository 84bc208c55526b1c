#!/usr/bin/env bash
# Make sure Redis answers on 127.0.0.1:6379 (the Celery broker of the scale-out tests): start a
# local redis-server when none is running, installing the Debian package first if it is missing.
# Each test deployment claims a DB index of its own (tests/airflow_cluster.py), so a shared Redis is fine.
set -euo pipefail
HOST=${REDIS_HOST:-127.0.0.1}; PORT=${REDIS_PORT:-6379}

ping() {  # PING over bash's /dev/tcp, so redis-cli is not needed
  exec 3<>"/dev/tcp/$HOST/$PORT" 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply; IFS= read -r -t 2 reply <&3 || true
  exec 3>&-
  [[ "$reply" == "+PONG"* ]]
}

if ping; then echo "ensure-redis: Redis answers on $HOST:$PORT"; exit 0; fi
if ! command -v redis-server >/dev/null; then
  echo "ensure-redis: installing redis-server"
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "ensure-redis: redis-server is missing and this is not root: install it (apt-get install redis-server)" >&2
    exit 1
  fi
fi
echo "ensure-redis: starting redis-server on $HOST:$PORT"
redis-server --bind "$HOST" --port "$PORT" --daemonize yes --save '' --appendonly no \
  --logfile "${TMPDIR:-/tmp}/labelloop-redis.log"
for _ in $(seq 1 30); do ping && { echo "ensure-redis: Redis answers on $HOST:$PORT"; exit 0; }; sleep 0.5; done
echo "ensure-redis: Redis did not come up; log: ${TMPDIR:-/tmp}/labelloop-redis.log" >&2
tail -n 20 "${TMPDIR:-/tmp}/labelloop-redis.log" >&2 || true
exit 1
