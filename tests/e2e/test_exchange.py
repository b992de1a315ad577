"""Token exchange (RFC 8693) end to end: a worker that starts with nothing but a CI job's OIDC
token exchanges it for a short-lived flowgate credential over HTTP, serves its task queue
through flowgate against a real Temporal dev server, and refreshes the credential across
several lifetimes; subject tokens are single-use; a credential is held to its grant.

The Rust-level spec of the same feature, every case against a fake upstream: tests/exchange.rs.
Policies: tests/e2e/policies/exchange.cedar.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from e2e_exchange import MINT_NAME, RefreshingCredential, claims, exchange, ts, verify
from e2e_util import PARKED_QUEUE, by, connect, deployer, expect_rpc_error, github_claims, run, uid
from e2e_workflows import DeployWorkflow
from exchange_workflows import ExchangeWorkflow, exchange_step
from temporalio.api.common.v1 import Payloads
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest,
    PollActivityTaskQueueRequest,
    RespondActivityTaskCompletedByIdRequest,
)
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import RPCStatusCode
from temporalio.worker import Worker

LIFETIME = 15  # seconds; mint.credential_lifetime (the minimum is 10 s)
MINT = {"credential_lifetime": f"{LIFETIME}s"}
WORKER_SUB = "repo:acme/payments:ref:refs/heads/main"  # a job without an environment
STARTER_SUB = "repo:acme/payments:environment:production"
WORKER_POLICY = "e2e-github-payments-worker-credentials"
STARTER_POLICY = "e2e-github-payments-starter-credentials"
WITHIN_GRANT = "e2e-minted-credentials-within-grant"


def worker_job_token(github, **extra) -> str:
    """A GitHub Actions job token of acme/payments on main (no environment), unique jti."""
    return github.mint(github_claims(environment=None, sub=WORKER_SUB, **extra))


def starter_job_token(github, **extra) -> str:
    """A GitHub Actions job token of acme/payments' production environment, unique jti."""
    return github.mint(github_claims(environment="production", **extra))


def worker_scope(queue: str) -> str:
    return f"namespace:payments role:worker task_queue:{queue}"


STARTER_SCOPE = "namespace:payments role:write workflow_type:ExchangeWorkflow"


def exchanged(gw, token: str, scope: str) -> dict:
    status, body = exchange(gw.url, token, scope)
    assert status == 200, f"exchange of `{scope}` refused: {status} {body}"
    return body


