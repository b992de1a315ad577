#!/usr/bin/env python3
"""Prints, as JSON, one serialized request for every Temporal RPC and what flowgate must read from it.

Each request is built with the real generated classes of the Temporal Python SDK (`temporalio`),
with a distinct, recognizable value in every field flowgate's catalog may read (and in the other
top-level strings, so that a path pointing at the wrong field reads a wrong, visible value).
The expectation is then computed from the serialized bytes, parsed back with the same classes and
read by field *name*, so it states what the Temporal server sees, independently of the field
numbers in src/temporal/catalog.rs. tests/catalog.rs runs `inspect` on each request and compares.

Output: {<vector name>: {"service", "method", "framing": "none" | "gzip", "hex", "expect": {...}}}
where "expect" has kind, namespace, workflow_id, workflow_type, task_queue, schedule_id,
signal_name, query_type, update_name, namespace_id (a string or null) and has_task_token (a
boolean).
"""

import gzip
import json
import struct
import sys

try:
    from temporalio.api.enums.v1 import task_queue_pb2
    from temporalio.api.operatorservice.v1 import request_response_pb2 as operator_requests
    from temporalio.api.operatorservice.v1 import service_pb2 as operator_service
    from temporalio.api.workflowservice.v1 import request_response_pb2 as workflow_requests
    from temporalio.api.workflowservice.v1 import service_pb2 as workflow_service
except ImportError as error:
    sys.exit(f"cannot import the Temporal API ({error}): the Python package `temporalio` is needed")

SERVICES = [
    (workflow_service.DESCRIPTOR.services_by_name["WorkflowService"], workflow_requests),
    (operator_service.DESCRIPTOR.services_by_name["OperatorService"], operator_requests),
]

STICKY = task_queue_pb2.TASK_QUEUE_KIND_STICKY
NORMAL = task_queue_pb2.TASK_QUEUE_KIND_NORMAL

# The one call that may name a sticky queue (a worker polling its own): it gets one, reported
# under its normal name. Every other call naming a sticky queue is refused (unit tests in
# src/temporal/inspect.rs).
STICKY_QUEUE_METHODS = {"PollWorkflowTaskQueue"}

WORKFLOW_EXECUTION = "temporal.api.common.v1.WorkflowExecution"
WORKFLOW_TYPE = "temporal.api.common.v1.WorkflowType"
TASK_QUEUE = "temporal.api.taskqueue.v1.TaskQueue"
WORKFLOW_QUERY = "temporal.api.query.v1.WorkflowQuery"
UPDATE_REQUEST = "temporal.api.update.v1.Request"
UPDATE_REF = "temporal.api.update.v1.UpdateRef"

# Recognizable prefixes for the fields flowgate reads; other strings get "<field name>-<method>".
PREFIXES = {
    "namespace": "ns",
    "workflow_id": "wf",
    "run_id": "run",
    "schedule_id": "sched",
    "signal_name": "sig",
    "task_queue": "tq",
}


def singular_fields(message):
    return [field for field in message.DESCRIPTOR.fields if not is_repeated(field)]


def is_repeated(field):
    # protobuf >= 6 has `is_repeated`; older releases only `label`.
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def message_type(field):
    return field.message_type.full_name if field.message_type is not None else None


def fill_task_queue(queue, tag, sticky):
    if sticky:
        queue.name = f"sticky-{tag}"
        queue.kind = STICKY
        queue.normal_name = f"tq-{tag}"
    else:
        queue.name = f"tq-{tag}"
        queue.kind = NORMAL
        # Meaningless for a normal queue: must not be read.
        queue.normal_name = f"decoy-{tag}"


def fill(message, tag, sticky=False):
    """Sets every top-level singular string and bytes field, and the well-known messages."""
    for field in singular_fields(message):
        name = field.name
        if field.type == field.TYPE_STRING:
            setattr(message, name, f"{PREFIXES.get(name, name)}-{tag}")
        elif field.type == field.TYPE_BYTES:
            prefix = "tt" if name == "task_token" else name
            setattr(message, name, f"{prefix}-{tag}".encode())
        elif message_type(field) == WORKFLOW_EXECUTION:
            getattr(message, name).workflow_id = f"wf-{tag}"
            getattr(message, name).run_id = f"run-{tag}"
        elif message_type(field) == WORKFLOW_TYPE:
            getattr(message, name).name = f"type-{tag}"
        elif message_type(field) == TASK_QUEUE:
            fill_task_queue(getattr(message, name), tag, sticky)
        elif message_type(field) == WORKFLOW_QUERY:
            getattr(message, name).query_type = f"query-{tag}"
        elif message_type(field) == UPDATE_REQUEST:
            getattr(message, name).input.name = f"upd-{tag}"
            getattr(message, name).meta.update_id = f"update-id-{tag}"
        elif message_type(field) == UPDATE_REF:
            getattr(message, name).workflow_execution.workflow_id = f"wf-{tag}"
            getattr(message, name).update_id = f"update-id-{tag}"


