#!/usr/bin/env bash
# Installs Temporal's full server binary (go.temporal.io/server/cmd/server), the one that can
# run with Temporal's own JWT ClaimMapper + Authorizer (the dev server cannot), as
# $FLOWGATE_CACHE/bin/temporal-server, through scripts/install-go-tool.sh (idempotent: nothing is
# built when the binary there reports the wanted module version).
#
# The build takes ~10+ minutes on a 2-core machine the first time; later runs reuse the binary
# and Go's build/module caches (a few GB). v1.31.2 needs Go >= 1.26.4 (its go.mod); an older
# local Go fetches that toolchain as a Go module.
#
#   TEMPORAL_SERVER="$(bash scripts/install-temporal-server.sh | tail -n1)"
#
# Environment:
#   TEMPORAL_SERVER_VERSION  module version to build (default v1.31.2)
#   FLOWGATE_CACHE           cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/flowgate)
# Progress goes to stderr; the last line on stdout is the binary's absolute path.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/install-go-tool.sh" \
  temporal-server go.temporal.io/server cmd/server "${TEMPORAL_SERVER_VERSION:-v1.31.2}"