def test_worker_with_only_a_ci_token_outlives_its_credentials(gateway, github):
    """The workflow lasts more than 2 credential lifetimes; the worker refreshes at 2/3 of each
    lifetime by exchanging the credential it holds and swapping `client.rpc_metadata`. Every call
    is allowed, and calls made after the first two credentials expired prove the refreshed ones
    are the ones in use."""
    gw = gateway(mint=MINT)
    queue = uid("exchange-q")
    wf_id = uid("exchange-wf")
    steps, work, pause = 4, 2.0, 7.0  # ~36 s: > 2 lifetimes

    async def ci_worker(ci_token: str, done: asyncio.Event) -> RefreshingCredential:
        # What a CI step does with nothing but its job token: exchange it over plain HTTP.
        first = await asyncio.to_thread(exchanged, gw, ci_token, worker_scope(queue))
        credential = RefreshingCredential(gw.url, worker_scope(queue), first)
        client = await Client.connect(gw.address, namespace="payments", rpc_metadata=credential.metadata)
        credential.start(client)
        try:
            async with Worker(client, task_queue=queue, workflows=[ExchangeWorkflow], activities=[exchange_step]):
                while not done.is_set():
                    credential.check()
                    await asyncio.sleep(0.2)
        finally:
            await credential.stop()
        return credential

    async def scenario():
        done = asyncio.Event()
        worker_task = asyncio.create_task(ci_worker(worker_job_token(github), done))
        # The starter is a second CI job with its own (write, one workflow type) credential; it
        # waits for the result over long polls, so it refreshes too.
        first = exchanged(gw, starter_job_token(github), STARTER_SCOPE)
        starter = RefreshingCredential(gw.url, STARTER_SCOPE, first)
        client = await Client.connect(gw.address, namespace="payments", rpc_metadata=starter.metadata)
        starter.start(client)
        t0 = time.monotonic()
        handle = await client.start_workflow(
            ExchangeWorkflow.run, args=[steps, work, pause], id=wf_id, task_queue=queue,
            execution_timeout=timedelta(seconds=120),
        )  # fmt: skip
        result_task = asyncio.create_task(handle.result())
        while not result_task.done():
            if worker_task.done():  # the worker died (e.g. a refused refresh): stop waiting
                worker_task.result()
                raise AssertionError("the worker stopped before the workflow completed")
            starter.check()
            await asyncio.sleep(0.2)
        result = result_task.result()
        elapsed = time.monotonic() - t0
        await starter.stop()
        done.set()
        worker = await worker_task
        return result, elapsed, worker, starter

    result, elapsed, worker, starter = run(scenario(), timeout=120)
    assert result == [f"step {i} done" for i in range(steps)]
    assert elapsed > 2 * LIFETIME, f"the workflow took {elapsed:.1f} s, not more than 2 lifetimes"
    assert worker.refreshes >= 2, f"the worker refreshed {worker.refreshes} times"
    assert starter.refreshes >= 1

    # The credentials: ES256, verifiable with flowgate's published keys (aud `temporal`, iss =
    # flowgate's URL), Temporal's `permissions`, the grant; refreshes keep the identity and chain.
    chain = [c for _, c in worker.issued]
    first = verify(worker.tokens[0], gw.url, expired_ok=True)
    assert first["sub"] == f"github:{WORKER_SUB}", first
    assert first["act"]["sub"] == WORKER_SUB and first["act"]["issuer"] == "github", first
    assert first["permissions"] == ["payments:write"], first
    assert first["task_queues"] == [queue] and first["role"] == "worker", first
    assert first["exp"] - first["iat"] == LIFETIME, first
    assert len({c["jti"] for c in chain}) == len(chain), "every credential has its own jti"
    assert all(c["sub"] == first["sub"] and c["act"] == first["act"] for c in chain), chain
    assert all(c["session_exp"] == first["session_exp"] for c in chain), "one refresh chain"

    # The decision log.
    records = gw.decisions()
    worker_id = f"{MINT_NAME}:github:{WORKER_SUB}"
    denied = [r for r in records if r["decision"] == "deny"]
    assert not denied, f"denied calls or exchanges: {denied}"
    assert not [r for r in records if "expired" in " ".join(r.get("reasons") or [])], "an expired credential was used"

    exchanges = [r for r in records if r["kind"] == "token_exchange"]
    initial = [r for r in exchanges if (r["principal"] or {}).get("id") == f"github:{WORKER_SUB}"]
    assert len(initial) == 1, exchanges
    assert initial[0]["principal"]["type"] == "CiJob" and initial[0]["reasons"] == [WORKER_POLICY], initial
    assert initial[0]["action"] == "IssueCredential" and initial[0]["scope"] == worker_scope(queue), initial
    assert initial[0]["resource"]["namespace"] == "payments", initial
    refreshes = [r for r in exchanges if (r["principal"] or {}).get("id") == worker_id]
    # (+1: a refresh may have been on its way when the worker stopped)
    assert worker.refreshes <= len(refreshes) <= worker.refreshes + 1, (refreshes, worker.refreshes)
    for r in refreshes:
        assert r["principal"]["type"] == "Worker" and r["reasons"] == [WITHIN_GRANT], r
        assert r["scope"] == worker_scope(queue), r
    starter_exchanges = [r for r in exchanges if "production" in (r["principal"] or {}).get("id", "")]
    assert 1 + starter.refreshes <= len(starter_exchanges) <= 2 + starter.refreshes, starter_exchanges
    assert starter_exchanges[0]["reasons"] == [STARTER_POLICY], starter_exchanges

    worker_calls = [r for r in records if r["kind"] == "grpc" and (r["principal"] or {}).get("id") == worker_id]
    assert all(r["decision"] == "allow" and r["reasons"] == [WITHIN_GRANT] for r in worker_calls), worker_calls
    actions = {r["action"] for r in worker_calls}
    for needed in ("PollWorkflowTaskQueue", "RespondWorkflowTaskCompleted", "PollActivityTaskQueue",
                   "RespondActivityTaskCompleted"):  # fmt: skip
        assert needed in actions, f"no {needed} by the worker: {sorted(actions)}"
    # Calls after the initial credential and its first refresh had both expired were allowed:
    # they carried a credential from a refresh of a refresh.
    second_exp = chain[1]["exp"]
    late = [r for r in worker_calls if ts(r) > second_exp + 0.5]
    assert late, f"no worker call after {second_exp} (the second credential's exp); last at {ts(worker_calls[-1])}"
    assert {r["action"] for r in late} & {"PollWorkflowTaskQueue", "PollActivityTaskQueue"}, late
    polled_queues = {(r["resource"] or {}).get("task_queue") for r in worker_calls if r["action"].startswith("Poll")}
    assert polled_queues == {queue}, f"sticky polls are attributed to the worker's queue: {polled_queues}"

    # And the expiry is real: the initial credential is refused now, as UNAUTHENTICATED.
    async def stale():
        client = await connect(gw.address, worker.tokens[0])
        return await expect_rpc_error(
            client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments")),
            RPCStatusCode.UNAUTHENTICATED,
        )

    err = run(stale())
    assert "expired" in err.message, err.message


