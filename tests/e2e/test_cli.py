"""The `temporal` CLI through flowgate: allowed and denied as the policies say."""

import json
import os
import subprocess

from e2e_util import temporal_bin, PARKED_QUEUE, by, deployer, github_claims, uid


def cli(gw, tmp_path, *args, token=None, meta_token=None, namespace="payments"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env["HOME"] = str(tmp_path)  # no user config file
    cmd = [temporal_bin(), *args, "--address", gw.address, "--namespace", namespace, "--tls=false"]
    if token:
        cmd += ["--api-key", token]
    if meta_token:
        cmd += ["--grpc-meta", f"authorization=Bearer {meta_token}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


def test_cli_workflow_list_and_start(gateway, okta, github, tmp_path):
    gw = gateway()
    alice = deployer(okta, "alice")

    ok = cli(gw, tmp_path, "workflow", "list", "--limit", "5", "-o", "json", token=alice)
    assert ok.returncode == 0, f"list denied: {ok.stderr}"
    denied_ns = cli(gw, tmp_path, "workflow", "list", "--limit", "5", token=alice, namespace="analytics")
    # (the CLI prints the gRPC message, not the status code: statuses are checked in the records)
    assert denied_ns.returncode != 0 and "ListWorkflowExecutions" in denied_ns.stderr, denied_ns.stderr
    anon = cli(gw, tmp_path, "workflow", "list", "--limit", "5")
    assert anon.returncode != 0, anon.stderr
    ci = github.mint(github_claims("acme/payments", "production"))
    ci_list = cli(gw, tmp_path, "workflow", "list", "--limit", "5", token=ci)
    assert ci_list.returncode != 0 and "ListWorkflowExecutions" in ci_list.stderr, ci_list.stderr

    wf_id = uid("cli-deploy")
    start = cli(gw, tmp_path, "workflow", "start", "--type", "DeployWorkflow", "--task-queue", PARKED_QUEUE,
                "--workflow-id", wf_id, "--input", json.dumps("api"), "--execution-timeout", "30s",
                meta_token=alice)  # fmt: skip
    assert start.returncode == 0, start.stderr
    drop_id = uid("cli-drop")
    drop = cli(gw, tmp_path, "workflow", "start", "--type", "DropDatabaseWorkflow", "--task-queue", PARKED_QUEUE,
               "--workflow-id", drop_id, meta_token=alice)  # fmt: skip
    assert drop.returncode != 0 and "StartWorkflowExecution" in drop.stderr, drop.stderr

    lists = gw.wait_decisions(by("ListWorkflowExecutions"), 4)
    assert sorted((d["decision"], d.get("status")) for d in lists) == [
        ("allow", None), ("deny", 7), ("deny", 7), ("deny", 16)
    ], lists
    assert {d["resource"]["namespace"] for d in lists if d.get("status") == 7} == {"analytics", "payments"}, lists
    allowed = next(d for d in lists if d["decision"] == "allow")
    assert allowed["resource"]["type"] == "Namespace" and allowed["resource"]["namespace"] == "payments", allowed
    assert allowed["principal"]["id"] == "okta:alice" and "e2e-deployers-read" in allowed["reasons"], allowed
    [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    assert rec["decision"] == "allow" and rec["client"]["name"] == "temporal-cli", rec
    [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=drop_id), 1)
    assert rec["decision"] == "deny" and rec["status"] == 7, rec
