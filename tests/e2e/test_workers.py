"""The worker examples in deploy/ci/workers are projects that build and run, not snippets.

- Go: `go build` and `go vet` with the committed go.mod/go.sum (read-only: a missing go.sum
  entry fails), gofmt-clean; the binary says in one line what to set when it has no settings.
- TypeScript: `npm ci` from the committed lockfile into a copy, `tsc --noEmit`; the built worker
  says in one line what to set. The lockfile names no registry (no `resolved` URLs).
- Python: END TO END. A flowgate with `[mint]` and a TLS listener (a test CA the worker is given
  as FLOWGATE_CA_FILE) in front of the dev server; the worker starts with nothing but a GitHub
  Actions-shaped job token in CI_OIDC_TOKEN, exchanges it, polls through flowgate with the
  credential and refreshes it; an Okta deployer starts DeployWorkflow through flowgate and it
  completes with the activity's result; the decision log shows the exchange, the refresh and
  every worker call allowed under the minted credential. Without its settings, or with a gateway
  it cannot reach, the worker prints one line and exits non-zero.
- All three, against a local HTTPS stand-in for the gateway that counts what each server sees:
  the subject token goes to a token endpoint on FLOWGATE_URL's https origin only (not another
  port, host or plaintext; exit 2, before any POST), no redirect is followed (discovery's 302,
  the token endpoint's 307/308), and a token response without a credential, over 256 KiB or
  dripping past the request's deadline stops the worker with one line.

The Go toolchain and npm are required: a missing one FAILS these tests (CI installs them), and
`go build`/`npm ci` need the Go module proxy and the npm registry.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, Gateway, copy_policies, flowgate_bin, free_port, wait_port
from e2e_exchange import MINT_NAME, ts
from e2e_util import deployer, github_claims, make_ca, run, uid, wait_until
from temporalio.client import Client
from temporalio.service import TLSConfig

WORKERS = REPO / "deploy" / "ci" / "workers"
LIFETIME = 10  # seconds: mint.credential_lifetime (the minimum), so the worker refreshes within the test
WORKER_SUB = "repo:acme/payments:ref:refs/heads/main"
WORKER_POLICY = "e2e-github-payments-worker-credentials"
WITHIN_GRANT = "e2e-minted-credentials-within-grant"
# What the worker reads from its environment; none may leak in from the test's own.
WORKER_SETTINGS = ("FLOWGATE_SIDECAR", "FLOWGATE_URL", "TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE",
                   "FLOWGATE_SCOPE", "FLOWGATE_CA_FILE", "CI_OIDC_TOKEN", "FLOWGATE_SUBJECT_TOKEN_FILE")  # fmt: skip
# What the no-settings message must name.
NAMED = ("FLOWGATE_SIDECAR", "CI_OIDC_TOKEN", "FLOWGATE_SUBJECT_TOKEN_FILE", "FLOWGATE_URL", "TEMPORAL_ADDRESS",
         "namespace:payments role:worker task_queue:deploys")  # fmt: skip


def tool(name: str) -> str:
    """A toolchain program. Missing, the test fails: a skip would let CI pass without the check."""
    found = shutil.which(name)
    if found is None and name in ("go", "gofmt"):
        # Where Go's installer puts it (scripts/setup.sh looks there too).
        found = next((str(p) for p in (Path("/usr/local/go/bin") / name, Path.home() / "go" / "bin" / name)
                      if p.exists()), None)  # fmt: skip
    if found is None:
        pytest.fail(f"`{name}` is not installed: the worker examples need it (scripts/setup.sh test checks for it)",
                    pytrace=False)  # fmt: skip
    return found


def sh(cmd: list, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"`{' '.join(map(str, cmd))}` in {cwd} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    return done


def bare_env(**settings: str) -> dict:
    """The test's environment without any worker setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in WORKER_SETTINGS}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the repository
    env.update(settings)
    return env


