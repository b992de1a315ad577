"""A second attack review of issue 10: what the questions beyond the RPC must not do.

flowgate fails a workflow task upstream when it refuses one of its commands, so that the
workflow's history says why. That is an act flowgate does on the caller's behalf, so it must
only follow a task completion the caller was allowed to send: a caller no policy permits
`RespondWorkflowTaskCompleted` must not get flowgate to fail anyone's workflow task (a
RespondWorkflowTaskFailed it could not send itself), nor make flowgate ask and record a
question per command of a request that was refused anyway.

(A) shows Temporal acts on such a failure (the task is failed, the history says so); (B) sends
the same completion through flowgate as a caller with no permission at all: it is refused, and
the victim's workflow task is untouched.
"""

from __future__ import annotations

import asyncio

from e2e_raw import NAMESPACE, complete_workflow_task, events_of, history, poll_workflow_task, start_child
from e2e_util import by, connect, okta_claims, run, uid
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.api.failure.v1 import Failure
from temporalio.api.workflowservice.v1 import RespondWorkflowTaskFailedRequest
from temporalio.service import RPCError, RPCStatusCode
from test_beyond_rpc import Started, direct, mallory, policies, seconds, start_direct

QUEUE = "review-victims"  # no worker serves it: the test holds the victim's task itself (A)


async def failed_tasks(client, workflow_id: str) -> list:
    return events_of(await history(client, workflow_id), EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)


def test_a_refused_completion_fails_no_workflow_task_upstream(gateway, okta, temporal):
    gw = gateway(policies=policies())
    started = Started()
    nobody = okta.mint(okta_claims("nobody", []))  # authenticated, permitted nothing

    async def scenario():
        temporal_client = await direct(temporal)
        attacker = await connect(gw.address, nobody)
        try:
            # (A) Directly: failing a workflow task by its token writes WorkflowTaskFailed.
            victim = await start_direct(temporal_client, started, "Victim", QUEUE, "review-a")
            task = await poll_workflow_task(temporal_client, QUEUE, victim.id)
            await temporal_client.workflow_service.respond_workflow_task_failed(
                RespondWorkflowTaskFailedRequest(
                    namespace=NAMESPACE, task_token=task.task_token, identity="review",
                    cause=WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
                    failure=Failure(message="failed by someone else"),
                ),
                retry=False, timeout=seconds(10),
            )  # fmt: skip
            assert await failed_tasks(temporal_client, victim.id), "Temporal did not fail the workflow task"

            # (B) Through flowgate: a worker allowed on `deploy` polls the victim's task (so its
            # token is one flowgate sealed); a caller no policy permits anything sends a
            # completion carrying that token and commands, and is refused ...
            worker = await connect(gw.address, mallory(okta))
            victim = await start_direct(temporal_client, started, "Victim", "deploy", "review-b")
            task = await poll_workflow_task(worker, "deploy", victim.id)
            commands = [start_child(uid(f"child-{i}"), "DropTables", QUEUE) for i in range(200)]
            try:
                await complete_workflow_task(attacker, task, commands, identity="nobody")
                raise AssertionError("flowgate let a caller without permissions complete a workflow task")
            except RPCError as e:
                assert e.status == RPCStatusCode.PERMISSION_DENIED, e
                assert "`RespondWorkflowTaskCompleted`" in e.message, f"not refused as the RPC: {e.message!r}"
            # ... and flowgate failed no workflow task on its behalf.
            await asyncio.sleep(1.0)
            failed = await failed_tasks(temporal_client, victim.id)
            assert not failed, (
                "flowgate failed the victim's workflow task for a caller that may not respond to it: "
                f"{failed[0].workflow_task_failed_event_attributes.failure.message!r}"
            )
            # The task is still the victim's own: its worker completes it.
            await complete_workflow_task(worker, task, [])
        finally:
            await started.terminate_all(temporal_client)

    run(scenario(), 90)
    rec = gw.wait_decisions(by("RespondWorkflowTaskCompleted", principal="okta:nobody", decision="deny"), 1)[-1]
    # The refused RPC is the whole answer: no question per command of a call that was refused.
    assert len(rec.get("questions") or []) <= 1, f"a refused call asked {len(rec['questions'])} questions"
