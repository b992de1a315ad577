#!/usr/bin/env bash
# The demo: installs what it needs, builds flowgate, and runs Temporal + flowgate + real
# clients (allowed and denied calls, a worker completing a workflow, the decision records).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v temporal >/dev/null 2>&1; then
  export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
fi
cargo build --release --quiet
exec python3 scripts/demo.py
