#!/usr/bin/env bash
# Starts local PostgreSQL and Redis for the e2e tests when they are not already running.
# A service that cannot be started is reported loudly; the tests that need it then skip
# with a message naming it (see tests/conftest.py), the rest still run.
set -uo pipefail

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  echo "Redis is not running on 127.0.0.1:6379: starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log \
    || echo "!!! could not start Redis: tests marked e2e that need it will be skipped" >&2
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
  echo "PostgreSQL is not running on 127.0.0.1:5432: starting it"
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start \
      || echo "!!! could not start PostgreSQL: tests that need it will be skipped" >&2
  else
    echo "!!! PostgreSQL is not installed: tests that need it will be skipped" >&2
  fi
fi
for _ in $(seq 1 20); do
  (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break
  sleep 0.5
done
exit 0
