#!/usr/bin/env bash
# Installs Temporal's full server binary (go.temporal.io/server/cmd/server), the one that can
# run with Temporal's own JWT ClaimMapper + Authorizer (the dev server cannot).
#
# Idempotent: does nothing when the binary is already there and was built from the wanted
# module version (checked with `go version -m`, not by trusting the file name). The build
# takes ~10+ minutes on a 2-core machine the first time; later runs reuse the binary and
# Go's build/module caches (a few GB). v1.31.2 needs
# Go >= 1.26.4 (its go.mod); an older local Go fetches that toolchain as a Go module.
#
#   TEMPORAL_SERVER="$(bash scripts/install-temporal-server.sh | tail -n1)"
#
# Environment:
#   TEMPORAL_SERVER_VERSION  module version to build (default v1.31.2)
#   FLOWGATE_CACHE           cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/flowgate);
#                            the binary goes to $FLOWGATE_CACHE/bin/temporal-server
# Progress goes to stderr; the last line on stdout is the binary's absolute path.
set -euo pipefail

VERSION="${TEMPORAL_SERVER_VERSION:-v1.31.2}"
MODULE="go.temporal.io/server"
CACHE="${FLOWGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate}"
BIN_DIR="$CACHE/bin"
BIN="$BIN_DIR/temporal-server"

have_version() {
  [[ -x "$1" ]] || return 1
  go version -m "$1" 2>/dev/null | awk -v m="$MODULE" -v v="$VERSION" '
    $1 == "mod" && $2 == m && $3 == v { ok = 1 } END { exit ok ? 0 : 1 }'
}

if ! command -v go >/dev/null 2>&1; then
  for d in /usr/local/go/bin "$HOME/go/bin"; do
    [[ -x "$d/go" ]] && PATH="$d:$PATH"
  done
fi
if ! command -v go >/dev/null 2>&1; then
  echo "install-temporal-server.sh: no Go toolchain (go) on PATH" >&2
  exit 1
fi

if have_version "$BIN"; then
  echo "install-temporal-server.sh: $BIN is already $MODULE $VERSION" >&2
  echo "$BIN"
  exit 0
fi

mkdir -p "$BIN_DIR"
# Build into a private GOBIN, then move into place atomically: an interrupted build never
# leaves a half-written binary at $BIN, and two concurrent runs don't clobber each other.
tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "install-temporal-server.sh: building $MODULE/cmd/server@$VERSION (slow the first time)" >&2
start=$(date +%s)
# CGO off: the SQLite plugin is pure Go, and a static binary has no libc surprises.
# GOFLAGS from the environment (e.g. -mod=vendor) must not leak into a module-mode install.
if ! CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$tmp" \
    go install "$MODULE/cmd/server@$VERSION" >"$tmp/build.log" 2>&1; then
  echo "install-temporal-server.sh: go install failed:" >&2
  cat "$tmp/build.log" >&2
  exit 1
fi
mv -f "$tmp/server" "$BIN"
if ! have_version "$BIN"; then
  echo "install-temporal-server.sh: $BIN was built but does not report $MODULE $VERSION" >&2
  go version -m "$BIN" >&2 || true
  exit 1
fi
echo "install-temporal-server.sh: built $BIN in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
