"""Workflows of the legitimate path in test_beyond_rpc.py: a deploy worker's workflow that
uses every command the attacks misuse, each within its own queue (free of test imports for
the sandbox)."""

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="build_artifact")
async def build_artifact(service: str) -> str:
    return f"built {service}"


@workflow.defn(name="DeployChild")
class DeployChild:
    @workflow.run
    async def run(self, service: str) -> str:
        return f"rolled out {service}"


@workflow.defn(name="DeployListener")
class DeployListener:
    def __init__(self) -> None:
        self._pings: list[str] = []

    @workflow.run
    async def run(self) -> list[str]:
        await workflow.wait_condition(lambda: bool(self._pings))
        return self._pings

    @workflow.signal(name="ping")
    def ping(self, sender: str) -> None:
        self._pings.append(sender)


@workflow.defn(name="DeployParent")
class DeployParent:
    """Round 0: an activity, a child, continue-as-new. Round 1: the same, then a signal."""

    @workflow.run
    async def run(self, service: str, listener_id: str, round_no: int) -> str:
        built = await workflow.execute_activity(build_artifact, service, start_to_close_timeout=timedelta(seconds=20))
        child = await workflow.execute_child_workflow(
            DeployChild.run, service, id=f"{workflow.info().workflow_id}-child-{round_no}",
            execution_timeout=timedelta(seconds=30),
        )  # fmt: skip
        if round_no == 0:
            workflow.continue_as_new(args=[service, listener_id, 1])
        await workflow.get_external_workflow_handle(listener_id).signal("ping", workflow.info().workflow_id)
        return f"{built}; {child}; round {round_no}"