def fill_execute_multi_operation(request, tag):
    start = request.operations.add().start_workflow
    fill(start, tag)
    update = request.operations.add().update_workflow
    fill(update, tag)


def fill_schedule(request, tag):
    action = request.schedule.action.start_workflow
    action.workflow_id = f"scheduled-wf-{tag}"
    action.workflow_type.name = f"type-{tag}"
    fill_task_queue(action.task_queue, tag, sticky=False)


# Requests whose resource is not at the top level.
EXPLICIT = {
    "ExecuteMultiOperation": fill_execute_multi_operation,
    "CreateSchedule": fill_schedule,
    "UpdateSchedule": fill_schedule,
}


def build(method, classes):
    request = getattr(classes, method.input_type.name)()
    fill(request, method.name, sticky=method.name in STICKY_QUEUE_METHODS)
    if method.name in EXPLICIT:
        EXPLICIT[method.name](request, method.name)
    return request


def text(value):
    return value or None


def queue_name(queue):
    if queue.kind == STICKY and queue.normal_name:
        return queue.normal_name
    return queue.name


def has(request, name):
    field = request.DESCRIPTOR.fields_by_name.get(name)
    return field is not None and not is_repeated(field)


def top_level_of_type(request, full_name):
    for field in singular_fields(request):
        if message_type(field) == full_name:
            return getattr(request, field.name)
    return None


def expect(method, request):
    """What the server takes from `request`, reduced to what the resource kind reports."""
    found = {
        "namespace": text(request.namespace) if has(request, "namespace") else None,
        "workflow_id": None,
        "workflow_type": None,
        "task_queue": None,
        "schedule_id": text(request.schedule_id) if has(request, "schedule_id") else None,
        "signal_name": text(request.signal_name) if has(request, "signal_name") else None,
        "query_type": None,
        "update_name": None,
        "has_task_token": bool(request.task_token) if has(request, "task_token") else False,
        "namespace_id": None,
    }
    # A namespace named by id: `namespace_id`, or a namespace request's own `id`.
    if has(request, "namespace_id"):
        found["namespace_id"] = text(request.namespace_id)
    elif has(request, "id") and has(request, "namespace") and request.DESCRIPTOR.name.endswith("NamespaceRequest"):
        found["namespace_id"] = text(request.id)
    names_workflow = False
    if has(request, "workflow_id"):
        names_workflow = True
        found["workflow_id"] = text(request.workflow_id)
    execution = top_level_of_type(request, WORKFLOW_EXECUTION)
    if execution is not None:
        names_workflow = True
        found["workflow_id"] = text(execution.workflow_id)
    if has(request, "update_ref"):
        names_workflow = True
        found["workflow_id"] = text(request.update_ref.workflow_execution.workflow_id)
    workflow_type = top_level_of_type(request, WORKFLOW_TYPE)
    if workflow_type is not None:
        found["workflow_type"] = text(workflow_type.name)
    if has(request, "task_queue"):
        queue = request.task_queue
        found["task_queue"] = text(queue if isinstance(queue, str) else queue_name(queue))
    query = top_level_of_type(request, WORKFLOW_QUERY)
    if query is not None:
        found["query_type"] = text(query.query_type)
    update = top_level_of_type(request, UPDATE_REQUEST)
    if update is not None:
        found["update_name"] = text(update.input.name)

    if method == "ExecuteMultiOperation":
        # The server accepts exactly [start, update] and acts on the start's workflow.
        names_workflow = True
        start = request.operations[0].start_workflow
        found["workflow_id"] = text(start.workflow_id)
        found["workflow_type"] = text(start.workflow_type.name)
        found["task_queue"] = text(queue_name(start.task_queue))
        found["update_name"] = text(request.operations[1].update_workflow.request.input.name)
    if method in ("CreateSchedule", "UpdateSchedule"):
        action = request.schedule.action.start_workflow
        found["workflow_type"] = text(action.workflow_type.name)
        found["task_queue"] = text(queue_name(action.task_queue))

    if not has(request, "namespace"):
        kind, keep = "Cluster", set()
    elif has(request, "schedule_id"):
        kind, keep = "Schedule", {"namespace", "schedule_id", "workflow_type", "task_queue"}
    elif names_workflow:
        kind, keep = "Workflow", {"namespace", "workflow_id", "workflow_type", "task_queue"}
    elif has(request, "task_queue"):
        kind, keep = "TaskQueue", {"namespace", "task_queue"}
    else:
        kind, keep = "Namespace", {"namespace"}
    resource_fields = ("namespace", "workflow_id", "workflow_type", "task_queue", "schedule_id")
    for name in resource_fields:
        if name not in keep:
            found[name] = None
    found["kind"] = kind
    return found


