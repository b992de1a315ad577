"""Workflows and activities the e2e worker runs (kept free of test imports for the sandbox)."""

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def deploy_step(service: str) -> str:
    return f"built {service}"


@workflow.defn(name="DeployWorkflow")
class DeployWorkflow:
    def __init__(self) -> None:
        self._status = "starting"
        self._approver: str | None = None

    @workflow.run
    async def run(self, service: str) -> str:
        self._status = "building"
        built = await workflow.execute_activity(deploy_step, service, start_to_close_timeout=timedelta(seconds=20))
        self._status = "awaiting-approval"
        await workflow.wait_condition(lambda: self._approver is not None)
        self._status = "done"
        return f"{built}; approved by {self._approver}"

    @workflow.signal(name="approve")
    def approve(self, approver: str) -> None:
        self._approver = approver

    @workflow.query(name="status")
    def status(self) -> str:
        return self._status


@workflow.defn(name="DropDatabaseWorkflow")
class DropDatabaseWorkflow:
    @workflow.run
    async def run(self, name: str) -> str:
        return f"dropped {name}"


# --- The verified initiator (flowgate's `flowgate-principal` header) ---------------------------
#
# How workflow code reads it with the Python SDK: an inbound interceptor sees the headers of the
# start and of each signal, and hands them to the workflow instance.

import json as _json  # noqa: E402 - kept beside what uses it

from temporalio.worker import (  # noqa: E402
    ExecuteWorkflowInput,
    HandleSignalInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

FLOWGATE_HEADER = "flowgate-principal"


def initiator(headers) -> dict | None:
    """The verified initiator in a start's or a signal's headers (JSON), if flowgate put one."""
    payload = headers.get(FLOWGATE_HEADER)
    return None if payload is None else _json.loads(payload.data)


class _InitiatorInbound(WorkflowInboundInterceptor):
    async def execute_workflow(self, input: ExecuteWorkflowInput):
        workflow.instance().started_by = initiator(input.headers)
        return await super().execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        workflow.instance().signalled_by.append(initiator(input.headers))
        return await super().handle_signal(input)


class InitiatorInterceptor(Interceptor):
    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput):
        return _InitiatorInbound


@workflow.defn(name="InitiatorWorkflow")
class InitiatorWorkflow:
    """Returns who flowgate says started it and who signalled it."""

    def __init__(self) -> None:
        self.started_by: dict | None = None
        self.signalled_by: list = []
        self._done = False

    @workflow.run
    async def run(self) -> dict:
        await workflow.wait_condition(lambda: self._done)
        return {"started_by": self.started_by, "signalled_by": self.signalled_by}

    @workflow.signal(name="finish")
    def finish(self) -> None:
        self._done = True
