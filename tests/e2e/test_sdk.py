"""The Python SDK through flowgate: starts, denials, a real worker, signals and queries."""

import asyncio
from datetime import timedelta

from e2e_util import (
    PARKED_QUEUE, TASK_QUEUE, by, check_record_shape, connect, deployer, expect_rpc_error, okta_claims, run, uid, worker_token,
)  # fmt: skip
from e2e_workflows import DeployWorkflow, DropDatabaseWorkflow, deploy_step
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCStatusCode
from temporalio.worker import Worker

START = "StartWorkflowExecution"


def test_allowed_start_of_deploy_workflow(gateway, okta):
    gw = gateway()
    wf_id = uid("deploy")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"))
        handle = await client.start_workflow(
            DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=60)
        )
        desc = await handle.describe()  # a read action, also allowed
        return handle, desc

    handle, desc = run(scenario())
    assert handle.id == wf_id and handle.result_run_id
    assert desc.workflow_type == "DeployWorkflow"

    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    check_record_shape(rec)
    assert rec["decision"] == "allow"
    assert "e2e-deployers-start-deploy" in rec["reasons"], rec
    p = rec["principal"]
    assert (p["type"], p["id"], p["issuer"]) == ("User", "okta:alice", "okta"), rec
    res = rec["resource"]
    assert res["type"] == "Workflow" and res["namespace"] == "payments", rec
    assert res["workflow_type"] == "DeployWorkflow" and res["task_queue"] == PARKED_QUEUE, rec
    assert rec["client"]["name"] == "temporal-python" and rec["client"]["version"], rec
    assert rec["client"]["addr"].startswith("127.0.0.1:"), rec