def test_a_ci_token_is_exchanged_once(gateway, github):
    """Subject tokens are single-use: the same job token twice is `invalid_grant`, and so is a
    credential that was already exchanged for its successor (a refresh)."""
    gw = gateway(mint=MINT)
    queue = uid("replay-q")
    ci_token = worker_job_token(github)

    first = exchanged(gw, ci_token, worker_scope(queue))
    status, again = exchange(gw.url, ci_token, worker_scope(queue))
    assert status == 400, again
    assert again["error"] == "invalid_grant", again
    assert "already exchanged" in again["error_description"], again
    # Not even for another scope.
    status, other = exchange(gw.url, ci_token, worker_scope(queue + "-2"))
    assert (status, other["error"]) == (400, "invalid_grant"), other

    # A refresh consumes the credential it exchanges.
    credential = first["access_token"]
    refreshed = exchanged(gw, credential, worker_scope(queue))
    assert claims(refreshed["access_token"])["jti"] != claims(credential)["jti"]
    status, reused = exchange(gw.url, credential, worker_scope(queue))
    assert (status, reused["error"]) == (400, "invalid_grant"), reused

    records = [r for r in gw.decisions() if r["kind"] == "token_exchange"]
    assert [r["decision"] for r in records] == ["allow", "deny", "deny", "allow", "deny"], records
    replay = records[1]
    assert replay["status"] == 400 and replay["principal"]["id"] == f"github:{WORKER_SUB}", replay
    assert any("invalid_grant" in reason and "already exchanged" in reason for reason in replay["reasons"]), replay


def test_exchanges_outside_policy_are_refused(gateway, github):
    """IssueCredential is decided by policy: another repository, a worker credential for any
    queue, or a starter credential for another workflow type are `unauthorized_client`; a
    refresh may not widen the scope (`invalid_scope`)."""
    gw = gateway(mint=MINT)
    queue = uid("policy-q")
    cases = {
        "another repository": (github.mint(github_claims("acme/other", environment=None)), worker_scope(queue)),
        "worker for any queue": (worker_job_token(github), "namespace:payments role:worker"),
        "another namespace": (worker_job_token(github), f"namespace:analytics role:worker task_queue:{queue}"),
        "starter for another type": (starter_job_token(github),
                                     "namespace:payments role:write workflow_type:DropDatabaseWorkflow"),
        "write from a non-production job": (worker_job_token(github), STARTER_SCOPE),
    }  # fmt: skip
    got = {name: exchange(gw.url, token, scope) for name, (token, scope) in cases.items()}
    for name, (status, body) in got.items():
        assert (status, body.get("error")) == (400, "unauthorized_client"), (name, body)
        assert "IssueCredential" in body["error_description"], (name, body)

    held = exchanged(gw, worker_job_token(github), worker_scope(queue))["access_token"]
    status, wider = exchange(gw.url, held, f"{worker_scope(queue)} task_queue:{queue}-more")
    assert (status, wider["error"]) == (400, "invalid_scope"), wider
    # A wrong audience on the job token is not a credential either.
    status, body = exchange(gw.url, worker_job_token(github, aud="https://elsewhere.example"), worker_scope(queue))
    assert (status, body["error"]) == (400, "invalid_grant"), body
    denials = gw.wait_decisions(lambda r: r["kind"] == "token_exchange" and r["decision"] == "deny", len(cases) + 2)
    assert len(denials) == len(cases) + 2 and all(r["status"] == 400 for r in denials), denials


