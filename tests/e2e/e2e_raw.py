"""A raw worker for the attack tests: polls, answers and forges what an SDK never would.

The Python SDK's `client.workflow_service` sends any request message as is, so a worker that
answers a workflow task with commands of its choosing, polls a sticky queue by name, or
completes an activity with a task token it built itself is a few protobuf messages away.
Everything here talks to whatever address the client was connected to: the dev server
directly (to show what Temporal does) or flowgate (to show what it lets through).
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

from temporalio.api.command.v1 import (
    Command, ContinueAsNewWorkflowExecutionCommandAttributes, RequestCancelExternalWorkflowExecutionCommandAttributes,
    ScheduleActivityTaskCommandAttributes, SignalExternalWorkflowExecutionCommandAttributes,
    StartChildWorkflowExecutionCommandAttributes,
)  # fmt: skip
from temporalio.api.common.v1 import ActivityType, Payload, Payloads, WorkflowExecution, WorkflowType
from temporalio.api.enums.v1 import CommandType, EventType, TaskQueueKind
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import (
    GetWorkflowExecutionHistoryRequest, PollActivityTaskQueueRequest, PollWorkflowTaskQueueRequest,
    RespondWorkflowTaskCompletedRequest,
)  # fmt: skip
from temporalio.client import Client

NAMESPACE = "payments"
STICKY = TaskQueueKind.TASK_QUEUE_KIND_STICKY


def queue(name: str, kind: int = TaskQueueKind.TASK_QUEUE_KIND_NORMAL, normal_name: str = "") -> TaskQueue:
    return TaskQueue(name=name, kind=kind, normal_name=normal_name)


def payloads(*values) -> Payloads:
    return Payloads(payloads=[Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(v).encode()) for v in values])


def seconds(s: float) -> timedelta:
    return timedelta(seconds=s)


# --------------------------------------------------------------------------------------------
# Polls that wait for one workflow's task (the shared dev server may hold others' tasks too)


async def poll_workflow_task(client: Client, task_queue: TaskQueue | str, workflow_id: str, timeout: float = 20.0,
                             identity: str = "raw-worker"):  # fmt: skip
    """Polls until a workflow task of `workflow_id` arrives (others are left to time out)."""
    tq = queue(task_queue) if isinstance(task_queue, str) else task_queue
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 1.5:
            raise AssertionError(f"no workflow task of `{workflow_id}` on `{tq.name}` within {timeout} s")
        req = PollWorkflowTaskQueueRequest(namespace=NAMESPACE, task_queue=tq, identity=identity)
        resp = await client.workflow_service.poll_workflow_task_queue(req, retry=False, timeout=seconds(min(left, 10)))
        if resp.task_token and resp.workflow_execution.workflow_id == workflow_id:
            return resp


async def poll_activity_task(client: Client, task_queue: TaskQueue | str, workflow_id: str, timeout: float = 20.0,
                             identity: str = "raw-worker"):  # fmt: skip
    """Polls until an activity task scheduled by `workflow_id` arrives."""
    tq = queue(task_queue) if isinstance(task_queue, str) else task_queue
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 1.5:
            raise AssertionError(f"no activity task of `{workflow_id}` on `{tq.name}` within {timeout} s")
        req = PollActivityTaskQueueRequest(namespace=NAMESPACE, task_queue=tq, identity=identity)
        resp = await client.workflow_service.poll_activity_task_queue(req, retry=False, timeout=seconds(min(left, 10)))
        if resp.task_token and resp.workflow_execution.workflow_id == workflow_id:
            return resp


async def complete_workflow_task(client: Client, task, commands: list[Command], sticky: TaskQueue | None = None,
                                 identity: str = "raw-worker"):  # fmt: skip
    from temporalio.api.taskqueue.v1 import StickyExecutionAttributes

    req = RespondWorkflowTaskCompletedRequest(namespace=NAMESPACE, task_token=task.task_token, commands=commands,
                                              identity=identity)  # fmt: skip
    if sticky is not None:
        req.sticky_attributes.CopyFrom(StickyExecutionAttributes(worker_task_queue=sticky,
                                                                 schedule_to_start_timeout=seconds(20)))  # fmt: skip
    return await client.workflow_service.respond_workflow_task_completed(req, retry=False, timeout=seconds(15))


# --------------------------------------------------------------------------------------------
# Histories


async def history(client: Client, workflow_id: str, run_id: str = "") -> list:
    events, token = [], b""
    while True:
        req = GetWorkflowExecutionHistoryRequest(namespace=NAMESPACE, execution=WorkflowExecution(workflow_id=workflow_id,
                                                 run_id=run_id), next_page_token=token)  # fmt: skip
        resp = await client.workflow_service.get_workflow_execution_history(req, retry=False, timeout=seconds(10))
        events.extend(resp.history.events)
        token = resp.next_page_token
        if not token:
            return events


def events_of(events: list, event_type: int) -> list:
    return [e for e in events if e.event_type == event_type]


def event_names(events: list) -> list[str]:
    return [EventType.Name(e.event_type).removeprefix("EVENT_TYPE_") for e in events]


# --------------------------------------------------------------------------------------------
# Commands a workflow task completion may carry


def start_child(workflow_id: str, workflow_type: str, task_queue: str, namespace: str = "") -> Command:
    return Command(
        command_type=CommandType.COMMAND_TYPE_START_CHILD_WORKFLOW_EXECUTION,
        start_child_workflow_execution_command_attributes=StartChildWorkflowExecutionCommandAttributes(
            namespace=namespace, workflow_id=workflow_id, workflow_type=WorkflowType(name=workflow_type),
            task_queue=queue(task_queue), workflow_execution_timeout=seconds(60),
        ),
    )  # fmt: skip


def schedule_activity(activity_id: str, activity_type: str, task_queue: str) -> Command:
    return Command(
        command_type=CommandType.COMMAND_TYPE_SCHEDULE_ACTIVITY_TASK,
        schedule_activity_task_command_attributes=ScheduleActivityTaskCommandAttributes(
            activity_id=activity_id, activity_type=ActivityType(name=activity_type), task_queue=queue(task_queue),
            input=payloads("ledger"), schedule_to_close_timeout=seconds(60), start_to_close_timeout=seconds(30),
        ),
    )  # fmt: skip


def signal_external(workflow_id: str, signal_name: str, namespace: str = "") -> Command:
    return Command(
        command_type=CommandType.COMMAND_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION,
        signal_external_workflow_execution_command_attributes=SignalExternalWorkflowExecutionCommandAttributes(
            namespace=namespace, execution=WorkflowExecution(workflow_id=workflow_id), signal_name=signal_name,
            input=payloads("mallory"),
        ),
    )  # fmt: skip


def cancel_external(workflow_id: str, namespace: str = "") -> Command:
    return Command(
        command_type=CommandType.COMMAND_TYPE_REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION,
        request_cancel_external_workflow_execution_command_attributes=RequestCancelExternalWorkflowExecutionCommandAttributes(
            namespace=namespace, workflow_id=workflow_id, reason="raw worker",
        ),
    )  # fmt: skip


def continue_as_new(workflow_type: str, task_queue: str) -> Command:
    return Command(
        command_type=CommandType.COMMAND_TYPE_CONTINUE_AS_NEW_WORKFLOW_EXECUTION,
        continue_as_new_workflow_execution_command_attributes=ContinueAsNewWorkflowExecutionCommandAttributes(
            workflow_type=WorkflowType(name=workflow_type), task_queue=queue(task_queue), workflow_run_timeout=seconds(60),
        ),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Task tokens by hand: `temporal.server.api.token.v1.Task` is not in the SDK, and is plain
# protobuf: namespace_id = 1, workflow_id = 2, run_id = 3, scheduled_event_id = 4,
# attempt = 5, activity_id = 6, workflow_type = 7, activity_type = 8 (then clock = 9,
# started_event_id = 10, version = 11, started_time = 12, all optional).


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string_field(number: int, value: str) -> bytes:
    data = value.encode()
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def forge_activity_task_token(namespace_id: str, workflow_id: str, run_id: str, scheduled_event_id: int, attempt: int,
                              activity_id: str, workflow_type: str, activity_type: str) -> bytes:  # fmt: skip
    return b"".join([
        _string_field(1, namespace_id), _string_field(2, workflow_id), _string_field(3, run_id),
        _int_field(4, scheduled_event_id), _int_field(5, attempt), _string_field(6, activity_id),
        _string_field(7, workflow_type), _string_field(8, activity_type),
    ])  # fmt: skip
