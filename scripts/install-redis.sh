#!/usr/bin/env bash
# Ensures `redis-server` is installed (Debian package redis-server), for the end-to-end tests
# of the shared replay cache. Idempotent and non-interactive; never starts, enables or stops
# the system service: the tests run their own redis-server on a free loopback port.
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

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-redis.sh: redis-server is missing and there is no apt-get; install it by hand" >&2
  exit 1
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
    echo "install-redis.sh: need root (or sudo) to apt-get install redis-server" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# policy-rc.d exiting 101 tells invoke-rc.d not to start the service the package installs
# (only when there is no policy already; removed again afterwards).
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  added_policy=1
fi
cleanup_policy() { if ((added_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
trap 'cleanup_policy; rm -f "$log"' EXIT

echo "install-redis.sh: installing redis-server with apt-get" >&2
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold redis-server >"$log" 2>&1
}
# The package lists may be missing or stale on a fresh machine: update once and retry.
if ! apt_install; then
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
  if ! apt_install; then
    echo "install-redis.sh: apt-get install redis-server failed:" >&2
    cat "$log" >&2
    exit 1
  fi
fi

bin="$(find_redis)" || true
if [[ -z "$bin" ]] || ! "$bin" --version >/dev/null 2>&1; then
  echo "install-redis.sh: redis-server was installed but does not run" >&2
  exit 1
fi
echo "$bin"
