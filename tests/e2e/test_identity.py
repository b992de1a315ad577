"""Identity in Temporal's own history (issue 12): whatever `identity` a client sends, the history
Temporal records names the principal flowgate verified; starts and signals carry a
`flowgate-principal` header that workflow code reads, and a forged one never survives; every
forwarded call gets an outcome record, whose run id is the run Temporal made."""

import asyncio
import json
import subprocess
from datetime import timedelta

from e2e_util import connect, okta_claims, run, temporal_bin, uid
from e2e_workflows import FLOWGATE_HEADER, InitiatorInterceptor, InitiatorWorkflow
from temporalio import client as temporal_client
from temporalio.api.common.v1 import Payload
from temporalio.worker import Worker

QUEUE = "stamp-q"

POLICIES = {
    "stamp.cedar": """
// Deployers start, signal and terminate the stamp-* workflows of payments, and read payments.
@id("e2e-stamp-clients")
permit (
  principal in Temporal::Group::"okta:deployers",
  action in [
    Temporal::Action::"StartWorkflowExecution",
    Temporal::Action::"SignalWorkflowExecution",
    Temporal::Action::"SignalWithStartWorkflowExecution",
    Temporal::Action::"TerminateWorkflowExecution"
  ],
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when { resource has id && resource.id like "stamp-*" };

@id("e2e-stamp-read")
permit (
  principal in Temporal::Group::"okta:deployers",
  action in Temporal::Action::"read",
  resource in Temporal::Namespace::"payments"
);

// Workers serve stamp-q.
@id("e2e-stamp-workers")
permit (
  principal in Temporal::Group::"okta:workers",
  action in [Temporal::Action::"worker", Temporal::Action::"read"],
  resource in Temporal::Namespace::"payments"
)
unless { resource is Temporal::TaskQueue && resource.name != "stamp-q" };
""",
}

ALICE = "okta:alice via flowgate"
WORKER = "okta:stamp-worker via flowgate"


def history_identities(temporal: str, workflow_id: str) -> list[tuple[str, str]]:
    """(event type, identity) of every event that records one, read from Temporal directly."""

    async def read():
        direct = await connect(temporal, None)
        history = await direct.get_workflow_handle(workflow_id).fetch_history()
        out = []
        for event in history.events:
            kind = event.WhichOneof("attributes")
            attributes = getattr(event, kind)
            if hasattr(attributes, "identity"):
                out.append((kind.removesuffix("_event_attributes"), attributes.identity))
        return out

    return run(read())


class ForgedInitiator(temporal_client.Interceptor):
    """A client that claims, in the header workflow code trusts, to be someone else."""

    def intercept_client(self, next):
        return _Forge(next)


FORGED = Payload(metadata={"encoding": b"json/plain"}, data=b'{"principal":"okta:ceo"}')


class _Forge(temporal_client.OutboundInterceptor):
    async def start_workflow(self, input):
        input.headers = {**input.headers, FLOWGATE_HEADER: FORGED}
        return await super().start_workflow(input)

    async def signal_workflow(self, input):
        input.headers = {**input.headers, FLOWGATE_HEADER: FORGED}
        return await super().signal_workflow(input)


