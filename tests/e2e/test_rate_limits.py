"""Rate limits against the real dev server: a CI job starting workflows in a loop is held to its
limit (RESOURCE_EXHAUSTED with a retry hint, recorded and counted) while a person's calls keep
succeeding; a limit attached to a policy by its @id; a concurrency cap on long polls."""

import asyncio
import time
import urllib.request
from datetime import timedelta

import grpc
from e2e_util import PARKED_QUEUE, by, connect, deployer, github_claims, run, uid, worker_token
from e2e_workflows import DeployWorkflow
from temporalio.service import RPCError, RPCStatusCode

LIMITS = """
[[rate_limits]]
name = "ci-starts"
actions = ["StartWorkflowExecution"]
principal_types = ["CiJob"]
rate = 0.2
burst = 3
"""


def metric(gw, name: str, **labels) -> float:
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_ci_job_starting_in_a_loop_is_limited_and_a_person_is_not(gateway, okta, github, temporal):
    gw = gateway(extra=LIMITS.replace("rate = 0.2", "rate = 2.0"))
    alice_seconds: list[float] = []

    async def scenario():
        ci = await connect(gw.address, github.mint(github_claims()))
        alice = await connect(gw.address, deployer(okta, "alice"))
        started = time.monotonic()
        for i in range(10):
            # The SDK retries RESOURCE_EXHAUSTED itself, after the pushback flowgate sends: the
            # loop slows to the limit instead of failing.
            await ci.start_workflow(DeployWorkflow.run, "api", id=uid(f"ci-loop-{i}"), task_queue=PARKED_QUEUE,
                                    execution_timeout=timedelta(seconds=30))  # fmt: skip
            # The person is not a CiJob: the limit does not pick them, and they never wait.
            t = time.monotonic()
            await alice.start_workflow(DeployWorkflow.run, "api", id=uid(f"alice-{i}"), task_queue=PARKED_QUEUE,
                                       execution_timeout=timedelta(seconds=30))  # fmt: skip
            alice_seconds.append(time.monotonic() - t)
        return time.monotonic() - started

    elapsed = run(scenario(), timeout=120)
    ci_starts = gw.wait_decisions(lambda r: by("StartWorkflowExecution")(r) and r["principal"]["issuer"] == "github", 11)
    allowed = [r for r in ci_starts if r["decision"] == "allow"]
    limited = [r for r in ci_starts if r.get("rate_limit") == "ci-starts"]
    assert len(allowed) == 10, "every start got through in the end"
    # Refusals did happen, and the allowed ones kept to a burst of 3 and 2 a second after it.
    assert limited, ci_starts
    assert elapsed >= (10 - 3) / 2.0 - 0.5, f"10 starts in {elapsed:.1f}s: the limit did not slow them"
    record = limited[0]
    assert record["decision"] == "deny" and record["status"] == 8 and record["refused_by"] == "flowgate", record
    assert "e2e-github-production-deploy" in record["reasons"], record
    alice_starts = gw.wait_decisions(lambda r: by("StartWorkflowExecution")(r) and r["principal"]["id"] == "okta:alice", 10)
    assert len(alice_starts) == 10 and all(r["decision"] == "allow" for r in alice_starts), alice_starts
    assert max(alice_seconds) < 2.0, alice_seconds
    assert metric(gw, "flowgate_rate_limited_total", limit="ci-starts") == len(limited)


def test_the_refusal_carries_grpcs_retry_hint(gateway, github):
    gw = gateway(extra=LIMITS.replace("burst = 3", "burst = 1"))
    from temporalio.api.common.v1 import WorkflowType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest

    token = github.mint(github_claims())
    channel = grpc.insecure_channel(gw.address)
    start = channel.unary_unary(
        "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution",
        request_serializer=StartWorkflowExecutionRequest.SerializeToString,
        response_deserializer=lambda b: b,
    )

    def request():
        return StartWorkflowExecutionRequest(namespace="payments", workflow_id=uid("raw"), request_id=uid("r"),
                                             workflow_type=WorkflowType(name="DeployWorkflow"),
                                             task_queue=TaskQueue(name=PARKED_QUEUE))  # fmt: skip

    metadata = [("authorization", f"Bearer {token}")]
    start(request(), metadata=metadata, timeout=10)
    try:
        start(request(), metadata=metadata, timeout=10)
        raise AssertionError("the second start was not limited")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
        pushback = dict(e.trailing_metadata() or ()).get("grpc-retry-pushback-ms")
        assert pushback is not None and 1000 <= int(pushback) <= 5000, e.trailing_metadata()
    channel.close()


def test_a_limit_attached_to_a_policy_caps_concurrent_long_polls(gateway, okta):
    gw = gateway(extra="""
[[rate_limits]]
name = "worker-polls"
policies = ["e2e-workers-poll-deploys"]
rate = 0.001
max_concurrent = 2
""")

    async def scenario():
        client = await connect(gw.address, worker_token(okta))
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import PollActivityTaskQueueRequest

        def poll():
            return asyncio.ensure_future(client.workflow_service.poll_activity_task_queue(
                PollActivityTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name="deploys"), identity="w"),
                retry=False))  # fmt: skip

        polls = [poll(), poll()]  # long polls spend no tokens, only slots
        await asyncio.sleep(1.0)
        third = poll()
        done, _ = await asyncio.wait([third], timeout=5)
        assert done, "the third poll was answered at once"
        error = third.exception()
        assert isinstance(error, RPCError) and error.status == RPCStatusCode.RESOURCE_EXHAUSTED, error
        assert "allows 2 calls in flight at once" in error.message, error.message
        for p in polls:
            p.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.sleep(0.5)
        # The slots came back when the polls ended.
        again = poll()
        await asyncio.sleep(1.0)
        assert not again.done(), "a new poll is waiting for a task, not refused"
        again.cancel()

    run(scenario(), timeout=60)
