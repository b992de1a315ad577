"""What Temporal does beyond the RPC flowgate reads (issue 10), tried as an attacker would.

Each test has two halves:

(A) the attack sent to the dev server *directly*: Temporal acts (a child runs, an activity is
    completed, a ledger is terminated, ...). This shows what is at stake and does not depend
    on flowgate.
(B) the same attack *through flowgate*, by a principal whose policy is narrow: flowgate must
    refuse it, the effect must be absent from Temporal, and the decision record must name the
    question that was refused (`questions`: the RPC first, then what it implies). Refused
    commands are PERMISSION_DENIED naming the command, and the workflow's history shows a
    WorkflowTaskFailed naming the command and the decision; a task token flowgate did not
    hand out is PERMISSION_DENIED "task token was not issued by flowgate"; a non-normal queue
    kind outside a workflow poll is INVALID_ARGUMENT; someone else's sticky queue is
    PERMISSION_DENIED "sticky task queue `X` belongs to another worker"; a start is refused
    as the terminate, signal or poll it implies.

The principals:

* `okta:mallory` (group `deploy-workers`): a worker allowed only task queue `deploy` in
  namespace `payments`; it may read namespace descriptions and histories, as SDK workers do.
* `okta:payroll-worker` (group `payments-team-workers`): the other team's worker, on queue
  `payments-team`.
* `okta:alice` (group `deployers`): may start `DeployService` on `deploy`, and describe
  `payments`. `okta:ana` (group `analytics-readers`): may describe `analytics` only.
* the GitHub Actions job of acme/payments, production: may start (and signal-with-start)
  `DeployService`, and a forbid says CI never terminates.
* a Buildkite job of the `payments-workers` pipeline, under the repository's own example
  policy `policies/ci.cedar` (item 6 of the issue).

Policies that use the new command actions (`ScheduleActivityTask`,
`StartChildWorkflowExecution`, ...) are kept apart in COMMAND_POLICIES: they load only once
the schema names those actions, which COMMAND_ACTIONS_IN_SCHEMA detects from
policies/schema.cedarschema. Before that, a worker's commands are not asked about at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid

import pytest
from beyond_workflows import DeployChild, DeployListener, DeployParent, build_artifact
from conftest import REPO, TestIssuer
from e2e_raw import (
    NAMESPACE, STICKY, cancel_external, complete_workflow_task, continue_as_new, event_names, events_of,
    forge_activity_task_token, history, payloads, poll_activity_task, poll_workflow_task, queue, schedule_activity,
    seconds, signal_external, start_child,
)  # fmt: skip
from e2e_util import by, connect, github_claims, okta_claims, run, temporal_bin, uid
from temporalio.api.batch.v1 import BatchOperationTermination
from temporalio.api.common.v1 import WorkflowExecution, WorkflowType
from temporalio.api.enums.v1 import EventType, TaskQueueKind, WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.api.workflowservice.v1 import (
    DescribeNamespaceRequest, DescribeWorkflowExecutionRequest, PollWorkflowTaskQueueRequest,
    RespondActivityTaskCompletedByIdRequest, RespondActivityTaskCompletedRequest,
    SignalWithStartWorkflowExecutionRequest, StartBatchOperationRequest, StartWorkflowExecutionRequest,
    TerminateWorkflowExecutionRequest,
)  # fmt: skip
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

DEPLOY = "deploy"  # the only queue the deploy workers may serve
TEAM_QUEUE = "payments-team"  # another team's queue
MALLORY = "okta:mallory"

SCHEMA = REPO / "policies" / "schema.cedarschema"
COMMAND_ACTIONS_IN_SCHEMA = 'action "StartChildWorkflowExecution"' in SCHEMA.read_text()

# Policies that load against today's schema.
POLICIES = {
    "workers.cedar": """
// The deploy workers serve task queue `deploy` in payments, and no other queue.
@id("deploy-workers-queue")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action in Temporal::Action::"worker",
  resource is Temporal::TaskQueue in Temporal::Namespace::"payments"
)
when { resource.name == "deploy" };

// Respond*, heartbeats and worker heartbeats name only the namespace.
@id("deploy-workers-respond")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action in Temporal::Action::"worker",
  resource in Temporal::Namespace::"payments"
)
unless { resource is Temporal::TaskQueue || resource is Temporal::Workflow };

// SDK workers describe their namespace and fetch histories.
@id("deploy-workers-read")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action in [Temporal::Action::"DescribeNamespace", Temporal::Action::"GetWorkflowExecutionHistory"],
  resource in Temporal::Namespace::"payments"
);

// The payments team's workers serve `payments-team`.
@id("team-workers-queue")
permit (
  principal in Temporal::Group::"okta:payments-team-workers",
  action in Temporal::Action::"worker",
  resource is Temporal::TaskQueue in Temporal::Namespace::"payments"
)
when { resource.name == "payments-team" };

@id("team-workers-respond")
permit (
  principal in Temporal::Group::"okta:payments-team-workers",
  action in Temporal::Action::"worker",
  resource in Temporal::Namespace::"payments"
)
unless { resource is Temporal::TaskQueue || resource is Temporal::Workflow };
""",
    "people.cedar": """
