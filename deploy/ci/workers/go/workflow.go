package main

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// DeployRequest is the input the pipelines in deploy/ci start DeployWorkflow with:
// {"service": "payments", "commit": "<sha>", "ci_run": "<run id>"}.
type DeployRequest struct {
	Service string `json:"service"`
	Commit  string `json:"commit"`
	CIRun   string `json:"ci_run"`
}

// DeployWorkflow runs one deploy as an activity. Workflow code must be deterministic: the
// deploy itself, and anything else that talks to the world, belongs in activities.
func DeployWorkflow(ctx workflow.Context, request DeployRequest) (string, error) {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 3},
	})
	var result string
	if err := workflow.ExecuteActivity(ctx, RunDeploy, request).Get(ctx, &result); err != nil {
		return "", err
	}
	return result, nil
}
