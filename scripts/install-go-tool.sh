#!/usr/bin/env bash
# Builds a Go program the test suite uses (helm, actionlint, Jaeger) from the Go module proxy into
# the cache, once per version: `helm lint`/`helm template` for the chart in deploy/helm, actionlint
# for the GitHub Actions workflows in deploy/, Jaeger as the OTLP receiver of the traces tests.
#
#   bash scripts/install-go-tool.sh helm helm.sh/helm/v4 cmd/helm v4.3.2
#
# (scripts/install-temporal-server.sh builds Temporal's full server with it too.)
#
# Further arguments pin dependencies, for a program whose go.mod names a version the module
# proxy does not serve (Temporal's UI server names go.temporal.io/api v1.64.0):
#
#   bash scripts/install-go-tool.sh temporal-ui-server github.com/temporalio/ui-server/v2 \
#     cmd/server v2.58.1 go.temporal.io/api@v1.64.3
#
# Idempotent: does nothing when $FLOWGATE_CACHE/bin/<name> was built from that module version
# (checked with `go version -m`, not by trusting the file name). Builds into a private directory
# and moves the binary into place, so an interrupted build never leaves half a binary.
# Progress goes to stderr; the last line on stdout is the binary's absolute path.
set -euo pipefail

if (($# < 4)); then
  echo "usage: bash scripts/install-go-tool.sh NAME MODULE PACKAGE VERSION [DEPENDENCY@VERSION ...]" >&2
  exit 2
fi
NAME="$1" MODULE="$2" PACKAGE="$3" VERSION="$4"
PINS=("${@:5}")
CACHE="${FLOWGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate}"
BIN_DIR="$CACHE/bin"
BIN="$BIN_DIR/$NAME"

if ! command -v go >/dev/null 2>&1; then
  for d in /usr/local/go/bin "$HOME/go/bin"; do
    [[ -x "$d/go" ]] && PATH="$d:$PATH"
  done
fi
command -v go >/dev/null 2>&1 || { echo "install-go-tool.sh: no Go toolchain (go) on PATH" >&2; exit 1; }

have_version() {
  [[ -x "$1" ]] || return 1
  go version -m "$1" 2>/dev/null | awk -v m="$MODULE" -v v="$VERSION" '
    ($1 == "mod" || $1 == "dep") && $2 == m && $3 == v { ok = 1 } END { exit ok ? 0 : 1 }'
}

if have_version "$BIN"; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN_DIR"
tmp="$(mktemp -d "$BIN_DIR/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "install-go-tool.sh: building $MODULE/$PACKAGE@$VERSION" >&2
start=$(date +%s)
# `go install m/p@v` refuses a module whose go.mod has replace directives (Jaeger's does); such
# a program is built as a dependency of a throw-away module instead (`go get -tool`), which
# resolves the same versions minus the replacements.
build_in_module() {
  mkdir -p "$tmp/mod"
  (cd "$tmp/mod" && go mod init flowgate.invalid/tool >/dev/null 2>&1 &&
    go get -tool "$MODULE/$PACKAGE@$VERSION" ${PINS[@]+"${PINS[@]}"} &&
    go build -o "$tmp/$(basename "$PACKAGE")" "$MODULE/$PACKAGE")
}
if ((${#PINS[@]})); then
  if ! CGO_ENABLED=0 GOFLAGS=-buildvcs=false build_in_module >"$tmp/build.log" 2>&1; then
    echo "install-go-tool.sh: building $MODULE/$PACKAGE@$VERSION with ${PINS[*]} failed:" >&2
    cat "$tmp/build.log" >&2
    exit 1
  fi
elif ! CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN="$tmp" \
    go install "$MODULE/$PACKAGE@$VERSION" >"$tmp/build.log" 2>&1; then
  if grep -q 'replace directives' "$tmp/build.log" &&
    CGO_ENABLED=0 GOFLAGS=-buildvcs=false build_in_module >>"$tmp/build.log" 2>&1; then
    :
  else
    echo "install-go-tool.sh: go install $MODULE/$PACKAGE@$VERSION failed:" >&2
    cat "$tmp/build.log" >&2
    exit 1
  fi
fi
mv -f "$tmp/$(basename "$PACKAGE")" "$BIN"
if ! have_version "$BIN"; then
  echo "install-go-tool.sh: $BIN was built but does not report $MODULE $VERSION" >&2
  exit 1
fi
echo "install-go-tool.sh: built $BIN in $(($(date +%s) - start))s" >&2
echo "$BIN"