// Release managers start DeployService on `deploy`, and nothing else.
@id("deployers-start-deploy-service")
permit (
  principal in Temporal::Group::"okta:deployers",
  action == Temporal::Action::"StartWorkflowExecution",
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when {
  resource has type && resource.type == "DeployService" &&
  resource has task_queue && resource.task_queue == "deploy"
};

@id("deployers-describe-payments")
permit (
  principal in Temporal::Group::"okta:deployers",
  action == Temporal::Action::"DescribeNamespace",
  resource == Temporal::Namespace::"payments"
);

@id("analytics-readers-describe-analytics")
permit (
  principal in Temporal::Group::"okta:analytics-readers",
  action == Temporal::Action::"DescribeNamespace",
  resource == Temporal::Namespace::"analytics"
);
""",
    "ci.cedar": """
// The production environment of acme/payments starts DeployService, under any id.
@id("ci-starts-deploy-service")
permit (
  principal is Temporal::CiJob,
  action in [
    Temporal::Action::"StartWorkflowExecution",
    Temporal::Action::"SignalWithStartWorkflowExecution"
  ],
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when {
  principal.issuer == "github" &&
  principal.hasTag("repository") && principal.getTag("repository") == "acme/payments" &&
  principal.hasTag("environment") && principal.getTag("environment") == "production" &&
  resource has type && resource.type == "DeployService"
};

// CI never terminates a workflow.
@id("ci-never-terminates")
forbid (
  principal is Temporal::CiJob,
  action == Temporal::Action::"TerminateWorkflowExecution",
  resource
);
""",
}

# Policies that need the command actions of issue 10 (loaded once the schema has them).
COMMAND_POLICIES = {
    "worker-commands.cedar": """
// What a deploy workflow may do as itself: activities, children and continue-as-new stay on
// `deploy`; signals and cancels reach only workflows whose id starts with `deploy-`.
@id("deploy-workers-activities-on-deploy")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action == Temporal::Action::"ScheduleActivityTask",
  resource is Temporal::TaskQueue in Temporal::Namespace::"payments"
)
when { resource.name == "deploy" };

@id("deploy-workers-children-on-deploy")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action in [
    Temporal::Action::"StartChildWorkflowExecution",
    Temporal::Action::"ContinueAsNewWorkflowExecution"
  ],
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when { resource has task_queue && resource.task_queue == "deploy" };

@id("deploy-workers-signal-deploys")
permit (
  principal in Temporal::Group::"okta:deploy-workers",
  action in [
    Temporal::Action::"SignalExternalWorkflowExecution",
    Temporal::Action::"RequestCancelExternalWorkflowExecution"
  ],
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when { resource has id && resource.id like "deploy-*" };
""",
}


def policies() -> dict:
    return {**POLICIES, **(COMMAND_POLICIES if COMMAND_ACTIONS_IN_SCHEMA else {})}


# --------------------------------------------------------------------------------------------
# Principals and clients


def mallory(okta) -> str:
    return okta.mint(okta_claims("mallory", ["deploy-workers"]))


def payroll_worker(okta) -> str:
    return okta.mint(okta_claims("payroll-worker", ["payments-team-workers"]))


def alice(okta) -> str:
    return okta.mint(okta_claims("alice", ["deployers"]))


def ana(okta) -> str:
    return okta.mint(okta_claims("ana", ["analytics-readers"]))


def ci_job(github) -> str:
    return github.mint(github_claims("acme/payments", "production"))


async def direct(temporal: str) -> Client:
    return await connect(temporal, None)


class Started:
    """Workflows a test started; whatever still runs is terminated at the end."""

    def __init__(self):
        self.ids: list[str] = []

    def add(self, workflow_id: str) -> str:
        self.ids.append(workflow_id)
        return workflow_id

    async def terminate_all(self, client: Client) -> None:
        for wf_id in self.ids:
            try:
                await client.get_workflow_handle(wf_id).terminate("e2e cleanup")
            except RPCError:
                pass


async def start_direct(client: Client, started: Started, workflow_type: str, task_queue: str, prefix: str):
    wf_id = started.add(uid(prefix))
    handle = await client.start_workflow(workflow_type, id=wf_id, task_queue=task_queue, execution_timeout=seconds(120))
    return handle


async def refused(coro, status: RPCStatusCode, what: str) -> RPCError:
    """Awaits a call that flowgate must refuse with `status`; `what` says what went through."""
    try:
        result = await coro
    except RPCError as e:
        assert e.status == status, f"{what}: expected {status.name}, got {e.status.name}: {e.message}"
        return e
    raise AssertionError(f"flowgate let it through: {what} (answer: {str(result)[:300]!r})")


async def status_of(client: Client, workflow_id: str, run_id: str = "") -> int:
    resp = await client.workflow_service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(namespace=NAMESPACE, execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id)),
        retry=False, timeout=seconds(10),
    )  # fmt: skip
    return resp.workflow_execution_info.status


async def exists(client: Client, workflow_id: str) -> bool:
    try:
        await status_of(client, workflow_id)
        return True
    except RPCError as e:
        if e.status == RPCStatusCode.NOT_FOUND:
            return False
        raise


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.2):
    """Polls an async predicate until it returns something truthy (or the time is up)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)


RUNNING = WorkflowExecutionStatus.RUNNING.value
TERMINATED = WorkflowExecutionStatus.TERMINATED.value


# --------------------------------------------------------------------------------------------
# Decision records


def records_of(gw, action: str, principal: str | None = None, decision: str | None = None, count: int = 1) -> list[dict]:
    found = gw.wait_decisions(by(action, principal=principal, decision=decision), count)
    assert len(found) >= count, (
        f"expected {count} `{action}` record(s) (principal {principal}, decision {decision}); "
        f"records: {[(d.get('action'), (d.get('principal') or {}).get('id'), d.get('decision')) for d in gw.decisions()]}"
    )
    return found


def denial(gw, action: str, principal: str, status: int = 7) -> dict:
    rec = records_of(gw, action, principal, "deny")[-1]
    assert rec.get("status") == status, f"`{action}` refused with status {rec.get('status')}, not {status}: {rec}"
    return rec


def question(rec: dict, action: str, decision: str | None = "deny") -> dict:
    """The record's question for `action` (contract: `questions`, the RPC first)."""
    questions = rec.get("questions")
    assert isinstance(questions, list) and questions, f"the record names no questions: {rec}"
    assert questions[0].get("action") == rec["action"], f"the first question is not the RPC: {questions}"
    found = [q for q in questions if q.get("action") == action]
    assert found, f"no `{action}` question among {[q.get('action') for q in questions]}: {rec}"
    q = found[0]
    if decision is not None:
        assert q.get("decision") == decision, f"`{action}` question decided {q.get('decision')}, not {decision}: {q}"
    return q


def attribute(q: dict, key: str):
    """A question's attribute, wherever the record keeps it (resource or context)."""
    resource, context = q.get("resource") or {}, q.get("context") or {}
    aliases = {"task_queue": ("task_queue", "name"), "workflow_id": ("workflow_id", "id"),
               "workflow_type": ("workflow_type", "type")}.get(key, (key,))  # fmt: skip
    for name in aliases:
        if name in resource:
            return resource[name]
        if name in context:
            return context[name]
    return None


# --------------------------------------------------------------------------------------------
# 1. Worker commands


ATTACKS = ["StartChildWorkflowExecution", "ScheduleActivityTask", "SignalExternalWorkflowExecution",
           "RequestCancelExternalWorkflowExecution", "ContinueAsNewWorkflowExecution"]  # fmt: skip


class CommandAttack:
    """One command a deploy worker's answer carries, what it does in Temporal, and its trace."""

    def __init__(self, name: str, client: Client, started: Started):
        self.name, self.client, self.started = name, client, started
        self.child_id = started.add(uid("drop-tables"))
        self.target: str | None = None

    async def prepare(self) -> None:
        if self.name in ("SignalExternalWorkflowExecution", "RequestCancelExternalWorkflowExecution"):
            # Someone else's workflow, which no deploy worker has any business with.
            handle = await start_direct(self.client, self.started, "PaymentsLedger", "nobody-polls", "ledger")
            self.target = handle.id

    def command(self):
        return {
            "StartChildWorkflowExecution": lambda: start_child(self.child_id, "DropTables", "other"),
            "ScheduleActivityTask": lambda: schedule_activity("wire-1", "wire_payment", TEAM_QUEUE),
            "SignalExternalWorkflowExecution": lambda: signal_external(self.target, "rollback"),
            "RequestCancelExternalWorkflowExecution": lambda: cancel_external(self.target),
            "ContinueAsNewWorkflowExecution": lambda: continue_as_new("Other", "other"),
        }[self.name]()

    async def took_effect(self, victim) -> bool:
        """Whether Temporal carried the command out (A: it must have; B: it must not)."""
        c = self.client
        if self.name == "StartChildWorkflowExecution":
            if not await exists(c, self.child_id):
                return False
            desc = await c.get_workflow_handle(self.child_id).describe()
            assert (desc.workflow_type, desc.task_queue) == ("DropTables", "other"), desc
            return True
        if self.name == "ScheduleActivityTask":
            return bool(events_of(await history(c, victim.id), EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED))
        if self.name == "SignalExternalWorkflowExecution":
            signals = events_of(await history(c, self.target), EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
            return any(e.workflow_execution_signaled_event_attributes.signal_name == "rollback" for e in signals)
        if self.name == "RequestCancelExternalWorkflowExecution":
            return bool(events_of(await history(c, self.target), EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED))
        desc = await c.get_workflow_handle(victim.id).describe()  # ContinueAsNew: a new run of another type
        if desc.run_id == victim.result_run_id:
            return False
        assert (desc.workflow_type, desc.task_queue) == ("Other", "other"), desc
        return True

    def named_target(self, victim) -> str:
        """What the refusal names besides the command."""
        return {
            "StartChildWorkflowExecution": self.child_id,
            "ScheduleActivityTask": TEAM_QUEUE,
            "SignalExternalWorkflowExecution": self.target,
            "RequestCancelExternalWorkflowExecution": self.target,
            "ContinueAsNewWorkflowExecution": "Other",
        }[self.name]

    def check_question(self, q: dict, victim) -> None:
        if self.name == "StartChildWorkflowExecution":
            assert (attribute(q, "workflow_id"), attribute(q, "workflow_type"), attribute(q, "task_queue")) == (
                self.child_id, "DropTables", "other"), q  # fmt: skip
        elif self.name == "ScheduleActivityTask":
            assert (q["resource"].get("type"), attribute(q, "task_queue")) == ("TaskQueue", TEAM_QUEUE), q
            assert attribute(q, "activity_type") == "wire_payment", q
        elif self.name == "SignalExternalWorkflowExecution":
            assert (attribute(q, "workflow_id"), attribute(q, "signal_name")) == (self.target, "rollback"), q
        elif self.name == "RequestCancelExternalWorkflowExecution":
            assert attribute(q, "workflow_id") == self.target, q
        else:
            assert (attribute(q, "workflow_id"), attribute(q, "workflow_type"), attribute(q, "task_queue")) == (
                victim.id, "Other", "other"), q  # fmt: skip
        assert (q.get("resource") or {}).get("namespace") == NAMESPACE, q


@pytest.mark.parametrize("command", ATTACKS)
def test_1_worker_commands_are_asked_as_what_they_do(gateway, okta, temporal, command):
    gw = gateway(policies=policies())
    started = Started()

    async def scenario():
        temporal_client = await direct(temporal)
        attacker = await connect(gw.address, mallory(okta))
        try:
            # (A) Directly: a worker's answer to a `deploy` task makes Temporal act elsewhere.
            attack = CommandAttack(command, temporal_client, started)
            await attack.prepare()
            victim = await start_direct(temporal_client, started, "Victim", DEPLOY, "victim")
            task = await poll_workflow_task(temporal_client, DEPLOY, victim.id)
            await complete_workflow_task(temporal_client, task, [attack.command()])
            assert await wait_for(lambda: attack.took_effect(victim)), f"Temporal did not carry out {command}"
            if command == "ScheduleActivityTask":  # the other team's worker is handed our activity
                activity_task = await poll_activity_task(temporal_client, TEAM_QUEUE, victim.id)
                assert activity_task.activity_type.name == "wire_payment"

            # (B) Through flowgate: polling `deploy` is allowed, the command is not.
            attack = CommandAttack(command, temporal_client, started)
            await attack.prepare()
            victim = await start_direct(temporal_client, started, "Victim", DEPLOY, "victim")
            task = await poll_workflow_task(attacker, DEPLOY, victim.id)
            err = await refused(complete_workflow_task(attacker, task, [attack.command()]),
                                RPCStatusCode.PERMISSION_DENIED, f"a `deploy` worker's {command} command")  # fmt: skip
            assert command in err.message, f"the refusal does not name the command: {err.message!r}"
            assert attack.named_target(victim) in err.message, f"the refusal does not name the target: {err.message!r}"
            await asyncio.sleep(0.5)
            assert not await attack.took_effect(victim), f"{command} was refused, yet Temporal carried it out"
            return err, victim, attack
        finally:
            await started.terminate_all(temporal_client)

    async def failed_task_events(victim):
        client = await direct(temporal)
        return events_of(await history(client, victim.id), EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)

    err, victim, attack = run(scenario(), 120)
    rec = denial(gw, "RespondWorkflowTaskCompleted", MALLORY)
    assert rec["decision_id"] in err.message, f"the refusal does not name its decision: {err.message!r}"
    attack.check_question(question(rec, command), victim)

    # The refusal is in the workflow's own history, not only a task that times out and retries.
    failed = run(wait_for(lambda: failed_task_events(victim)), 30)
    assert failed, f"no WorkflowTaskFailed in the victim's history: {run(_names(temporal, victim.id))}"
    message = failed[0].workflow_task_failed_event_attributes.failure.message
    assert command in message and rec["decision_id"] in message, f"WorkflowTaskFailed does not say why: {message!r}"


async def _names(temporal: str, workflow_id: str) -> list[str]:
    return event_names(await history(await direct(temporal), workflow_id))


# --------------------------------------------------------------------------------------------
# 2. Task tokens


async def running_approval(client: Client, started: Started):
    """The payments team's workflow with its `approve_payment` activity running on its worker."""
    handle = await start_direct(client, started, "PaymentApproval", TEAM_QUEUE, "approval")
    task = await poll_workflow_task(client, TEAM_QUEUE, handle.id, identity="payroll-worker")
    await complete_workflow_task(client, task, [schedule_activity("approve-1", "approve_payment", TEAM_QUEUE)],
                                 identity="payroll-worker")  # fmt: skip
    activity_task = await poll_activity_task(client, TEAM_QUEUE, handle.id, identity="payroll-worker")
    return handle, activity_task


async def forge_from_reads(reader: Client, workflow_id: str) -> bytes:
    """A task token built only from what a worker may read: the namespace and the history."""
    ns = await reader.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=NAMESPACE), retry=False)
    events = await history(reader, workflow_id)
    started_event = events_of(events, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED)[0]
    scheduled = events_of(events, EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)[0]
    attrs = scheduled.activity_task_scheduled_event_attributes
    return forge_activity_task_token(
        namespace_id=ns.namespace_info.id, workflow_id=workflow_id,
        run_id=started_event.workflow_execution_started_event_attributes.first_execution_run_id,
        scheduled_event_id=scheduled.event_id, attempt=1, activity_id=attrs.activity_id,
        workflow_type=started_event.workflow_execution_started_event_attributes.workflow_type.name,
        activity_type=attrs.activity_type.name,
    )  # fmt: skip


