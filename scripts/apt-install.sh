#!/usr/bin/env bash
# Installs Debian packages, non-interactively, for the set-up scripts (scripts/setup.sh,
# scripts/install-redis.sh): the caller has already found what is missing. As root or with
# `sudo -n`; never starts a service that a package brings (the tests start their own), and never
# asks a question (CI has no stdin).
#
#   bash scripts/apt-install.sh redis-server procps
#
# Progress goes to stderr; apt-get's own output only when it fails.
set -euo pipefail

if (($# == 0)); then
  echo "apt-install.sh: name the packages to install" >&2
  exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "apt-install.sh: no apt-get on this machine: install $* by hand" >&2
  exit 1
fi
SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
    echo "apt-install.sh: need root (or sudo) to apt-get install $*" >&2
    exit 1
  fi
fi

log="$(mktemp)"
# policy-rc.d exiting 101 tells invoke-rc.d not to start the services the packages install
# (only when there is no policy already; removed again afterwards).
policy=/usr/sbin/policy-rc.d
added_policy=0
cleanup() {
  if ((added_policy)); then "${SUDO[@]}" rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy"
  added_policy=1
fi

echo "apt-install.sh: installing $* with apt-get" >&2
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "$@" >>"$log" 2>&1 </dev/null
}
# The package lists may be missing or stale on a fresh machine: update once and retry.
if ! apt_install "$@"; then
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 </dev/null || true
  if ! apt_install "$@"; then
    echo "apt-install.sh: apt-get install $* failed:" >&2
    cat "$log" >&2
    exit 1
  fi
fi
