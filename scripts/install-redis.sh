#!/usr/bin/env bash
# Ensures `redis-server` is installed (Debian package redis-server), for the end-to-end tests
# of the shared replay cache. Idempotent and non-interactive (scripts/apt-install.sh); never
# starts, enables or stops the system service: the tests run their own redis-server on a free
# loopback port.
#
#   REDIS_SERVER="$(bash scripts/install-redis.sh | tail -n1)"
#
# Progress goes to stderr; the last line on stdout is the absolute path of redis-server.
set -euo pipefail

find_redis() {
  command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; }
}

if bin="$(find_redis)" && [[ -n "$bin" ]] && "$bin" --version >/dev/null 2>&1; then
  echo "$bin"
  exit 0
fi

bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" redis-server

bin="$(find_redis)" || true
if [[ -z "$bin" ]] || ! "$bin" --version >/dev/null 2>&1; then
  echo "install-redis.sh: redis-server was installed but does not run" >&2
  exit 1
fi
echo "$bin"