async def completed_results(client: Client, workflow_id: str) -> list[str]:
    events = events_of(await history(client, workflow_id), EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    return [json.loads(p.data) for e in events for p in e.activity_task_completed_event_attributes.result.payloads]


def test_2_forged_task_token_is_refused(gateway, okta, temporal):
    gw = gateway(policies=policies())
    started = Started()

    async def scenario():
        temporal_client = await direct(temporal)
        attacker = await connect(gw.address, mallory(okta))
        try:
            # (A) Directly: a hand-built token completes the other team's running activity.
            approval, real_task = await running_approval(temporal_client, started)
            forged = await forge_from_reads(temporal_client, approval.id)
            await temporal_client.workflow_service.respond_activity_task_completed(
                RespondActivityTaskCompletedRequest(namespace=NAMESPACE, task_token=forged, result=payloads("approved"),
                                                    identity="mallory"), retry=False, timeout=seconds(10))  # fmt: skip
            assert await completed_results(temporal_client, approval.id) == ["approved"]

            # (B) Through flowgate: the reads are allowed, the token is not flowgate's.
            approval, real_task = await running_approval(temporal_client, started)
            forged = await forge_from_reads(attacker, approval.id)
            err = await refused(
                attacker.workflow_service.respond_activity_task_completed(
                    RespondActivityTaskCompletedRequest(namespace=NAMESPACE, task_token=forged,
                                                        result=payloads("approved"), identity="mallory"),
                    retry=False, timeout=seconds(10)),
                RPCStatusCode.PERMISSION_DENIED, "a forged task token completed the other team's activity",
            )  # fmt: skip
            assert "task token was not issued by flowgate" in err.message, err.message
            assert await completed_results(temporal_client, approval.id) == [], "the forged completion reached Temporal"
            # The real worker, with the token Temporal gave it, still completes its activity.
            await temporal_client.workflow_service.respond_activity_task_completed(
                RespondActivityTaskCompletedRequest(namespace=NAMESPACE, task_token=real_task.task_token,
                                                    result=payloads("checked by payroll"), identity="payroll-worker"),
                retry=False, timeout=seconds(10))  # fmt: skip
            assert await completed_results(temporal_client, approval.id) == ["checked by payroll"]
        finally:
            await started.terminate_all(temporal_client)

    run(scenario(), 90)
    rec = denial(gw, "RespondActivityTaskCompleted", MALLORY)
    assert "not issued by flowgate" in json.dumps(rec), f"the record does not say why: {rec}"


BUILDKITE_AUD = "https://buildkite.com/acme"


def buildkite_issuer_config(issuer: TestIssuer) -> str:
    return (
        "[[issuers]]\n"
        'name = "buildkite"\npreset = "buildkite"\n'
        f'issuer = "{issuer.url}"\njwks_uri = "{issuer.url}/jwks"\n'
        f'audiences = ["{BUILDKITE_AUD}"]\nrequired_claims = {{ organization_slug = "acme" }}\n'
        'jwks_min_refresh = "1s"\n'
    )


def buildkite_worker_claims() -> dict:
    return {
        "sub": "organization:acme:pipeline:payments-workers:ref:refs/heads/main:commit:9f31:step:workers",
        "aud": BUILDKITE_AUD, "jti": str(uuid.uuid4()), "organization_slug": "acme",
        "pipeline_slug": "payments-workers", "build_number": 1, "build_branch": "main", "build_commit": "9f31",
        "step_key": "workers", "job_id": str(uuid.uuid4()), "agent_id": str(uuid.uuid4()), "build_source": "ui",
        "runner_environment": "buildkite-hosted",
    }  # fmt: skip


def test_2_completed_by_id_under_the_example_policy(gateway, temporal):
    """Item 6: the repository's own policies/ci.cedar must not let its Buildkite workers (queue
    `deploys`) complete another queue's activity by workflow and activity id."""
    buildkite = TestIssuer("buildkite")
    try:
        gw = gateway(policies={"ci.cedar": (REPO / "policies" / "ci.cedar").read_text()},
                     extra=buildkite_issuer_config(buildkite))  # fmt: skip
        token = buildkite.mint(buildkite_worker_claims())
        started = Started()

        async def scenario():
            temporal_client = await direct(temporal)
            worker = await connect(gw.address, token)
            try:
                # (A) Directly: completing by id needs no token at all.
                approval, _ = await running_approval(temporal_client, started)
                await temporal_client.workflow_service.respond_activity_task_completed_by_id(
                    RespondActivityTaskCompletedByIdRequest(namespace=NAMESPACE, workflow_id=approval.id,
                                                            activity_id="approve-1", result=payloads("approved")),
                    retry=False, timeout=seconds(10))  # fmt: skip
                assert await completed_results(temporal_client, approval.id) == ["approved"]

                # (B) Through flowgate: the pipeline's token is good (it describes its
                # namespace), and by-id completion of the other team's activity is refused.
                await worker.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=NAMESPACE), retry=False)
                approval, _ = await running_approval(temporal_client, started)
                err = await refused(
                    worker.workflow_service.respond_activity_task_completed_by_id(
                        RespondActivityTaskCompletedByIdRequest(namespace=NAMESPACE, workflow_id=approval.id,
                                                                activity_id="approve-1", result=payloads("approved")),
                        retry=False, timeout=seconds(10)),
                    RPCStatusCode.PERMISSION_DENIED, "policies/ci.cedar let a `deploys` worker complete "
                    f"`{TEAM_QUEUE}`'s activity by id",
                )  # fmt: skip
                assert "RespondActivityTaskCompletedById" in err.message, err.message
                assert await completed_results(temporal_client, approval.id) == []
                return approval.id
            finally:
                await started.terminate_all(temporal_client)

        approval_id = run(scenario(), 90)
        [rec] = [d for d in records_of(gw, "RespondActivityTaskCompletedById", decision="deny")]
        assert rec["principal"]["issuer"] == "buildkite" and rec["status"] == 7, rec
        assert rec["resource"]["workflow_id"] == approval_id, rec
    finally:
        buildkite.close()


