"""flowgate in front of Temporal Cloud, with an API key (`upstream.credentials = "api_key"`).

The stand-in for Cloud is Temporal's *full* server (v1.31.2) as Cloud presents itself to a
client: TLS on its frontend with client certificates required (mTLS), and its JWT authorizer
on, trusting one issuer, the "cloud" account, whose tokens carry Temporal's `permissions`
(`payments:write`). One such token is the API key of a service account, and flowgate holds it:

* people and pipelines authenticate to flowgate with their own tokens, which Cloud never sees;
  flowgate authorizes each call per workflow type and task queue and records it, then sends it
  on over TLS with its client certificate and its key: an allowed start runs, a worker
  completes a workflow through it, a forbidden workflow type is refused by flowgate alone;
* the key is what Cloud checks: the same flowgate without it (certificate only) is refused by
  the server; without the certificate the TLS handshake fails (UNAVAILABLE);
* the key file is read again when it changes: a key for another namespace is refused by the
  server from the next calls on, the good one works again after it, with no restart, and an
  emptied file keeps the last good key;
* the key can come from an environment variable instead.

The server binary comes from `bash scripts/setup.sh`; see e2e_util.full_server_binary.
"""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import timedelta

import pytest
from conftest import TestIssuer
from e2e_util import (
    PARKED_QUEUE, TASK_QUEUE, by, connect, deployer, expect_rpc_error, full_server_binary, make_ca, run, uid,
    worker_token,
)  # fmt: skip
from e2e_workflows import DeployWorkflow, DropDatabaseWorkflow, deploy_step
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker
from temporal_server.full_server import FrontendTls, FullServer

SERVER_BIN = full_server_binary()
SERVICE_ACCOUNT = "sa-flowgate-payments"


def _reserve_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cloud:
    """The stand-in: the server, its TLS material, and the account that issues API keys."""

    def __init__(self, server: FullServer, tls: FrontendTls, account: TestIssuer):
        self.server, self.tls, self.account = server, tls, account

    def api_key(self, namespace: str = "payments") -> str:
        return self.account.mint({"sub": SERVICE_ACCOUNT, "permissions": [f"{namespace}:write"],
                                  "exp": int(time.time()) + 3600})  # fmt: skip

    def upstream(self, key_file=None, key_env: str | None = None, client_cert: bool = True) -> dict:
        """bare_gateway arguments for a flowgate in front of this server."""
        keys = [f'ca = "{self.tls.ca}"']
        if client_cert:
            keys += [f'cert = "{self.tls.client_cert}"', f'key = "{self.tls.client_key}"']
        credentials = None
        if key_file is not None:
            credentials = "api_key"
            keys += [f'api_key_file = "{key_file}"', 'api_key_watch_interval = "200ms"']
        elif key_env is not None:
            credentials = "api_key"
            keys.append(f'api_key_env = "{key_env}"')
        return {"upstream": f"https://{self.server.address}", "upstream_credentials": credentials,
                "upstream_extra": "\n".join(keys)}  # fmt: skip


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    work = tmp_path_factory.mktemp("cloud")
    ca, cert, key, client_cert, client_key = make_ca(work / "tls", client="flowgate")
    tls = FrontendTls(cert, key, ca, client_ca=ca, client_cert=client_cert, client_key=client_key)
    account = TestIssuer("cloud-account")
    server = FullServer(account.url + "/jwks", ["payments", "analytics"], binary=SERVER_BIN, tls=tls)
    server.start()
    try:
        yield Cloud(server, tls, account)
    finally:
        server.stop()
        account.close()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory, cloud):
    path = tmp_path_factory.mktemp("secret") / "api-key"
    path.write_text(cloud.api_key() + "\n")
    return path


@pytest.fixture(scope="module")
def fronted(cloud, key_file, bare_gateway):
    """flowgate with the API key file and the client certificate."""
    return bare_gateway(**cloud.upstream(key_file=key_file))


def _describe(address: str, token: str):
    async def go():
        client = await connect(address, token)
        return await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))

    return run(go())


def _status(fn) -> RPCStatusCode | None:
    try:
        fn()
    except RPCError as e:
        return e.status
    except RuntimeError as e:  # Client.connect wraps connection errors
        return RPCStatusCode.UNAVAILABLE if "transport" in str(e).lower() or "connect" in str(e).lower() else e
    return None


