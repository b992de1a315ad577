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