# --------------------------------------------------------------------------------------------
# 3. Sticky and other non-normal queues


def test_3_sticky_activity_poll_is_invalid(gateway, okta, temporal):
    gw = gateway(policies=policies())
    started = Started()
    disguised = queue(TEAM_QUEUE, STICKY, DEPLOY)  # Temporal polls `payments-team`; it says `deploy`

    async def scenario():
        temporal_client = await direct(temporal)
        attacker = await connect(gw.address, mallory(okta))
        try:
            # (A) Directly: a "sticky" activity poll named after another queue takes its activity.
            approval = await approval_with_scheduled_activity(temporal_client, started)
            stolen = await poll_activity_task(temporal_client, disguised, approval.id, identity="mallory")
            assert stolen.activity_type.name == "approve_payment"

            # (B) Through flowgate: refused as invalid, and the activity waits for its own worker.
            approval = await approval_with_scheduled_activity(temporal_client, started)
            await refused(poll_activity_task(attacker, disguised, approval.id, identity="mallory", timeout=12),
                          RPCStatusCode.INVALID_ARGUMENT, f"a STICKY activity poll took `{TEAM_QUEUE}`'s activity")  # fmt: skip
            mine = await poll_activity_task(temporal_client, TEAM_QUEUE, approval.id, identity="payroll-worker")
            assert mine.activity_type.name == "approve_payment"
        finally:
            await started.terminate_all(temporal_client)

    run(scenario(), 90)
    rec = denial(gw, "PollActivityTaskQueue", MALLORY, status=3)
    assert rec["decision"] == "deny", rec