def assert_one_line(done: subprocess.CompletedProcess, status: int, *needles: str) -> str:
    """The worker stopped with `status` and exactly one line on stderr, naming `needles`."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == status, f"exit {done.returncode}, not {status}; stderr:\n{done.stderr}"
    assert "Traceback" not in done.stderr and len(lines) == 1, f"not one line:\n{done.stderr}"
    assert lines[0].startswith("worker: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} is not in {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------------------------
# Go


def go_env() -> dict:
    # -mod=readonly: the build uses go.mod and go.sum as committed, and fails if they are short.
    return {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}


@pytest.fixture(scope="module")
def go_worker(tmp_path_factory) -> Path:
    """The Go worker, built once for this module's tests."""
    binary = tmp_path_factory.mktemp("go-worker") / "worker"
    sh([tool("go"), "build", "-o", binary, "."], WORKERS / "go", go_env())
    return binary


def test_go_worker_builds_vets_and_is_formatted(go_worker):
    go, gofmt = tool("go"), tool("gofmt")
    project = WORKERS / "go"
    sh([go, "vet", "./..."], project, go_env())
    unformatted = sh([gofmt, "-l", "."], project).stdout.strip()
    assert not unformatted, f"not gofmt-formatted: {unformatted}"
    assert re.search(r"^require go\.temporal\.io/sdk v", (project / "go.mod").read_text(), re.M)

    done = subprocess.run([go_worker], env=bare_env(), capture_output=True, text=True, timeout=30)
    assert_one_line(done, 2, *NAMED)


# --------------------------------------------------------------------------------------------
# TypeScript


def test_typescript_lockfile_names_no_registry_and_one_sdk_version():
    project = WORKERS / "typescript"
    text = (project / "package-lock.json").read_text()
    assert '"resolved"' not in text, "the lockfile records download URLs (npm --omit-lockfile-registry-resolved)"
    lock = json.loads(text)

    def urls(node, key=""):
        # `funding` links (sponsor pages) are the packages' own metadata, not where they come from.
        if key == "funding":
            return
        if isinstance(node, dict):
            for k, v in node.items():
                yield from urls(v, k)
        elif isinstance(node, list):
            for v in node:
                yield from urls(v, key)
        elif isinstance(node, str) and "://" in node:
            yield f"{key}: {node}"

    found = sorted(set(urls(lock)))
    assert not found, f"the lockfile names hosts: {found}"
    sdk = {name: meta["version"] for name, meta in lock["packages"].items()
           if re.fullmatch(r"node_modules/@temporalio/[^/]+", name)}  # fmt: skip
    assert len(set(sdk.values())) == 1, f"@temporalio packages at different versions: {sdk}"
    wanted = json.loads((project / "package.json").read_text())["dependencies"]
    for name in ("@temporalio/worker", "@temporalio/client", "@temporalio/workflow", "@temporalio/activity"):
        assert wanted.get(name) == next(iter(sdk.values())), (name, wanted)
    ignored = (project / ".gitignore").read_text().split()
    assert "node_modules/" in ignored and "lib/" in ignored, ignored


