"""Smoke test of tests/e2e/temporal_server: Temporal's full server with its own JWT authorizer.

No flowgate here: this pins down what Temporal itself does with our tokens, so that the
defense-in-depth tests (flowgate in front of a JWT-checking Temporal) rest on checked facts.
One server start for the module (~0.3 s; the module runs in ~2 s). The server binary comes
from `bash scripts/setup.sh` (scripts/install-temporal-server.sh, ~10+ min the first time);
without it the module fails, unless a developer opts out with FLOWGATE_SKIP_FULL_SERVER=1
(see e2e_util.full_server_binary).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    PollWorkflowTaskQueueRequest,
    RegisterNamespaceRequest,
)
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from google.protobuf.duration_pb2 import Duration

from e2e_util import full_server_binary
from temporal_server.full_server import FullServer

SERVER_BIN = full_server_binary()


def _b64u(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()


class Jwks:
    """An ES256 key published as a JWKS over plain http on 127.0.0.1."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = "smoke-" + uuid.uuid4().hex[:8]
        nums = self.key.public_key().public_numbers()
        body = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig",
                                     "kid": self.kid, "x": _b64u(nums.x), "y": _b64u(nums.y)}]}).encode()  # fmt: skip
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                outer.fetches += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"

    def mint(self, permissions, kid=None, key=None, **extra) -> str:
        now = int(time.time())
        claims = {"sub": "smoke", "permissions": permissions, "iat": now, "exp": now + 300, **extra}
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key or self.key, algorithm="ES256", headers={"kid": kid or self.kid})


@pytest.fixture(scope="module")
def env():
    jwks = Jwks()
    srv = FullServer(jwks.url, ["payments", "other-ns"], binary=SERVER_BIN, startup_timeout=45)
    srv.start()
    try:
        yield jwks, srv
    finally:
        srv.stop()
        jwks.httpd.shutdown()


def run(coro, timeout=30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def _client(srv, token, namespace="payments") -> Client:
    md = {"authorization": f"Bearer {token}"} if token is not None else {}
    return await Client.connect(srv.address, namespace=namespace, rpc_metadata=md)


def _describe(srv, token, namespace="payments"):
    """DescribeNamespace with the token as per-call metadata on a client that connected
    without one (a token the claim mapper rejects fails even the connect: see below)."""

    async def go():
        c = await _client(srv, None, namespace)
        md = {"authorization": f"Bearer {token}"} if token is not None else {}
        return await c.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace), metadata=md)

    return run(go())


def _status(fn) -> RPCStatusCode | None:
    try:
        fn()
        return None
    except RPCError as e:
        return e.status


def test_started_fast_and_fetched_keys(env):
    jwks, srv = env
    assert srv.started_in is not None and srv.started_in < 45
    assert jwks.fetches >= 1  # fetched at start-up


def test_write_token_describes_and_starts(env):
    jwks, srv = env
    token = jwks.mint(["payments:write"])
    assert _describe(srv, token).namespace_info.name == "payments"

    async def go():
        c = await _client(srv, token)
        h = await c.start_workflow("SmokeWorkflow", id="smoke-" + uuid.uuid4().hex[:8], task_queue="smoke-q")
        return h.result_run_id

    assert run(go())


def test_refusals_are_permission_denied(env):
    jwks, srv = env
    other = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    cases = {
        "no token": None,
        "other namespace": jwks.mint(["other-ns:write"]),
        "worker role only": jwks.mint(["payments:worker"]),
        "no permissions claim": jwks.mint(None),
        "unknown kid": jwks.mint(["payments:write"], kid="nope"),
        "wrong key": jwks.mint(["payments:write"], key=other),
        "expired": jwks.mint(["payments:write"], iat=now - 600, exp=now - 300),
        "old system: prefix": jwks.mint(["system:admin"]),
    }
    got = {name: _status(lambda t=t: _describe(srv, t)) for name, t in cases.items()}
    assert got == {name: RPCStatusCode.PERMISSION_DENIED for name in cases}, got
    # the other namespace's own token works there
    assert _describe(srv, jwks.mint(["other-ns:read"]), "other-ns").namespace_info.name == "other-ns"