async def approval_with_scheduled_activity(client: Client, started: Started):
    handle = await start_direct(client, started, "PaymentApproval", TEAM_QUEUE, "approval")
    task = await poll_workflow_task(client, TEAM_QUEUE, handle.id, identity="payroll-worker")
    await complete_workflow_task(client, task, [schedule_activity("approve-1", "approve_payment", TEAM_QUEUE)],
                                 identity="payroll-worker")  # fmt: skip
    return handle


async def sticky_poll(client: Client, task_queue, timeout: float):
    """One poll of a sticky queue; an empty answer is None."""
    req = PollWorkflowTaskQueueRequest(namespace=NAMESPACE, task_queue=task_queue, identity="payroll-worker")
    try:
        resp = await client.workflow_service.poll_workflow_task_queue(req, retry=False, timeout=seconds(timeout))
    except RPCError as e:
        if e.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
            return None
        raise
    return resp if resp.task_token else None


def test_3_another_workers_sticky_queue_is_its_own(gateway, okta, temporal):
    gw = gateway(policies=policies())
    started = Started()
    sticky_name = uid("payroll-worker-sticky")
    victims_sticky = queue(sticky_name, STICKY, TEAM_QUEUE)
    disguised = queue(sticky_name, STICKY, DEPLOY)

    async def scenario():
        temporal_client = await direct(temporal)
        payroll = await connect(gw.address, payroll_worker(okta))
        attacker = await connect(gw.address, mallory(okta))
        try:
            # The payroll worker, through flowgate, runs two workflows and keeps them sticky.
            workflows = []
            for _ in range(2):
                handle = await start_direct(temporal_client, started, "Payroll", TEAM_QUEUE, "payroll")
                task = await poll_workflow_task(payroll, TEAM_QUEUE, handle.id, identity="payroll-worker")
                await complete_workflow_task(payroll, task, [], sticky=victims_sticky, identity="payroll-worker")
                workflows.append(handle)
            # Temporal sends a task to a sticky queue only while its worker polls it: the
            # payroll worker polls (nothing there yet), then a signal makes a task.
            assert await sticky_poll(payroll, victims_sticky, 3) is None

            # (A) Directly: whoever names the sticky queue gets the payroll task and its history.
            await workflows[0].signal("payslip", "june")
            stolen = await poll_workflow_task(temporal_client, disguised, workflows[0].id, identity="mallory", timeout=10)
            assert stolen.history.events, "the sticky task carries the workflow's history"

            # (B) Through flowgate: the sticky queue belongs to the payroll worker.
            await sticky_poll(payroll, victims_sticky, 3)  # (keeps the sticky queue alive)
            await workflows[1].signal("payslip", "july")
            err = await refused(poll_workflow_task(attacker, disguised, workflows[1].id, identity="mallory", timeout=10),
                                RPCStatusCode.PERMISSION_DENIED, "mallory took the payroll worker's sticky task")  # fmt: skip
            assert f"sticky task queue `{sticky_name}` belongs to another worker" in err.message, err.message
            # ... and its owner still gets its task there.
            own = await poll_workflow_task(payroll, victims_sticky, workflows[1].id, identity="payroll-worker", timeout=12)
            assert own.history.events, own
        finally:
            await started.terminate_all(temporal_client)

    run(scenario(), 90)
    rec = denial(gw, "PollWorkflowTaskQueue", MALLORY)
    assert "belongs to another worker" in json.dumps(rec), rec