def test_history_names_the_verified_principal_whatever_identity_the_client_sends(gateway, okta, temporal):
    gw = gateway(policies=POLICIES)
    started, with_start = uid("stamp-start"), uid("stamp-sws")

    async def scenario():
        token = okta.mint(okta_claims("alice", ["deployers"]))
        client = await connect(gw.address, token, identity="mallory")
        handle = await client.start_workflow(InitiatorWorkflow.run, id=started, task_queue="stamp-parked")
        await handle.signal(InitiatorWorkflow.finish)
        await handle.terminate("done here")
        sws = await client.start_workflow(
            InitiatorWorkflow.run, id=with_start, task_queue="stamp-parked", start_signal="finish"
        )
        await sws.terminate("done here")
        return handle.result_run_id

    run_id = run(scenario())
    events = history_identities(temporal, started)
    assert [kind for kind, _ in events] == [
        "workflow_execution_started",
        "workflow_execution_signaled",
        "workflow_execution_terminated",
    ], events
    assert all(identity == ALICE for _, identity in events), events
    sws_events = history_identities(temporal, with_start)
    assert ("workflow_execution_started", ALICE) in sws_events, sws_events
    assert ("workflow_execution_signaled", ALICE) in sws_events, sws_events
    assert not any("mallory" in identity for _, identity in events + sws_events)

    # "Who started run X" is one lookup: the outcome names the decision, the decision the principal.
    outcomes = gw.outcomes()
    start_outcome = next(o for o in outcomes if o.get("run_id") == run_id)
    assert start_outcome["status"] == 0 and start_outcome["started"] is True, start_outcome
    assert start_outcome["method"] == "StartWorkflowExecution" and start_outcome["duration_us"] > 0, start_outcome
    decision = next(d for d in gw.decisions() if d["decision_id"] == start_outcome["decision_id"])
    assert decision["principal"]["id"] == "okta:alice" and decision["resource"]["workflow_id"] == started

    # The run id recorded is the one Temporal itself reports.
    described = subprocess.run(
        [temporal_bin(), "workflow", "describe", "--address", temporal, "--namespace", "payments",
         "--workflow-id", started, "--output", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    info = json.loads(described.stdout)
    described_run = info["workflowExecutionInfo"]["execution"]["runId"]
    assert described_run == run_id == start_outcome["run_id"], (described_run, run_id, start_outcome)

    # Every forwarded call has exactly one outcome, linked to an allow.
    allowed = {d["decision_id"] for d in gw.decisions() if d["decision"] == "allow"}
    linked = [o["decision_id"] for o in outcomes]
    assert sorted(linked) == sorted(set(linked)), "one outcome per call"
    assert set(linked) <= allowed, set(linked) - allowed
    forwarded_starts = [d for d in gw.decisions() if d["decision"] == "allow"]
    assert {d["decision_id"] for d in forwarded_starts} <= set(linked), "every allowed call has its outcome"


def test_workflow_code_reads_the_verified_initiator_and_a_forged_one_is_replaced(gateway, okta, temporal):
    gw = gateway(policies=POLICIES)
    workflow_id = uid("stamp-initiator")

    async def scenario():
        worker_client = await connect(gw.address, okta.mint(okta_claims("stamp-worker", ["workers"])))
        token = okta.mint(okta_claims("alice", ["deployers"], email="alice@example.com"))
        client = await connect(gw.address, token, identity="mallory", interceptors=[ForgedInitiator()])
        async with Worker(worker_client, task_queue=QUEUE, workflows=[InitiatorWorkflow],
                          interceptors=[InitiatorInterceptor()]):  # fmt: skip
            handle = await client.start_workflow(
                InitiatorWorkflow.run, id=workflow_id, task_queue=QUEUE, execution_timeout=timedelta(seconds=60)
            )
            await handle.signal(InitiatorWorkflow.finish)
            return await asyncio.wait_for(handle.result(), 60)

    result = run(scenario(), 90)
    started_by, signalled_by = result["started_by"], result["signalled_by"]
    assert started_by["principal"] == "okta:alice", result
    assert started_by["kind"] == "User" and started_by["issuer"] == "okta", result
    assert started_by["claims"] == {"email": "alice@example.com"}, result
    assert [s["principal"] for s in signalled_by] == ["okta:alice"], result
    # The header names the decision that let the call through.
    decisions = {d["decision_id"]: d for d in gw.decisions()}
    start_decision = decisions[started_by["decision_id"]]
    assert start_decision["action"] == "StartWorkflowExecution" and start_decision["decision"] == "allow"
    assert decisions[signalled_by[0]["decision_id"]]["action"] == "SignalWorkflowExecution"

    # The worker's own calls are in the history under its verified principal too.
    events = dict(history_identities(temporal, workflow_id))
    assert events["workflow_execution_started"] == ALICE, events
    assert events["workflow_task_started"] == WORKER, events
    assert events["workflow_task_completed"] == WORKER, events
