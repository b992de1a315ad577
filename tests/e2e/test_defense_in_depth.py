"""Defense in depth: flowgate in front of Temporal's *full* server (v1.31.2) running its own
default JWT ClaimMapper + Authorizer, trusting only flowgate's keys.

flowgate starts first with `[mint]` and `upstream.credentials = "minted"`, pointed at a port
reserved for the server's frontend; the server starts once flowgate serves its JWKS (Temporal
reads keys at start and every refresh interval, never on an unknown kid), with
`audience = "temporal"` (flowgate's `mint.audience`). Then:

* through flowgate, an Okta user and a worker holding an exchanged credential work: Temporal
  accepts the per-call credential flowgate mints (`<ns>:read` / `<ns>:write`);
* a flowgate that forwards no credential gets PERMISSION_DENIED from Temporal for the same
  calls: Temporal's authorizer is really on, and flowgate's credential is what passes it;
* bypassing flowgate: the Okta token, or no token, sent straight to Temporal is
  PERMISSION_DENIED. A worker credential flowgate issued carries Temporal's own
  `permissions` (`payments:write`), so sent straight to Temporal it works in *its* namespace,
  and only there: the credential is the scope boundary. Its finer limits (task queues,
  workflow types, role `worker` vs `write`) exist only in flowgate, which enforces them on
  every call; Temporal's authorizer knows namespaces and roles only.

The server binary comes from `bash scripts/setup.sh`; without it this module fails unless a
developer opts out with FLOWGATE_SKIP_FULL_SERVER=1 (e2e_util.full_server_binary).
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import pytest
from e2e_exchange import MINT_NAME, exchange
from e2e_util import PARKED_QUEUE, by, connect, deployer, expect_rpc_error, full_server_binary, github_claims, run, uid
from e2e_workflows import DeployWorkflow, deploy_step
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCStatusCode
from temporalio.worker import Worker
from temporal_server.full_server import FullServer

SERVER_BIN = full_server_binary()
AUDIENCE = "temporal"  # mint.audience (default) = the server's global.authorization.audience
WORKER_SUB = "repo:acme/payments:ref:refs/heads/main"
WORKER_ID = f"{MINT_NAME}:github:{WORKER_SUB}"


def _reserve_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(bare_gateway):
    """(flowgate, Temporal full server): flowgate first, serving its JWKS; then the server."""
    frontend = _reserve_port()
    t0 = time.monotonic()
    gw = bare_gateway(
        upstream=f"http://127.0.0.1:{frontend}",
        mint={"credential_lifetime": "2m"},
        upstream_credentials="minted",
        wait="jwks",  # /readyz is 503 until the upstream answers, and it cannot before these keys
    )
    srv = FullServer(
        gw.url + "/.well-known/jwks.json", ["payments", "analytics"], binary=SERVER_BIN, audience=AUDIENCE,
        ports={"frontend_port": frontend},
    )  # fmt: skip
    srv.start()
    try:
        deadline = time.monotonic() + 30
        while gw.http_get("/readyz", timeout=2)[0] != 200:
            assert time.monotonic() < deadline, f"flowgate never saw the server ready: {gw.http_get('/readyz')}"
            time.sleep(0.1)
        srv.setup_seconds = time.monotonic() - t0
        yield gw, srv
    finally:
        srv.stop()


def _describe(address: str, token: str | None, namespace: str = "payments"):
    """DescribeNamespace with the token as per-call metadata on a client that connected without
    one (Temporal refuses even the connect of a token its claim mapper rejects)."""

    async def go():
        client = await Client.connect(address, namespace=namespace)
        md = {"authorization": f"Bearer {token}"} if token is not None else {}
        return await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=namespace), metadata=md)

    return run(go(), timeout=30)


def _status(fn):
    from temporalio.service import RPCError

    try:
        fn()
        return "OK"
    except RPCError as e:
        return e.status


def test_okta_user_through_flowgate_is_accepted_by_temporal(stack, okta):
    gw, srv = stack
    wf_id = uid("did-deploy")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"))
        info = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
        handle = await client.start_workflow(
            DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=60)
        )
        desc = await handle.describe()
        return info, desc

    info, desc = run(scenario())
    assert info.namespace_info.name == "payments"
    assert desc.workflow_type == "DeployWorkflow" and desc.id == wf_id
    [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    assert rec["decision"] == "allow" and rec["principal"]["id"] == "okta:alice", rec


def test_without_flowgates_credential_temporal_refuses(stack, bare_gateway, okta):
    """Control: a second flowgate with the same policies that sends Temporal no credential
    (`upstream.credentials = "none"`) is refused by Temporal itself, for calls flowgate allowed."""
    _, srv = stack
    plain = bare_gateway(upstream="http://" + srv.address)
    got = _status(lambda: _describe(plain.address, deployer(okta, "alice")))
    assert got == RPCStatusCode.PERMISSION_DENIED, got
    [rec] = plain.wait_decisions(by("DescribeNamespace", principal="okta:alice"), 1)
    assert rec["decision"] == "allow", "flowgate allowed it; Temporal refused it"


def test_worker_with_exchanged_credential_completes_a_workflow(stack, okta, github):
    gw, srv = stack
    queue = uid("did-q")
    wf_id = uid("did-worker")
    scope = f"namespace:payments role:worker task_queue:{queue}"
    status, body = exchange(gw.url, github.mint(github_claims(environment=None, sub=WORKER_SUB)), scope)
    assert status == 200, body
    credential = body["access_token"]

    async def scenario():
        worker_client = await connect(gw.address, credential)
        starter = await connect(gw.address, deployer(okta, "alice"))
        async with Worker(worker_client, task_queue=queue, workflows=[DeployWorkflow], activities=[deploy_step]):
            handle = await starter.start_workflow(
                DeployWorkflow.run, "billing", id=wf_id, task_queue=queue, execution_timeout=timedelta(seconds=60)
            )
            for _ in range(100):  # wait for the activity, then approve
                if await handle.query("status") == "awaiting-approval":
                    break
                await asyncio.sleep(0.1)
            await handle.signal("approve", "alice")
            return await asyncio.wait_for(handle.result(), 30)

    assert run(scenario(), timeout=60) == "built billing; approved by alice"
    records = gw.decisions()
    worker_calls = [r for r in records if (r["principal"] or {}).get("id") == WORKER_ID and r["kind"] == "grpc"]
    assert {"PollWorkflowTaskQueue", "PollActivityTaskQueue", "RespondActivityTaskCompleted",
            "RespondWorkflowTaskCompleted"} <= {r["action"] for r in worker_calls}, worker_calls  # fmt: skip
    assert all(r["decision"] == "allow" for r in worker_calls), [r for r in worker_calls if r["decision"] != "allow"]


def test_bypassing_flowgate(stack, okta, github):
    gw, srv = stack
    # The Okta token straight to Temporal: Temporal trusts only flowgate's keys.
    assert _status(lambda: _describe(srv.address, deployer(okta, "alice"))) == RPCStatusCode.PERMISSION_DENIED
    # No token at all.
    assert _status(lambda: _describe(srv.address, None)) == RPCStatusCode.PERMISSION_DENIED
    # A GitHub job token straight to Temporal.
    job = github.mint(github_claims(environment="production"))
    assert _status(lambda: _describe(srv.address, job)) == RPCStatusCode.PERMISSION_DENIED

    # A worker credential flowgate issued carries `payments:write`: Temporal accepts it in
    # payments, and in no other namespace. The credential is the scope boundary.
    scope = f"namespace:payments role:worker task_queue:{uid('did-direct')}"
    status, body = exchange(gw.url, github.mint(github_claims(environment=None, sub=WORKER_SUB)), scope)
    assert status == 200, body
    credential = body["access_token"]
    assert _describe(srv.address, credential).namespace_info.name == "payments"
    assert _status(lambda: _describe(srv.address, credential, "analytics")) == RPCStatusCode.PERMISSION_DENIED
    # Through flowgate, the same credential is refused outside its grant before Temporal sees it.
    assert _status(lambda: _describe(gw.address, credential, "analytics")) == RPCStatusCode.PERMISSION_DENIED
    [rec] = gw.wait_decisions(by("DescribeNamespace", principal=WORKER_ID, decision="deny"), 1)
    assert "namespace `analytics` is outside" in rec["reasons"][0], rec


def _describe_by_id(address: str, token: str, namespace_id: str):
    async def go():
        client = await Client.connect(address, namespace="payments")
        md = {"authorization": f"Bearer {token}"}
        return await client.workflow_service.describe_namespace(DescribeNamespaceRequest(id=namespace_id), metadata=md)

    return run(go(), timeout=30)


def test_describe_by_id_passes_temporals_authorizer_with_a_system_read_credential(stack, okta, github):
    """Temporal's authorizer reads only a request's `namespace`, so it checks a request by id
    against no namespace: a `payments:*` credential does not pass, only a system role does.
    flowgate resolves the id, authorizes the name, and mints `temporal-system:read` for the lookup
    and for the call by id."""
    gw, srv = stack
    alice = deployer(okta, "alice")
    payments_id = _describe(gw.address, alice).namespace_info.id

    # Straight to Temporal, the `payments:write` credential flowgate issued: by name yes, by id no.
    scope = f"namespace:payments role:worker task_queue:{uid('did-by-id')}"
    status, body = exchange(gw.url, github.mint(github_claims(environment=None, sub=WORKER_SUB)), scope)
    assert status == 200, body
    credential = body["access_token"]
    assert _describe(srv.address, credential).namespace_info.id == payments_id
    assert _status(lambda: _describe_by_id(srv.address, credential, payments_id)) == RPCStatusCode.PERMISSION_DENIED

    # Through flowgate: the user and the credential both describe payments by id.
    assert _describe_by_id(gw.address, alice, payments_id).namespace_info.name == "payments"
    assert _describe_by_id(gw.address, credential, payments_id).namespace_info.name == "payments"
    # An id Temporal does not know: the lookup passed Temporal's authorizer (else it would be
    # PERMISSION_DENIED) and Temporal said NOT_FOUND.
    bogus = "9d4c6a1b-2e3f-4a5b-8c7d-0e1f2a3b4c5d"
    assert _status(lambda: _describe_by_id(gw.address, alice, bogus)) == RPCStatusCode.NOT_FOUND

    records = gw.wait_decisions(lambda r: (r.get("resource") or {}).get("namespace_id") is not None, 3)
    allowed = [r for r in records if r["decision"] == "allow"]
    assert {r["principal"]["id"] for r in allowed} == {"okta:alice", WORKER_ID}, records
    assert all(r["resource"]["namespace"] == "payments" for r in allowed), allowed
    [unknown] = [r for r in records if r["decision"] == "deny"]
    assert unknown["status"] == 5 and "names no namespace" in unknown["reasons"][0], unknown


def test_stack_started_quickly(stack):
    _, srv = stack
    assert srv.setup_seconds < 45, f"flowgate + Temporal took {srv.setup_seconds:.1f} s to be ready"