def test_3_non_normal_queue_in_a_start_or_a_schedule_is_invalid(gateway, okta, temporal):
    gw = gateway(policies=policies())
    started = Started()
    disguised = queue("prod-deploy", STICKY, DEPLOY)

    def start_request(wf_id: str) -> StartWorkflowExecutionRequest:
        return StartWorkflowExecutionRequest(namespace=NAMESPACE, workflow_id=wf_id,
                                             workflow_type=WorkflowType(name="DeployService"), task_queue=disguised,
                                             request_id=str(uuid.uuid4()), workflow_execution_timeout=seconds(60))  # fmt: skip

    def disguised_schedule():
        command = schedule_activity("ship-1", "ship", "prod-deploy")
        command.schedule_activity_task_command_attributes.task_queue.CopyFrom(disguised)
        return command

    async def scenario():
        temporal_client = await direct(temporal)
        release_manager = await connect(gw.address, alice(okta))
        attacker = await connect(gw.address, mallory(okta))
        try:
            # (A) Directly: the start runs on `prod-deploy`, and so does the activity.
            wf_id = started.add(uid("sticky-start"))
            await temporal_client.workflow_service.start_workflow_execution(start_request(wf_id), retry=False)
            desc = await temporal_client.get_workflow_handle(wf_id).describe()
            assert desc.task_queue == "prod-deploy", desc.task_queue
            victim = await start_direct(temporal_client, started, "Victim", DEPLOY, "victim")
            task = await poll_workflow_task(temporal_client, DEPLOY, victim.id)
            await complete_workflow_task(temporal_client, task, [disguised_schedule()])
            shipped = await poll_activity_task(temporal_client, "prod-deploy", victim.id)
            assert shipped.activity_type.name == "ship"

            # (B) Through flowgate: both are invalid, and nothing runs on `prod-deploy`.
            wf_id = started.add(uid("sticky-start"))
            await refused(release_manager.workflow_service.start_workflow_execution(start_request(wf_id), retry=False),
                          RPCStatusCode.INVALID_ARGUMENT, "a start on `prod-deploy` said `deploy`")  # fmt: skip
            assert not await exists(temporal_client, wf_id), "the refused start exists in Temporal"
            victim = await start_direct(temporal_client, started, "Victim", DEPLOY, "victim")
            task = await poll_workflow_task(attacker, DEPLOY, victim.id)
            await refused(complete_workflow_task(attacker, task, [disguised_schedule()]), RPCStatusCode.INVALID_ARGUMENT,
                          "an activity on `prod-deploy` said `deploy`")  # fmt: skip
            scheduled = events_of(await history(temporal_client, victim.id), EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED)
            assert not scheduled, "the refused activity was scheduled"
        finally:
            await started.terminate_all(temporal_client)

    run(scenario(), 90)
    denial(gw, "StartWorkflowExecution", "okta:alice", status=3)
    denial(gw, "RespondWorkflowTaskCompleted", MALLORY, status=3)


# --------------------------------------------------------------------------------------------
# 4. Starts with side effects


@pytest.mark.parametrize("policy", ["conflict TERMINATE_EXISTING", "reuse TERMINATE_IF_RUNNING"])
def test_4_start_that_terminates_needs_terminate(gateway, github, temporal, policy):
    gw = gateway(policies=policies())
    started = Started()

    def start_over(ledger_id: str) -> StartWorkflowExecutionRequest:
        req = StartWorkflowExecutionRequest(namespace=NAMESPACE, workflow_id=ledger_id,
                                            workflow_type=WorkflowType(name="DeployService"), task_queue=queue("parked"),
                                            request_id=str(uuid.uuid4()), workflow_execution_timeout=seconds(60))  # fmt: skip
        if policy.startswith("conflict"):
            req.workflow_id_conflict_policy = WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING
        else:
            req.workflow_id_reuse_policy = WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_TERMINATE_IF_RUNNING
        return req

    async def scenario():
        temporal_client = await direct(temporal)
        ci = await connect(gw.address, ci_job(github))
        try:
            # (A) Directly: a start of DeployService under the ledger's id terminates the ledger.
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            await temporal_client.workflow_service.start_workflow_execution(start_over(ledger.id), retry=False)
            assert await status_of(temporal_client, ledger.id, ledger.result_run_id) == TERMINATED

            # (B) Through flowgate: CI may start DeployService and may not terminate ...
            plain = started.add(uid("deploy-service"))
            await ci.start_workflow("DeployService", id=plain, task_queue="parked", execution_timeout=seconds(60))
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            await refused(ci.workflow_service.terminate_workflow_execution(TerminateWorkflowExecutionRequest(
                namespace=NAMESPACE, workflow_execution=WorkflowExecution(workflow_id=ledger.id)), retry=False),
                RPCStatusCode.PERMISSION_DENIED, "CI terminated the ledger")  # fmt: skip
            # ... so a start that would terminate is refused as the terminate it implies.
            err = await refused(ci.workflow_service.start_workflow_execution(start_over(ledger.id), retry=False),
                                RPCStatusCode.PERMISSION_DENIED, f"a CI start with {policy} terminated the ledger")  # fmt: skip
            assert "TerminateWorkflowExecution" in err.message and ledger.id in err.message, err.message
            assert await status_of(temporal_client, ledger.id, ledger.result_run_id) == RUNNING
            return ledger.id
        finally:
            await started.terminate_all(temporal_client)

    ledger_id = run(scenario(), 60)
    starts = [d for d in records_of(gw, "StartWorkflowExecution") if d["resource"].get("workflow_id") == ledger_id]
    assert [d["decision"] for d in starts] == ["deny"], starts
    q = question(starts[0], "TerminateWorkflowExecution")
    assert attribute(q, "workflow_id") == ledger_id and "ci-never-terminates" in q.get("reasons", []), q
    assert question(starts[0], "StartWorkflowExecution", decision="allow"), starts[0]