def test_start_of_other_workflow_type_is_permission_denied(gateway, okta, temporal):
    gw = gateway()
    wf_id = uid("drop")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"), api_key=True)
        err = await expect_rpc_error(
            client.start_workflow(DropDatabaseWorkflow.run, "prod", id=wf_id, task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )
        # The denied start never reached Temporal.
        direct = await connect(temporal, None)
        await expect_rpc_error(direct.get_workflow_handle(wf_id).describe(), RPCStatusCode.NOT_FOUND)
        return err

    err = run(scenario())
    assert START in err.message, f"denial message does not name the action: {err.message!r}"
    assert "DropDatabaseWorkflow" in err.message or wf_id in err.message or "payments" in err.message, err.message
    assert "permit (" not in err.message and "@id(" not in err.message, f"policy text leaked: {err.message!r}"
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    check_record_shape(rec)
    assert rec["decision"] == "deny" and rec["status"] == 7, rec
    assert rec["principal"]["id"] == "okta:alice", rec
    assert rec["resource"]["workflow_type"] == "DropDatabaseWorkflow", rec


def test_start_in_analytics_namespace_is_permission_denied(gateway, okta, temporal):
    gw = gateway()
    wf_id = uid("deploy-analytics")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"), namespace="analytics")
        await expect_rpc_error(
            client.start_workflow(DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )
        # and it is not there: ask Temporal directly
        direct = await connect(temporal, None, namespace="analytics")
        await expect_rpc_error(direct.get_workflow_handle(wf_id).describe(), RPCStatusCode.NOT_FOUND)

    run(scenario())
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "deny" and rec["resource"]["namespace"] == "analytics", rec


def test_worker_through_flowgate_runs_deploy_with_signal_and_query(gateway, okta):
    gw = gateway()
    wf_id = uid("deploy-worker")

    async def scenario():
        worker_client = await connect(gw.address, worker_token(okta, "deploy-worker"))
        client = await connect(gw.address, deployer(okta, "alice"))
        async with Worker(worker_client, task_queue=TASK_QUEUE, workflows=[DeployWorkflow], activities=[deploy_step]):
            handle = await client.start_workflow(
                DeployWorkflow.run, "billing", id=wf_id, task_queue=TASK_QUEUE, execution_timeout=timedelta(seconds=60)
            )
            # Wait until the activity ran and the workflow waits for approval (query via flowgate).
            status = None
            for _ in range(100):
                status = await handle.query(DeployWorkflow.status)
                if status == "awaiting-approval":
                    break
                await asyncio.sleep(0.1)
            assert status == "awaiting-approval", status
            # A signal name the policy does not permit is denied ...
            await expect_rpc_error(handle.signal("rollback", "x"), RPCStatusCode.PERMISSION_DENIED)
            # ... "approve" is allowed.
            await handle.signal(DeployWorkflow.approve, "alice")
            return await handle.result()

    assert run(scenario(), 90) == "built billing; approved by alice"

    decisions = gw.decisions()
    worker_denies = [d for d in decisions if (d.get("principal") or {}).get("id") == "okta:deploy-worker" and d["decision"] == "deny"]
    assert not worker_denies, f"worker RPCs denied: {[(d['action'], d['resource'], d['reasons']) for d in worker_denies]}"
    worker_actions = {d["action"] for d in decisions if (d.get("principal") or {}).get("id") == "okta:deploy-worker"}
    for action in ("PollWorkflowTaskQueue", "PollActivityTaskQueue", "RespondWorkflowTaskCompleted",
                   "RespondActivityTaskCompleted"):  # fmt: skip
        assert action in worker_actions, f"no {action} decision for the worker: {sorted(worker_actions)}"
    polls = [d for d in decisions if d["action"] == "PollWorkflowTaskQueue"]
    assert all(d["resource"]["type"] == "TaskQueue" and d["resource"]["task_queue"] == TASK_QUEUE for d in polls), polls[:3]
    alice = [d for d in decisions if (d.get("principal") or {}).get("id") == "okta:alice"]
    signals = [d for d in alice if d["action"] == "SignalWorkflowExecution"]
    assert sorted(d["decision"] for d in signals) == ["allow", "deny"], signals
    assert [d["reasons"] for d in signals if d["decision"] == "allow"] == [["e2e-deployers-approve"]], signals
    queries = [d for d in alice if d["action"] == "QueryWorkflow"]
    assert queries and all(d["decision"] == "allow" and "e2e-deployers-read" in d["reasons"] for d in queries), queries
    assert all(d["resource"]["workflow_id"] == wf_id for d in signals + queries), signals + queries

    # The worker is gone, so none of its long polls is still in flight: SIGTERM stops at once.
    rc = gw.stop()
    assert rc == 0 and gw.stop_seconds < 10, f"SIGTERM after the worker left: rc={rc}, {gw.stop_seconds} s"


def test_worker_token_cannot_poll_other_task_queue_or_start(gateway, okta):
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import PollActivityTaskQueueRequest

    gw = gateway()

    async def scenario():
        client = await connect(gw.address, worker_token(okta, "deploy-worker"))
        req = PollActivityTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name="payroll"), identity="e2e")
        await expect_rpc_error(
            client.workflow_service.poll_activity_task_queue(req, timeout=timedelta(seconds=5)),
            RPCStatusCode.PERMISSION_DENIED,
        )
        await expect_rpc_error(
            client.start_workflow(DeployWorkflow.run, "x", id=uid("w"), task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )

    run(scenario())
    denies = gw.wait_decisions(by(principal="okta:deploy-worker", decision="deny"), 2)
    assert sorted(d["action"] for d in denies) == ["PollActivityTaskQueue", START], denies
    poll = next(d for d in denies if d["action"] == "PollActivityTaskQueue")
    assert poll["resource"]["task_queue"] == "payroll", poll


def test_query_needs_read_permission(gateway, okta, temporal):
    """Someone outside every group can neither query nor describe a running deploy."""
    gw = gateway()
    wf_id = uid("deploy-q")

    async def scenario():
        direct = await connect(temporal, None)
        handle = await direct.start_workflow(DeployWorkflow.run, "x", id=wf_id, task_queue="nobody-polls",
                                             execution_timeout=timedelta(seconds=30))  # fmt: skip
        outsider = await connect(gw.address, okta.mint(okta_claims("eve", ["contractors"])))
        h = outsider.get_workflow_handle(wf_id)
        await expect_rpc_error(h.describe(), RPCStatusCode.PERMISSION_DENIED)
        await expect_rpc_error(h.query("status"), RPCStatusCode.PERMISSION_DENIED)
        await handle.terminate("e2e cleanup")

    try:
        run(scenario())
    except WorkflowQueryFailedError as e:  # pragma: no cover - would mean the query went through
        raise AssertionError(f"query reached the workflow: {e}")
    denies = gw.wait_decisions(by(principal="okta:eve", decision="deny"), 2)
    assert sorted(d["action"] for d in denies) == ["DescribeWorkflowExecution", "QueryWorkflow"], denies
    assert all(d["reasons"] == [] or not any(r.startswith("e2e-") for r in d["reasons"]) for d in denies), denies


def test_long_poll_is_not_cut_short(gateway, okta):
    """An empty poll lasts until the caller's own deadline: flowgate adds no shorter timeout."""
    import time

    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest

    gw = gateway()
    deadline = 6.0

    async def scenario():
        client = await connect(gw.address, worker_token(okta, "deploy-worker"))
        # A queue name the workers policy allows, with nothing on it: "deploys" sees no parked starts.
        req = PollWorkflowTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name=TASK_QUEUE), identity="e2e-poll")
        t0 = time.monotonic()
        try:
            resp = await client.workflow_service.poll_workflow_task_queue(
                req, retry=False, timeout=timedelta(seconds=deadline)
            )
            outcome = "empty" if not resp.task_token else "task"
        except RPCError as e:
            outcome = e.status.name
        return outcome, time.monotonic() - t0

    from temporalio.service import RPCError

    outcome, elapsed = run(scenario(), 30)
    assert outcome in ("DEADLINE_EXCEEDED", "CANCELLED", "empty"), outcome
    # Temporal itself answers an empty poll ~1 s before the caller's deadline (its tail room).
    assert elapsed >= deadline - 1.5, f"poll ended after {elapsed:.1f} s ({outcome}), before its {deadline} s deadline"