def test_an_allowed_start_runs_and_a_forbidden_type_is_refused_by_flowgate(cloud, fronted, okta):
    allowed, forbidden = uid("cloud-deploy"), uid("cloud-drop")

    async def scenario():
        client = await connect(fronted.address, deployer(okta, "alice"))
        handle = await client.start_workflow(
            DeployWorkflow.run, "api", id=allowed, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=60)
        )
        desc = await handle.describe()
        await expect_rpc_error(
            client.start_workflow(DropDatabaseWorkflow.run, "prod", id=forbidden, task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )
        # Straight to the server with the key (as the service account): the refused start never
        # reached it.
        direct = await Client.connect(cloud.server.address, namespace="payments", api_key=cloud.api_key(),
                                      tls=cloud.tls.sdk_config())  # fmt: skip
        await expect_rpc_error(direct.get_workflow_handle(forbidden).describe(), RPCStatusCode.NOT_FOUND)
        return desc

    desc = run(scenario())
    assert desc.workflow_type == "DeployWorkflow" and desc.id == allowed
    [rec] = fronted.wait_decisions(by("StartWorkflowExecution", workflow_id=allowed), 1)
    assert rec["decision"] == "allow" and rec["principal"]["id"] == "okta:alice", rec
    [rec] = fronted.wait_decisions(by("StartWorkflowExecution", workflow_id=forbidden), 1)
    assert rec["decision"] == "deny" and rec["resource"]["workflow_type"] == "DropDatabaseWorkflow", rec


def test_a_worker_completes_a_workflow_through_flowgate(fronted, okta):
    wf_id = uid("cloud-worker")

    async def scenario():
        worker_client = await connect(fronted.address, worker_token(okta))
        starter = await connect(fronted.address, deployer(okta, "alice"))
        async with Worker(worker_client, task_queue=TASK_QUEUE, workflows=[DeployWorkflow], activities=[deploy_step]):
            handle = await starter.start_workflow(
                DeployWorkflow.run, "billing", id=wf_id, task_queue=TASK_QUEUE, execution_timeout=timedelta(seconds=60)
            )
            for _ in range(100):  # wait for the activity, then approve
                if await handle.query("status") == "awaiting-approval":
                    break
                await asyncio.sleep(0.1)
            await handle.signal("approve", "alice")
            return await asyncio.wait_for(handle.result(), 30)

    assert run(scenario(), timeout=60) == "built billing; approved by alice"
    polls = fronted.wait_decisions(by("PollWorkflowTaskQueue", principal="okta:deploy-worker", decision="allow"), 1)
    assert polls, "the worker's polls went through flowgate"


def test_the_key_is_what_the_server_checks(cloud, bare_gateway, okta):
    """Controls: the same calls from a flowgate without the key, and without the certificate."""
    no_key = bare_gateway(**cloud.upstream())
    assert _status(lambda: _describe(no_key.address, deployer(okta, "alice"))) == RPCStatusCode.PERMISSION_DENIED
    [rec] = no_key.wait_decisions(by("DescribeNamespace", principal="okta:alice"), 1)
    assert rec["decision"] == "allow", "flowgate allowed it; the server refused it"

    key = cloud.server.workdir / "unused-key"
    key.write_text(cloud.api_key())
    no_cert = bare_gateway(**cloud.upstream(key_file=key, client_cert=False), wait="healthz")
    got = _status(lambda: _describe(no_cert.address, deployer(okta, "alice")))
    assert got == RPCStatusCode.UNAVAILABLE, got


def test_a_rotated_key_file_is_used_without_a_restart(cloud, fronted, key_file, okta):
    token = deployer(okta, "alice")
    assert _status(lambda: _describe(fronted.address, token)) is None
    good = key_file.read_text()

    def wait_for(expected, what: str):
        deadline = time.monotonic() + 15
        while (got := _status(lambda: _describe(fronted.address, token))) != expected:
            assert time.monotonic() < deadline, f"{what}: still {got}"
            time.sleep(0.2)

    try:
        key_file.write_text(cloud.api_key("analytics"))  # a key the server knows, for another namespace
        wait_for(RPCStatusCode.PERMISSION_DENIED, "the new key was not used")
        key_file.write_text(good)
        wait_for(None, "the good key was not used again")
        key_file.write_text("")  # a secret being rewritten: the last good key stays
        time.sleep(1)
        assert _status(lambda: _describe(fronted.address, token)) is None
        assert "upstream API key not reloaded" in fronted.stderr
        assert "the key is empty" in fronted.stderr
    finally:
        key_file.write_text(good)
    metrics = fronted.http_get("/metrics")[1]
    assert 'flowgate_upstream_key_reload_total{result="success"} 2' in metrics, metrics
    assert 'flowgate_upstream_key_reload_total{result="failure"} 1' in metrics, metrics
    assert good.strip() not in fronted.stderr, "the key is never logged"


def test_the_key_can_come_from_an_environment_variable(cloud, bare_gateway, okta, monkeypatch):
    monkeypatch.setenv("FLOWGATE_E2E_CLOUD_KEY", cloud.api_key())
    gw = bare_gateway(**cloud.upstream(key_env="FLOWGATE_E2E_CLOUD_KEY"))
    info = _describe(gw.address, deployer(okta, "alice"))
    assert info.namespace_info.name == "payments"