BATCH_POLICY = """
// CI may run batch operations in payments (forbid policies still apply to what they do).
@id("ci-runs-batches")
permit (
  principal is Temporal::CiJob,
  action == Temporal::Action::"StartBatchOperation",
  resource == Temporal::Namespace::"payments"
)
when { principal.issuer == "github" };
"""


def test_4_batch_terminate_needs_terminate(gateway, github, temporal):
    gw = gateway(policies={**policies(), "batch.cedar": BATCH_POLICY})
    started = Started()

    def batch(ledger_id: str) -> StartBatchOperationRequest:
        return StartBatchOperationRequest(namespace=NAMESPACE, job_id=str(uuid.uuid4()), reason="cleanup",
                                          executions=[WorkflowExecution(workflow_id=ledger_id)],
                                          termination_operation=BatchOperationTermination())  # fmt: skip

    async def scenario():
        temporal_client = await direct(temporal)
        ci = await connect(gw.address, ci_job(github))
        try:
            # (A) Directly: a batch terminate ends the ledger.
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            await temporal_client.workflow_service.start_batch_operation(batch(ledger.id), retry=False)

            async def terminated():
                return await status_of(temporal_client, ledger.id, ledger.result_run_id) == TERMINATED

            assert await wait_for(terminated, timeout=20), "the direct batch did not terminate the ledger"
            # (B) Through flowgate: CI may start batches but not terminate, so a batch terminate
            # is refused as the terminate it is.
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            err = await refused(ci.workflow_service.start_batch_operation(batch(ledger.id), retry=False),
                                RPCStatusCode.PERMISSION_DENIED, "a CI batch terminated the ledger")  # fmt: skip
            assert "TerminateWorkflowExecution" in err.message and ledger.id in err.message, err.message
            await asyncio.sleep(2)
            assert await status_of(temporal_client, ledger.id, ledger.result_run_id) == RUNNING
            return ledger.id
        finally:
            await started.terminate_all(temporal_client)

    ledger_id = run(scenario(), 60)
    [record] = records_of(gw, "StartBatchOperation", decision="deny")
    q = question(record, "TerminateWorkflowExecution")
    assert attribute(q, "workflow_id") == ledger_id and "ci-never-terminates" in q.get("reasons", []), q