def test_a_credential_is_held_to_its_grant(gateway, github, temporal):
    """Used outside its grant, a credential is PERMISSION_DENIED by flowgate (through the SDK),
    and the call never reaches Temporal."""
    gw = gateway(mint=MINT)
    queue = uid("grant-q")
    worker_cred = exchanged(gw, worker_job_token(github), worker_scope(queue))["access_token"]
    assert verify(worker_cred, gw.url)["task_queues"] == [queue]
    starter_cred = exchanged(gw, starter_job_token(github), STARTER_SCOPE)["access_token"]
    wf_id = uid("grant-wf")

    async def scenario():
        worker = await connect(gw.address, worker_cred)
        out = {}
        # The worker's own read: fine (workers describe their namespace on start).
        await worker.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))
        out["other queue"] = await expect_rpc_error(
            worker.workflow_service.poll_activity_task_queue(
                PollActivityTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name=queue + "-other"),
                                             identity="e2e"),
                timeout=timedelta(seconds=10),
            ),
            RPCStatusCode.PERMISSION_DENIED,
        )  # fmt: skip
        out["start with role worker"] = await expect_rpc_error(
            worker.start_workflow(ExchangeWorkflow.run, args=[1, 0.0, 0.0], id=wf_id, task_queue=queue),
            RPCStatusCode.PERMISSION_DENIED,
        )
        analytics = await connect(gw.address, worker_cred, namespace="analytics")
        out["other namespace"] = await expect_rpc_error(
            analytics.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="analytics")),
            RPCStatusCode.PERMISSION_DENIED,
        )
        starter = await connect(gw.address, starter_cred)
        out["other workflow type"] = await expect_rpc_error(
            starter.start_workflow("DropDatabaseWorkflow", "prod", id=wf_id, task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )
        # Within its grant the starter credential works: ExchangeWorkflow, on any queue.
        handle = await starter.start_workflow(
            ExchangeWorkflow.run, args=[1, 0.0, 0.0], id=uid("grant-ok"), task_queue=PARKED_QUEUE,
            execution_timeout=timedelta(seconds=30),
        )  # fmt: skip
        # None of the refused calls reached Temporal.
        direct = await connect(temporal, None)
        await expect_rpc_error(direct.get_workflow_handle(wf_id).describe(), RPCStatusCode.NOT_FOUND)
        return out, handle

    out, handle = run(scenario())
    assert handle.result_run_id
    assert f"task queue `{queue}-other` is outside" in out["other queue"].message, out["other queue"].message
    assert "role `worker`" in out["start with role worker"].message, out["start with role worker"].message
    assert "namespace `analytics` is outside" in out["other namespace"].message, out["other namespace"].message
    assert "workflow type `DropDatabaseWorkflow` is outside" in out["other workflow type"].message, out

    worker_id = f"{MINT_NAME}:github:{WORKER_SUB}"
    denied = gw.wait_decisions(by(principal=worker_id, decision="deny"), 3)
    assert sorted(r["action"] for r in denied) == ["DescribeNamespace", "PollActivityTaskQueue",
                                                   "StartWorkflowExecution"], denied  # fmt: skip
    assert all(r["kind"] == "grpc" and r["status"] == 7 and r["principal"]["type"] == "Worker" for r in denied), denied
    starter_denied = gw.wait_decisions(by("StartWorkflowExecution", principal=f"{MINT_NAME}:github:{STARTER_SUB}",
                                          decision="deny"), 1)  # fmt: skip
    assert starter_denied and starter_denied[0]["resource"]["workflow_type"] == "DropDatabaseWorkflow", starter_denied


def test_a_queue_limited_credential_cannot_complete_another_queues_activity(gateway, okta, github, temporal):
    """A worker credential for queue A completes, by id, an activity that a workflow on queue B
    scheduled, and so injects its result into B's workflow. It must be PERMISSION_DENIED."""
    gw = gateway(mint=MINT)
    own_queue, victim_queue = uid("grant-own-q"), uid("grant-victim-q")
    credential = exchanged(gw, worker_job_token(github), worker_scope(own_queue))["access_token"]
    wf_id = uid("grant-victim")

    async def scenario():
        alice = await connect(gw.address, deployer(okta, "alice"))
        await alice.start_workflow(DeployWorkflow.run, "api", id=wf_id, task_queue=victim_queue,
                                   execution_timeout=timedelta(seconds=60))  # fmt: skip
        # Queue B's own worker (straight to Temporal) runs the first workflow task: the
        # activity `1` (deploy_step) is scheduled on queue B and waits for B's activity worker.
        direct = await connect(temporal, None)
        victim = direct.get_workflow_handle(wf_id)
        try:
            async with Worker(direct, task_queue=victim_queue, workflows=[DeployWorkflow]):
                for _ in range(100):
                    if (await victim.describe()).raw_description.pending_activities:
                        break
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("the activity was never scheduled")
            worker = await connect(gw.address, credential)
            forged = await DataConverter.default.encode(["forged by a worker of " + own_queue])
            await expect_rpc_error(
                worker.workflow_service.respond_activity_task_completed_by_id(
                    RespondActivityTaskCompletedByIdRequest(namespace="payments", workflow_id=wf_id, activity_id="1",
                                                            result=Payloads(payloads=forged), identity="e2e")
                ),
                RPCStatusCode.PERMISSION_DENIED,
            )  # fmt: skip
        finally:
            await victim.terminate("e2e cleanup")

    run(scenario())
