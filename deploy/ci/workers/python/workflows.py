"""DeployWorkflow, the type the pipelines in deploy/ci start. The worker runs it in a sandbox:
workflow code must be deterministic, so the deploy itself, and anything else that talks to the
world, is an activity."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import DeployRequest, run_deploy


@workflow.defn(name="DeployWorkflow")
class DeployWorkflow:
    @workflow.run
    async def run(self, request: DeployRequest) -> str:
        return await workflow.execute_activity(
            run_deploy,
            request,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
