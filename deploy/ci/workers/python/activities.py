"""The activities of DeployWorkflow. They run in the worker's process, with whatever the worker
may reach; the workflow sandbox never imports this module's side effects."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import activity
from temporalio.exceptions import ApplicationError


@dataclass
class DeployRequest:
    """The input the pipelines in deploy/ci start DeployWorkflow with (JSON):
    {"service": "payments", "commit": "<sha>", "ci_run": "<run id>"}."""

    service: str
    commit: str
    ci_run: str = ""


@activity.defn(name="RunDeploy")
async def run_deploy(request: DeployRequest) -> str:
    """Where the real deploy goes (a rollout, a migration, ...); flowgate only sees its result."""
    if not request.service or not request.commit:
        # Retrying cannot fix a request without a service or a commit.
        raise ApplicationError("deploy request names no service or commit", type="InvalidDeployRequest",
                               non_retryable=True)  # fmt: skip
    activity.logger.info("deploying %s at %s (ci run %s)", request.service, request.commit, request.ci_run)
    return f"deployed {request.service} at {request.commit} (ci run {request.ci_run})"