def test_4_signal_with_start_needs_signal(gateway, github, temporal):
    gw = gateway(policies=policies())
    started = Started()

    def signal_with_start(wf_id: str) -> SignalWithStartWorkflowExecutionRequest:
        return SignalWithStartWorkflowExecutionRequest(
            namespace=NAMESPACE, workflow_id=wf_id, workflow_type=WorkflowType(name="DeployService"),
            task_queue=queue("parked"), signal_name="close-books", signal_input=payloads("now"),
            request_id=str(uuid.uuid4()), workflow_execution_timeout=seconds(60),
        )  # fmt: skip

    async def signals(client, wf_id):
        events = events_of(await history(client, wf_id), EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
        return [e.workflow_execution_signaled_event_attributes.signal_name for e in events]

    async def scenario():
        temporal_client = await direct(temporal)
        ci = await connect(gw.address, ci_job(github))
        try:
            # (A) Directly: "signal-with-start DeployService" signals the running ledger.
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            resp = await temporal_client.workflow_service.signal_with_start_workflow_execution(
                signal_with_start(ledger.id), retry=False)  # fmt: skip
            assert not resp.started and await signals(temporal_client, ledger.id) == ["close-books"]

            # (B) Through flowgate: CI may signal-with-start DeployService, but may not signal.
            ledger = await start_direct(temporal_client, started, "PaymentsLedger", "nobody-polls", "ledger")
            err = await refused(ci.workflow_service.signal_with_start_workflow_execution(signal_with_start(ledger.id),
                                                                                         retry=False),
                                RPCStatusCode.PERMISSION_DENIED, "CI signalled the ledger")  # fmt: skip
            assert "SignalWorkflowExecution" in err.message, err.message
            assert await signals(temporal_client, ledger.id) == []
            return ledger.id
        finally:
            await started.terminate_all(temporal_client)

    ledger_id = run(scenario(), 60)
    [rec] = [d for d in records_of(gw, "SignalWithStartWorkflowExecution") if d["resource"].get("workflow_id") == ledger_id]
    assert rec["decision"] == "deny" and rec["status"] == 7, rec
    q = question(rec, "SignalWorkflowExecution")
    assert (attribute(q, "workflow_id"), attribute(q, "signal_name")) == (ledger_id, "close-books"), q


def test_4_eager_start_needs_the_worker_permission(gateway, github, temporal):
    gw = gateway(policies=policies())
    started = Started()

    def eager_start(wf_id: str) -> StartWorkflowExecutionRequest:
        return StartWorkflowExecutionRequest(namespace=NAMESPACE, workflow_id=wf_id,
                                             workflow_type=WorkflowType(name="DeployService"), task_queue=queue(DEPLOY),
                                             request_id=str(uuid.uuid4()), workflow_execution_timeout=seconds(60),
                                             request_eager_execution=True)  # fmt: skip

    async def scenario():
        temporal_client = await direct(temporal)
        ci = await connect(gw.address, ci_job(github))
        try:
            # (A) Directly: the starter is handed the first workflow task, as a `deploy` worker.
            wf_id = started.add(uid("eager"))
            resp = await temporal_client.workflow_service.start_workflow_execution(eager_start(wf_id), retry=False)
            assert resp.eager_workflow_task.task_token, "the dev server did not hand out an eager workflow task"

            # (B) Through flowgate: CI may start DeployService, but is no worker of `deploy`.
            wf_id = started.add(uid("eager"))
            err = await refused(ci.workflow_service.start_workflow_execution(eager_start(wf_id), retry=False),
                                RPCStatusCode.PERMISSION_DENIED, "CI received a `deploy` workflow task")  # fmt: skip
            assert "PollWorkflowTaskQueue" in err.message, err.message
            assert not await exists(temporal_client, wf_id)
            return wf_id
        finally:
            await started.terminate_all(temporal_client)

    wf_id = run(scenario(), 60)
    [rec] = [d for d in records_of(gw, "StartWorkflowExecution") if d["resource"].get("workflow_id") == wf_id]
    assert rec["decision"] == "deny", rec
    q = question(rec, "PollWorkflowTaskQueue")
    assert (q["resource"].get("type"), attribute(q, "task_queue")) == ("TaskQueue", DEPLOY), q


# --------------------------------------------------------------------------------------------
# 5. A namespace named by its id


def cli(address: str, tmp_path, *args, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env["HOME"] = str(tmp_path)  # no user config file
    cmd = [temporal_bin(), *args, "--address", address, "--tls=false"]
    if token:
        cmd += ["--api-key", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


def test_5_namespace_by_id(gateway, okta, temporal, tmp_path):
    gw = gateway(policies=policies())

    async def ids():
        client = await direct(temporal)
        out = {}
        for ns in ("payments", "analytics"):
            resp = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=ns))
            out[ns] = resp.namespace_info.id
        return out

    ns_ids = run(ids(), 30)

    def describe(address, ns, token=None):
        return cli(address, tmp_path, "operator", "namespace", "describe", "--namespace-id", ns_ids[ns], "-o", "json",
                   token=token)  # fmt: skip

    # (A) Directly: the id is as good as the name.
    direct_answer = describe(temporal, "payments")
    assert direct_answer.returncode == 0, direct_answer.stderr
    assert json.loads(direct_answer.stdout)["namespaceInfo"]["name"] == "payments", direct_answer.stdout

    # (B) Through flowgate: the id is resolved to its name, and the name is authorized.
    allowed = describe(gw.address, "payments", alice(okta))
    assert allowed.returncode == 0, f"describe of payments by id refused for alice: {allowed.stderr}"
    assert json.loads(allowed.stdout)["namespaceInfo"]["name"] == "payments", allowed.stdout
    refused_answer = describe(gw.address, "payments", ana(okta))
    assert refused_answer.returncode != 0, "ana, who may describe only analytics, described payments by its id"
    assert "DescribeNamespace" in refused_answer.stderr and "names no namespace" not in refused_answer.stderr, (
        refused_answer.stderr)  # fmt: skip
    own = describe(gw.address, "analytics", ana(okta))
    assert own.returncode == 0 and json.loads(own.stdout)["namespaceInfo"]["name"] == "analytics", own.stderr

    [rec] = records_of(gw, "DescribeNamespace", "okta:alice", "allow")
    assert rec["resource"]["namespace"] == "payments", rec
    [rec] = records_of(gw, "DescribeNamespace", "okta:ana", "deny")
    assert rec["resource"]["namespace"] == "payments" and rec["status"] == 7, rec
    [rec] = records_of(gw, "DescribeNamespace", "okta:ana", "allow")
    assert rec["resource"]["namespace"] == "analytics", rec


# --------------------------------------------------------------------------------------------
# The legitimate path: a real worker, within its policy, keeps working


def test_legitimate_worker_runs_children_activities_signals_and_continue_as_new(gateway, okta, temporal):
    gw = gateway(policies=policies())
    worker_sub = "deploy-worker-1"
    parent_id, listener_id = uid("deploy-parent"), uid("deploy-listener")

    async def scenario():
        temporal_client = await direct(temporal)
        worker_client = await connect(gw.address, okta.mint(okta_claims(worker_sub, ["deploy-workers"])))
        async with Worker(worker_client, task_queue=DEPLOY, workflows=[DeployParent, DeployChild, DeployListener],
                          activities=[build_artifact]):  # fmt: skip
            listener = await temporal_client.start_workflow(DeployListener.run, id=listener_id, task_queue=DEPLOY,
                                                            execution_timeout=seconds(60))  # fmt: skip
            parent = await temporal_client.start_workflow(DeployParent.run, args=["api", listener_id, 0], id=parent_id,
                                                          task_queue=DEPLOY, execution_timeout=seconds(60))  # fmt: skip
            result = await asyncio.wait_for(parent.result(), 45)
            pings = await asyncio.wait_for(listener.result(), 15)
            children = [await status_of(temporal_client, f"{parent_id}-child-{n}") for n in (0, 1)]
            runs = []
            for run_id in (parent.first_execution_run_id, ""):
                runs.append(await history(temporal_client, parent_id, run_id))
            return result, pings, children, runs

    result, pings, children, runs = run(scenario(), 90)
    assert result == "built api; rolled out api; round 1", result
    assert pings == [parent_id], pings
    assert children == [WorkflowExecutionStatus.COMPLETED.value] * 2, children
    first_run, last_run = runs
    assert events_of(first_run, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW), event_names(first_run)

    # Sticky execution works: after the first task of a run, tasks go to the worker's own
    # sticky queue (the activity's and the child's completion wake the workflow there).
    scheduled = [e.workflow_task_scheduled_event_attributes.task_queue
                 for e in events_of(first_run + last_run, EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED)]  # fmt: skip
    assert any(tq.kind == TaskQueueKind.TASK_QUEUE_KIND_STICKY and tq.normal_name == DEPLOY for tq in scheduled), scheduled

    worker_records = [d for d in gw.decisions() if (d.get("principal") or {}).get("id") == f"okta:{worker_sub}"]
    denies = [(d["action"], d["resource"], d["reasons"], d.get("errors")) for d in worker_records if d["decision"] != "allow"]
    assert not denies, f"the worker was refused: {denies}"
    actions = {d["action"] for d in worker_records}
    for action in ("PollWorkflowTaskQueue", "PollActivityTaskQueue", "RespondWorkflowTaskCompleted"):
        assert action in actions, f"no {action} record for the worker: {sorted(actions)}"
    if COMMAND_ACTIONS_IN_SCHEMA:
        # Each command was asked, and allowed, as what it does.
        asked = {q["action"]: q for d in worker_records if d["action"] == "RespondWorkflowTaskCompleted"
                 for q in d.get("questions", [])}  # fmt: skip
        for action in ("ScheduleActivityTask", "StartChildWorkflowExecution", "SignalExternalWorkflowExecution",
                       "ContinueAsNewWorkflowExecution"):  # fmt: skip
            assert action in asked and asked[action]["decision"] == "allow", f"{action} not asked and allowed: {asked}"
