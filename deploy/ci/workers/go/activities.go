package main

import (
	"context"
	"fmt"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
)

// RunDeploy is where the real deploy goes (a rollout, a migration, ...). It runs in the
// worker's process, with whatever the worker may reach; flowgate only sees its result.
func RunDeploy(ctx context.Context, request DeployRequest) (string, error) {
	if request.Service == "" || request.Commit == "" {
		// Retrying cannot fix a request without a service or a commit.
		return "", temporal.NewNonRetryableApplicationError("deploy request names no service or commit", "InvalidDeployRequest", nil)
	}
	activity.GetLogger(ctx).Info("deploying", "service", request.Service, "commit", request.Commit, "ci_run", request.CIRun)
	return fmt.Sprintf("deployed %s at %s (ci run %s)", request.Service, request.Commit, request.CIRun), nil
}