def test_no_iss_aud_or_exp_required(env):
    jwks, srv = env
    for token in (
        jwks.mint(["payments:read"], iss="https://anyone.example", aud="whatever"),
        jwks.mint(["payments:read"], exp=None, iat=None),
    ):
        assert _describe(srv, token).namespace_info.name == "payments"


def test_worker_poll_needs_write(env):
    jwks, srv = env
    queue = "smoke-poll-" + uuid.uuid4().hex[:6]

    async def go():
        starter = await _client(srv, jwks.mint(["payments:write"]))
        await starter.start_workflow("SmokeWorkflow", id="smoke-" + uuid.uuid4().hex[:8], task_queue=queue)
        out = {}
        for perm in ("payments:read", "payments:worker", "payments:write"):
            c = await _client(srv, jwks.mint([perm]))
            try:
                resp = await c.workflow_service.poll_workflow_task_queue(
                    PollWorkflowTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name=queue), identity="smoke"),
                    timeout=timedelta(seconds=10),
                )
                out[perm] = resp.workflow_type.name
            except RPCError as e:
                out[perm] = e.status
        return out

    assert run(go()) == {
        "payments:read": RPCStatusCode.PERMISSION_DENIED,
        "payments:worker": RPCStatusCode.PERMISSION_DENIED,
        "payments:write": "SmokeWorkflow",
    }


def test_register_namespace_permissions(env):
    jwks, srv = env

    async def register(token, ns):
        c = await _client(srv, token, "temporal-system")
        await c.workflow_service.register_namespace(
            RegisterNamespaceRequest(namespace=ns, workflow_execution_retention_period=Duration(seconds=86400))
        )

    def status(token, ns):
        return _status(lambda: run(register(token, ns)))

    suffix = uuid.uuid4().hex[:6]
    assert status(jwks.mint(["temporal-system:write"]), f"denied-{suffix}") == RPCStatusCode.PERMISSION_DENIED
    assert status(jwks.mint(["payments:admin"]), f"denied-{suffix}") == RPCStatusCode.PERMISSION_DENIED
    assert status(jwks.mint(["temporal-system:admin"]), f"sys-{suffix}") is None
    # a namespace-scoped admin claim for the namespace being created is enough too
    assert status(jwks.mint([f"own-{suffix}:admin"]), f"own-{suffix}") is None


def test_connect_fails_only_for_tokens_the_claim_mapper_rejects(env):
    """GetSystemInfo (what Client.connect calls) is allowed for any *valid* token or none,
    but a token that fails validation is refused before the authorizer is consulted."""
    jwks, srv = env
    run(_client(srv, None))
    run(_client(srv, jwks.mint(["other-ns:read"])))
    with pytest.raises(RuntimeError, match="PermissionDenied"):
        run(_client(srv, jwks.mint(["payments:write"], kid="nope")))


def test_audience_setting_requires_aud(env):
    """With `audience` set (global.authorization.audience), `aud` must contain it."""
    jwks, _ = env
    with FullServer(jwks.url, ["payments"], binary=SERVER_BIN, audience="temporal-upstream") as srv:
        got = {
            label: _status(lambda t=t: _describe(srv, t))
            for label, t in {
                "no aud": jwks.mint(["payments:read"]),
                "wrong aud": jwks.mint(["payments:read"], aud="flowgate"),
                "aud": jwks.mint(["payments:read"], aud="temporal-upstream"),
                "aud list": jwks.mint(["payments:read"], aud=["x", "temporal-upstream"]),
            }.items()
        }
    assert got == {"no aud": RPCStatusCode.PERMISSION_DENIED, "wrong aud": RPCStatusCode.PERMISSION_DENIED,
                   "aud": None, "aud list": None}  # fmt: skip