@pytest.fixture(scope="module")
def ts_worker(tmp_path_factory) -> tuple[str, Path]:
    """The TypeScript worker, installed and built once for this module's tests: (node, project)."""
    node, npm = tool("node"), tool("npm")
    work = tmp_path_factory.mktemp("ts-worker") / "typescript"
    version = sh([node, "--version"], work.parent).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    assert (major, minor) >= (20, 3), f"node {version}: the SDK needs 20.3 or later"

    # A copy, so that node_modules and lib/ never land in the repository; npm's own cache makes
    # the next run fast. Install scripts are not needed to type-check.
    shutil.copytree(WORKERS / "typescript", work, ignore=shutil.ignore_patterns("node_modules", "lib"))
    sh([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--prefer-offline"], work)
    sh([node, work / "node_modules" / "typescript" / "bin" / "tsc", "-p", "."], work)
    return node, work


def test_typescript_worker_type_checks_and_builds(ts_worker):
    node, work = ts_worker
    sh([node, work / "node_modules" / "typescript" / "bin" / "tsc", "--noEmit", "-p", "."], work)

    done = subprocess.run([node, work / "lib" / "worker.js"], cwd=work, env=bare_env(), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert_one_line(done, 2, *NAMED)


# --------------------------------------------------------------------------------------------
# Python


def requirement(path: Path, name: str):
    from packaging.requirements import Requirement

    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and Requirement(line).name == name:
            return Requirement(line)
    raise AssertionError(f"{path} does not require {name}")


def test_python_worker_requirements_match_the_suite():
    """The worker runs in the suite's environment here, so its requirements must be the suite's."""
    import importlib.metadata

    ours = requirement(WORKERS / "python" / "requirements.txt", "temporalio")
    suite = requirement(REPO / "requirements.txt", "temporalio")
    assert ours.specifier == suite.specifier, f"{ours} (worker) != {suite} (requirements.txt)"
    installed = importlib.metadata.version("temporalio")
    assert ours.specifier.contains(installed), f"temporalio {installed} is installed; the worker wants {ours}"


def python_worker(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "worker.py"], cwd=WORKERS / "python", env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_python_worker_without_its_settings_says_what_to_set():
    assert_one_line(python_worker(bare_env()), 2, *NAMED)
    # A token, but nowhere to exchange it.
    assert_one_line(python_worker(bare_env(CI_OIDC_TOKEN="x")), 2, "FLOWGATE_URL", "TEMPORAL_ADDRESS")
    # Never a bearer token in the clear.
    line = assert_one_line(
        python_worker(bare_env(CI_OIDC_TOKEN="x", FLOWGATE_URL="http://127.0.0.1:1", TEMPORAL_ADDRESS="127.0.0.1:1")),
        2,
        "https://",
    )
    assert "FLOWGATE_URL" in line, line


def test_python_worker_with_a_gateway_it_cannot_reach_says_so():
    port = free_port()  # nothing listens there
    done = python_worker(bare_env(CI_OIDC_TOKEN="x", FLOWGATE_URL=f"https://127.0.0.1:{port}",
                                  TEMPORAL_ADDRESS=f"127.0.0.1:{port}"))  # fmt: skip
    assert_one_line(done, 1, "gateway unreachable", f"127.0.0.1:{port}")


def test_python_worker_with_an_empty_token_file_says_so(tmp_path):
    (tmp_path / "token").write_text("\n")
    done = python_worker(bare_env(FLOWGATE_SUBJECT_TOKEN_FILE=str(tmp_path / "token"),
                                  FLOWGATE_URL="https://127.0.0.1:1", TEMPORAL_ADDRESS="127.0.0.1:1"))  # fmt: skip
    assert_one_line(done, 2, "FLOWGATE_SUBJECT_TOKEN_FILE", "empty")


def tls_gateway(work: Path, temporal: str, okta, github, cert: Path, key: Path) -> Gateway:
    """flowgate with a TLS listener (what the worker talks to in production) and `[mint]`, its
    issuer being that listener: the token endpoint and gRPC share it. Issuers and policies as the
    `gateway` fixture's (tests/e2e/policies: exchange.cedar permits acme/payments jobs worker
    credentials, deployers.cedar lets Okta deployers start DeployWorkflow)."""
    work.mkdir(parents=True)
    policies = copy_policies(work / "policies")
    listen, admin = free_port(), free_port()
    audit = work / "decisions.jsonl"
    text = f"""
[listen]
address = "127.0.0.1:{listen}"
tls = {{ cert = {json.dumps(str(cert))}, key = {json.dumps(str(key))} }}

[admin]
address = "127.0.0.1:{admin}"

[upstream]
address = "http://{temporal}"
forward_authorization = false

[policy]
dir = {json.dumps(str(policies))}

[audit]
path = {json.dumps(str(audit))}

[mint]
issuer = "https://127.0.0.1:{listen}"
key_dir = {json.dumps(str(work / "keys"))}
credential_lifetime = "{LIFETIME}s"

[[issuers]]
name = "okta"
issuer = {json.dumps(okta.url)}
audiences = ["api://temporal"]
groups_claim = "groups"
principal = "User"

[[issuers]]
name = "github"
preset = "github-actions"
issuer = {json.dumps(github.url)}
jwks_uri = {json.dumps(github.url + "/jwks")}
audiences = ["https://temporal.example.com"]
required_claims = {{ repository_owner = "acme" }}
"""
    gw = Gateway(work, text, f"127.0.0.1:{listen}", f"http://127.0.0.1:{admin}", audit)
    gw.url = f"https://127.0.0.1:{listen}"
    return gw.start()


class Process:
    """A program started in its own session, its output in `log`; stopped with SIGINT (then
    SIGKILL) by `stop()`."""

    def __init__(self, cmd: list, log: Path, **kwargs):
        self.log_path = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, **kwargs)  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def check_alive(self, what: str) -> None:
        assert self.proc.poll() is None, f"the {what} exited ({self.proc.returncode}):\n{self.log()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


COMMIT = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def deploy_through(gw: Gateway, ca: Path, okta, queue: str, worker: Process) -> str:
    """Starts DeployWorkflow through flowgate as an Okta deployer (the e2e policies let
    deployers start it and read its result) and waits for its result."""
    request = {"service": "payments", "commit": COMMIT, "ci_run": "1234"}

    async def deploy():
        client = await Client.connect(gw.address, namespace="payments", tls=TLSConfig(server_root_ca_cert=ca.read_bytes()),
                                      rpc_metadata={"authorization": f"Bearer {deployer(okta, 'alice')}"})  # fmt: skip
        handle = await client.start_workflow("DeployWorkflow", request, id=uid("worker-example"), task_queue=queue,
                                             execution_timeout=datetime.timedelta(seconds=60))  # fmt: skip
        return await handle.result()

    try:
        result = run(deploy(), timeout=60)
    except Exception as e:  # noqa: BLE001 - the worker's log says why
        raise AssertionError(f"DeployWorkflow did not complete ({e!r}); worker log:\n{worker.log()}") from e
    worker.check_alive("worker")
    return result


def worker_exchanges(gw: Gateway, principal: str) -> list[dict]:
    return [r for r in gw.decisions()
            if r["kind"] == "token_exchange" and (r["principal"] or {}).get("id") == principal]  # fmt: skip


def check_worker_records(gw: Gateway, scope: str, queue: str, log: str) -> list[dict]:
    """The decision log of a worker run: nothing denied; the job token exchanged once, by the
    policy for acme/payments' jobs, for the worker's scope; refreshes by the credential itself,
    within its grant; every worker call the minted credential's, allowed within its grant; the
    start by the Okta deployer. Returns the worker's calls."""
    records = gw.decisions()
    denied = [r for r in records if r["decision"] == "deny"]
    assert not denied, f"denied calls or exchanges: {denied}\nworker log:\n{log}"
    worker_id = f"{MINT_NAME}:github:{WORKER_SUB}"
    [first] = worker_exchanges(gw, f"github:{WORKER_SUB}")
    assert first["principal"]["type"] == "CiJob" and first["reasons"] == [WORKER_POLICY], first
    assert first["action"] == "IssueCredential" and first["scope"] == scope, first
    refreshes = worker_exchanges(gw, worker_id)
    assert refreshes and all(r["principal"]["type"] == "Worker" and r["reasons"] == [WITHIN_GRANT]
                             and r["scope"] == scope for r in refreshes), refreshes  # fmt: skip
    calls = [r for r in records if r["kind"] == "grpc" and (r["principal"] or {}).get("id") == worker_id]
    assert calls and all(r["decision"] == "allow" and r["reasons"] == [WITHIN_GRANT]
                         and r["principal"]["type"] == "Worker" for r in calls), calls  # fmt: skip
    actions = {r["action"] for r in calls}
    for needed in ("PollWorkflowTaskQueue", "RespondWorkflowTaskCompleted", "PollActivityTaskQueue",
                   "RespondActivityTaskCompleted"):  # fmt: skip
        assert needed in actions, f"no {needed} by the worker: {sorted(actions)}"
    polled = {(r["resource"] or {}).get("task_queue") for r in calls if r["action"].startswith("Poll")}
    assert polled == {queue}, polled
    starts = [r for r in records if r["action"] == "StartWorkflowExecution"]
    assert [(r["principal"]["id"], r["decision"]) for r in starts] == [("okta:alice", "allow")], starts
    return calls


def wait_refreshed(gw: Gateway, process: Process, what: str) -> float:
    """Waits for the job token's exchange and the first refresh (at ~2/3 of the lifetime), then
    until the first credential has expired; returns when it expired."""
    worker_id = f"{MINT_NAME}:github:{WORKER_SUB}"
    initial = wait_until(lambda: worker_exchanges(gw, f"github:{WORKER_SUB}") or process.proc.poll() is not None,
                         timeout=60)  # fmt: skip
    process.check_alive(what)
    assert isinstance(initial, list) and initial, f"no exchange of the job token:\n{process.log()}"
    refreshed = wait_until(lambda: worker_exchanges(gw, worker_id) or process.proc.poll() is not None,
                           timeout=3 * LIFETIME)  # fmt: skip
    process.check_alive(what)
    assert isinstance(refreshed, list) and refreshed, f"no refresh within {3 * LIFETIME} s:\n{process.log()}"
    first_expiry = ts(initial[0]) + LIFETIME
    time.sleep(max(0.0, first_expiry + 1 - time.time()))
    return first_expiry


def test_python_worker_end_to_end_with_only_a_ci_token(temporal, okta, github, tmp_path):
    """The Python worker example, started as a CI step would start it, serves DeployWorkflow
    through flowgate with a minted credential that it refreshes itself."""
    ca, cert, key = make_ca(tmp_path / "tls")
    gw = tls_gateway(tmp_path / "gateway", temporal, okta, github, cert, key)
    queue = uid("worker-example-q")
    scope = f"namespace:payments role:worker task_queue:{queue}"
    ci_token = github.mint(github_claims(environment=None, sub=WORKER_SUB))
    env = bare_env(CI_OIDC_TOKEN=ci_token, FLOWGATE_URL=gw.url, TEMPORAL_ADDRESS=gw.address,
                   TEMPORAL_TASK_QUEUE=queue, FLOWGATE_CA_FILE=str(ca), PYTHONUNBUFFERED="1")  # fmt: skip
    worker = Process([sys.executable, "worker.py"], tmp_path / "worker.log", cwd=WORKERS / "python", env=env)
    try:
        # Start once the first credential has expired: every call the worker makes for this
        # workflow carries a refreshed one.
        first_expiry = wait_refreshed(gw, worker, "worker")
        result = deploy_through(gw, ca, okta, queue, worker)
    finally:
        worker.stop()
        gw.stop()

    assert result == f"deployed payments at {COMMIT} (ci run 1234)", result
    assert "Traceback" not in worker.log(), worker.log()
    calls = check_worker_records(gw, scope, queue, worker.log())
    # A record is written when a call starts, and a long poll may have started under the first
    # credential; the workflow's task completions all came after it expired.
    late = {r["action"] for r in calls if ts(r) > first_expiry}
    for needed in ("RespondWorkflowTaskCompleted", "RespondActivityTaskCompleted"):
        assert needed in late, f"no {needed} by the worker after its first credential expired: {sorted(late)}"


def test_python_worker_end_to_end_through_the_sidecar(temporal, okta, github, tmp_path):
    """The Buildkite shape (deploy/ci/buildkite/pipeline.yml): `flowgate sidecar` holds the job
    token, exchanges and refreshes; the worker, with only FLOWGATE_SIDECAR, never sees a token."""
    ca, cert, key = make_ca(tmp_path / "tls")
    gw = tls_gateway(tmp_path / "gateway", temporal, okta, github, cert, key)
    queue = uid("worker-sidecar-q")
    scope = f"namespace:payments role:worker task_queue:{queue}"
    port = free_port()
    config = tmp_path / "sidecar.toml"
    config.write_text(f"""
[listen]
address = "127.0.0.1:{port}"

[upstream]
address = "{gw.url}"
ca = {json.dumps(str(ca))}

[credential]
scope = "{scope}"

[credential.source]
kind = "env"
env = "CI_OIDC_TOKEN"
""")
    ci_token = github.mint(github_claims(environment=None, sub=WORKER_SUB))
    sidecar = Process([flowgate_bin(), "sidecar", "--config", config], tmp_path / "sidecar.log",
                      env={**bare_env(CI_OIDC_TOKEN=ci_token), "RUST_LOG": "info"})  # fmt: skip
    worker = None
    try:
        assert wait_port(port, 30), f"the sidecar does not listen:\n{sidecar.log()}"
        worker = Process([sys.executable, "worker.py"], tmp_path / "worker.log", cwd=WORKERS / "python",
                         env=bare_env(FLOWGATE_SIDECAR=f"127.0.0.1:{port}", TEMPORAL_TASK_QUEUE=queue,
                                      PYTHONUNBUFFERED="1"))  # fmt: skip
        wait_refreshed(gw, sidecar, "sidecar")
        worker.check_alive("worker")
        result = deploy_through(gw, ca, okta, queue, worker)
    finally:
        if worker is not None:
            worker.stop()
        sidecar.stop()
        gw.stop()

    assert result == f"deployed payments at {COMMIT} (ci run 1234)", result
    assert "Traceback" not in worker.log(), worker.log()
    check_worker_records(gw, scope, queue, worker.log())


# --------------------------------------------------------------------------------------------
# Every worker, against a stand-in gateway: where the subject token may go
#
# The discovery document names the token endpoint, and the workers POST the subject token there.
# A document (or whoever answers in the gateway's place) must not send it anywhere but the
# gateway's own https origin, a redirect must not carry it elsewhere, and an answer that is too
# large, too slow or without a credential must stop the worker with one line.

CI_TOKEN = "ci-job-token-for-the-gateway-only"
DISCOVERY = "/.well-known/openid-configuration"
TOKEN = "/oauth2/token"
PROXY_SETTINGS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def reply(handler, status: int, body: object = b"", headers: dict | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


class StandIn:
    """A server on 127.0.0.1, HTTPS with a certificate the test CA signed (or plaintext), that
    records every request it gets (method, path, body) and answers from `routes`: (method,
    path) → a function of the request handler. Its discovery document names its own token
    endpoint, which answers with a credential, so that a request that reached it would have
    succeeded."""

    def __init__(self, tls: tuple[Path, Path] | None):
        import http.server
        import ssl
        import threading

        self.requests: list[tuple[str, str, bytes]] = []
        self.stopping = threading.Event()
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                stand_in.requests.append((self.command, self.path, self.rfile.read(length)))
                route = stand_in.routes.get((self.command, self.path))
                if route is None:
                    reply(self, 404, {"error": "not_found"})
                else:
                    route(self)

            do_GET = do_POST = answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.origin = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.routes = {
            ("GET", DISCOVERY): lambda h: reply(h, 200, {"issuer": self.origin, "token_endpoint": self.origin + TOKEN}),
            ("POST", TOKEN): lambda h: reply(h, 200, {"access_token": "minted", "token_type": "Bearer",
                                                      "expires_in": 600}),
        }  # fmt: skip
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def seen(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _ in self.requests]

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def stand_ins(tmp_path):
    """(ca.pem, the gateway the worker is pointed at, another HTTPS server, a plaintext one)."""
    ca, cert, key = make_ca(tmp_path / "tls")
    servers = StandIn((cert, key)), StandIn((cert, key)), StandIn(None)
    try:
        yield ca, *servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(params=["python", "go", "typescript"])
def worker_command(request) -> tuple[list, Path | None]:
    """How to start each worker: (command, cwd)."""
    if request.param == "python":
        return [sys.executable, "worker.py"], WORKERS / "python"
    if request.param == "go":
        return [request.getfixturevalue("go_worker")], None
    node, work = request.getfixturevalue("ts_worker")
    return [node, work / "lib" / "worker.js"], work


def run_against(worker_command, ca: Path, gateway: StandIn, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs a worker with a CI token and FLOWGATE_URL pointing at `gateway`; TEMPORAL_ADDRESS is
    a port nothing listens on (none of these runs should get that far)."""
    command, cwd = worker_command
    env = bare_env(CI_OIDC_TOKEN=CI_TOKEN, FLOWGATE_URL=gateway.origin, TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}",
                   FLOWGATE_CA_FILE=str(ca), NODE_EXTRA_CA_CERTS=str(ca))  # fmt: skip
    for name in list(env):
        if name.lower() in PROXY_SETTINGS:
            del env[name]
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


@pytest.mark.parametrize("where", ["another port", "another host", "plaintext"])
def test_worker_sends_the_token_to_no_token_endpoint_off_the_gateways_origin(worker_command, stand_ins, where):
    ca, gateway, elsewhere, plaintext = stand_ins
    endpoint = {
        "another port": elsewhere.origin + TOKEN,
        # The same server under another name (its certificate is valid for `localhost` too).
        "another host": f"https://localhost:{gateway.port}{TOKEN}",
        "plaintext": plaintext.origin + TOKEN,
    }[where]
    gateway.routes[("GET", DISCOVERY)] = lambda h: reply(h, 200, {"issuer": gateway.origin, "token_endpoint": endpoint})

    done = run_against(worker_command, ca, gateway)
    assert_one_line(done, 2, "token_endpoint", endpoint, "FLOWGATE_URL")
    assert gateway.seen() == [("GET", DISCOVERY)], gateway.requests
    assert elsewhere.requests == [] and plaintext.requests == [], (elsewhere.requests, plaintext.requests)


def test_worker_follows_no_redirect_from_discovery(worker_command, stand_ins):
    ca, gateway, elsewhere, _ = stand_ins
    gateway.routes[("GET", DISCOVERY)] = lambda h: reply(h, 302, headers={"Location": elsewhere.origin + DISCOVERY})

    done = run_against(worker_command, ca, gateway)
    assert "redirect" in assert_one_line(done, 1, "discovery").lower()
    assert gateway.seen() == [("GET", DISCOVERY)], gateway.requests
    assert elsewhere.requests == [], elsewhere.requests


@pytest.mark.parametrize("status", [307, 308])
def test_worker_follows_no_redirect_from_the_token_endpoint(worker_command, stand_ins, status):
    """A 307 or 308 asks for the same POST, subject token and all, at the Location."""
    ca, gateway, elsewhere, _ = stand_ins
    gateway.routes[("POST", TOKEN)] = lambda h: reply(h, status, headers={"Location": elsewhere.origin + TOKEN})

    done = run_against(worker_command, ca, gateway)
    assert "redirect" in assert_one_line(done, 1, "token endpoint").lower()
    assert gateway.seen() == [("GET", DISCOVERY), ("POST", TOKEN)], gateway.requests
    assert CI_TOKEN in gateway.requests[1][2].decode(), gateway.requests[1]
    assert elsewhere.requests == [], elsewhere.requests


@pytest.mark.parametrize("missing", ["access_token", "expires_in"])
def test_worker_refuses_a_token_response_without_a_credential(worker_command, stand_ins, missing):
    ca, gateway, _, _ = stand_ins
    answer = {key: value for key, value in {"access_token": "minted", "token_type": "Bearer", "expires_in": 600}.items()
              if key != missing}  # fmt: skip
    gateway.routes[("POST", TOKEN)] = lambda h: reply(h, 200, answer)

    assert_one_line(run_against(worker_command, ca, gateway), 1, "token endpoint", "unexpected response")


def test_worker_refuses_an_oversized_token_response(worker_command, stand_ins):
    """A well-formed credential, padded past 256 KiB and sent without a length (read to the end
    of the connection): refused, not buffered."""
    ca, gateway, _, _ = stand_ins

    def oversized(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        try:
            handler.wfile.write(json.dumps({"access_token": "x" * (300 * 1024), "token_type": "Bearer",
                                            "expires_in": 600}).encode())  # fmt: skip
        except OSError:
            pass  # the worker stopped reading

    gateway.routes[("POST", TOKEN)] = oversized
    assert_one_line(run_against(worker_command, ca, gateway), 1, "token endpoint", "256 KiB")


def test_worker_gives_up_on_a_token_endpoint_that_drips(worker_command, stand_ins):
    """Headers at once, then a byte of body every half second, each well within any per-read
    timeout: only a deadline on the whole request ends it."""
    ca, gateway, _, _ = stand_ins

    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "100000")
        handler.end_headers()
        handler.close_connection = True
        try:
            while not gateway.stopping.wait(0.5):
                handler.wfile.write(b" ")
                handler.wfile.flush()
        except OSError:
            pass  # the worker gave up

    gateway.routes[("POST", TOKEN)] = drip
    started = time.monotonic()
    done = run_against(worker_command, ca, gateway, timeout=90)
    assert_one_line(done, 1, "token endpoint")
    assert time.monotonic() - started < 45, f"the worker took {time.monotonic() - started:.0f} s to give up"


def test_worker_exchanges_at_a_token_endpoint_on_the_gateways_origin(worker_command, stand_ins):
    """The check lets the gateway's own endpoint through: the token is POSTed there, and the
    worker goes on to connect to TEMPORAL_ADDRESS (where nothing listens)."""
    ca, gateway, elsewhere, plaintext = stand_ins
    done = run_against(worker_command, ca, gateway, timeout=120)
    assert_one_line(done, 1, "cannot connect")
    assert gateway.seen() == [("GET", DISCOVERY), ("POST", TOKEN)], gateway.requests
    assert CI_TOKEN in gateway.requests[1][2].decode(), gateway.requests[1]
    assert elsewhere.requests == [] and plaintext.requests == [], (elsewhere.requests, plaintext.requests)