def grpc_frame(payload, compressed):
    return struct.pack(">?I", compressed, len(payload)) + payload


def vector(service, method, classes, payload, framing="none"):
    request = getattr(classes, method.input_type.name).FromString(payload)
    wire = payload if framing == "none" else grpc_frame(gzip.compress(payload), compressed=True)
    return {
        "service": service.full_name,
        "method": method.name,
        "framing": framing,
        "hex": wire.hex(),
        "expect": expect(method.name, request),
    }


def main():
    vectors = {}
    methods = {}
    for service, classes in SERVICES:
        for method in service.methods:
            methods[method.name] = (service, method, classes)
            payload = build(method, classes).SerializeToString()
            vectors[method.name] = vector(service, method, classes, payload)

    def extra(name, method_name, payload, framing="none"):
        service, method, classes = methods[method_name]
        vectors[name] = vector(service, method, classes, payload, framing)

    start = workflow_requests.StartWorkflowExecutionRequest
    full_start = build(methods["StartWorkflowExecution"][1], workflow_requests).SerializeToString()
    # SDKs gzip their requests: inspect the framed, compressed message.
    extra("StartWorkflowExecution/gzip", "StartWorkflowExecution", full_start, framing="gzip")
    # A singular field named twice: the last occurrence is the value.
    extra(
        "StartWorkflowExecution/namespace-twice",
        "StartWorkflowExecution",
        full_start + start(namespace="ns-last").SerializeToString(),
    )
    poll = workflow_requests.PollWorkflowTaskQueueRequest
    # Embedded messages merge: a second `task_queue` that names only a normal name keeps the
    # first copy's sticky kind, so its normal name is the queue.
    extra(
        "PollWorkflowTaskQueue/merged-task-queue",
        "PollWorkflowTaskQueue",
        build(methods["PollWorkflowTaskQueue"][1], workflow_requests).SerializeToString()
        + poll(task_queue={"normal_name": "tq-second"}).SerializeToString(),
    )
    signal = workflow_requests.SignalWorkflowExecutionRequest
    extra(
        "SignalWorkflowExecution/merged-execution",
        "SignalWorkflowExecution",
        build(methods["SignalWorkflowExecution"][1], workflow_requests).SerializeToString()
        + signal(workflow_execution={"run_id": "run-second"}).SerializeToString()
        + signal(signal_name="sig-second").SerializeToString(),
    )
    # The server would take the namespace from the (unsigned) task token.
    extra(
        "RespondWorkflowTaskCompleted/empty-namespace",
        "RespondWorkflowTaskCompleted",
        workflow_requests.RespondWorkflowTaskCompletedRequest(task_token=b"tt-only").SerializeToString(),
    )
    extra(
        "PollWorkflowTaskQueue/normal-queue",
        "PollWorkflowTaskQueue",
        poll(namespace="ns-normal", task_queue={"name": "tq-normal", "kind": NORMAL}).SerializeToString(),
    )
    # A sticky queue without its normal name is reported by its own name.
    extra(
        "PollWorkflowTaskQueue/sticky-without-normal-name",
        "PollWorkflowTaskQueue",
        poll(namespace="ns-sticky", task_queue={"name": "sticky-only", "kind": STICKY}).SerializeToString(),
    )

    json.dump(vectors, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
