/**
 * DeployWorkflow, the type the pipelines in deploy/ci start. The worker bundles this file and
 * runs it in a sandbox: workflow code must be deterministic, so the deploy itself, and anything
 * else that talks to the world, is an activity.
 */
import { proxyActivities } from '@temporalio/workflow';
// Types only: the activities run in the worker, not in the workflow sandbox.
import type * as activities from './activities';
import type { DeployRequest } from './activities';

const { runDeploy } = proxyActivities<typeof activities>({
  startToCloseTimeout: '10 minutes',
  retry: { maximumAttempts: 3 },
});

export async function DeployWorkflow(request: DeployRequest): Promise<string> {
  return await runDeploy(request);
}
