/** The activities of DeployWorkflow. They run in the worker's process, with whatever the worker may reach. */
import { ApplicationFailure, log } from '@temporalio/activity';

/** The input the pipelines in deploy/ci start DeployWorkflow with. */
export interface DeployRequest {
  service: string;
  commit: string;
  ci_run: string;
}

/** Where the real deploy goes (a rollout, a migration, ...); flowgate only sees its result. */
export async function runDeploy(request: DeployRequest): Promise<string> {
  if (!request.service || !request.commit) {
    // Retrying cannot fix a request without a service or a commit.
    throw ApplicationFailure.nonRetryable('deploy request names no service or commit', 'InvalidDeployRequest');
  }
  log.info('deploying', { service: request.service, commit: request.commit, ci_run: request.ci_run });
  return `deployed ${request.service} at ${request.commit} (ci run ${request.ci_run})`;
}
