"""A workflow that outlives several credential lifetimes (kept free of test imports for the sandbox)."""

import asyncio
from datetime import timedelta

from temporalio import activity, workflow


@activity.defn(name="exchange_step")
async def exchange_step(step: int, seconds: float) -> str:
    """Some work: heartbeats while it sleeps, so the worker makes calls during it too."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        activity.heartbeat(step)
        await asyncio.sleep(min(1.0, max(0.0, end - loop.time())))
    return f"step {step} done"


@workflow.defn(name="ExchangeWorkflow")
class ExchangeWorkflow:
    """`steps` activities of `work` seconds each, with a `pause` timer after each one: every
    step is a new round of workflow and activity task polls and completions."""

    @workflow.run
    async def run(self, steps: int, work: float, pause: float) -> list[str]:
        done = []
        for step in range(steps):
            done.append(
                await workflow.execute_activity(
                    exchange_step,
                    args=[step, work],
                    start_to_close_timeout=timedelta(seconds=work + 20),
                    heartbeat_timeout=timedelta(seconds=5),
                )
            )
            await workflow.sleep(timedelta(seconds=pause))
        return done
