"""The audit trail against a real dev server (issue 12): logrotate-style rotation under load
loses no line and splits none, and the chain runs on across the files; `flowgate audit verify`
catches an edited, a deleted and a swapped line; `flowgate audit query` answers "what did this
pipeline do" and "who touched this workflow"; `flowgate audit replay` tells what a proposed
policy change would have done to real traffic."""

import asyncio
import json
import shutil
import signal
import subprocess
import threading
import time

from e2e_util import PARKED_QUEUE, connect, deployer, github_claims, run, uid
from e2e_workflows import DeployWorkflow
from conftest import flowgate_bin

CALLS = 3000
ROTATIONS = 4


def flowgate(*args, check=False) -> subprocess.CompletedProcess:
    return subprocess.run([str(flowgate_bin()), *args], capture_output=True, text=True, timeout=120, check=check)


def test_rotation_under_load_loses_no_line_and_the_chain_goes_on(gateway, okta):
    gw = gateway()
    rotated = []
    stop = threading.Event()

    def rotate():
        # logrotate's default: rename the file, then tell the writer to reopen its path.
        for n in range(1, ROTATIONS + 1):
            if stop.wait(0.4):
                return
            target = gw.audit_path.with_name(f"decisions.jsonl.{n}")
            gw.audit_path.rename(target)
            rotated.append(target)
            gw.proc.send_signal(signal.SIGHUP)

    async def load():
        client = await connect(gw.address, deployer(okta, "alice"))
        service = client.workflow_service
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

        sem = asyncio.Semaphore(32)

        async def one():
            async with sem:
                await service.describe_namespace(DescribeNamespaceRequest(namespace="payments"))

        await asyncio.gather(*(one() for _ in range(CALLS)))

    rotator = threading.Thread(target=rotate)
    rotator.start()
    started = time.monotonic()
    run(load(), 180)
    stop.set()
    rotator.join()
    assert len(rotated) >= 2, f"the load ({time.monotonic() - started:.1f} s) outlasted only {len(rotated)} rotations"
    time.sleep(0.3)  # outcome records are written as responses end

    files = rotated + [gw.audit_path]
    lines = []
    for path in files:
        text = path.read_text()
        assert text.endswith("\n"), f"{path} ends inside a line"
        lines += [json.loads(line) for line in text.splitlines()]  # a split line would not parse
    described = [r for r in lines if r.get("kind") == "grpc" and r["action"] == "DescribeNamespace"]
    assert len(described) == CALLS, f"{len(described)} decision records for {CALLS} calls"
    ids = {r["decision_id"] for r in described}
    outcomes = [r for r in lines if r.get("kind") == "outcome" and r["decision_id"] in ids]
    assert len(outcomes) == CALLS and all(o["status"] == 0 for o in outcomes), len(outcomes)
    # More than one file got records: the rotations happened under load.
    with_records = [p for p in files if '"DescribeNamespace"' in p.read_text()]
    assert len(with_records) >= 2, [str(p) for p in files]

    verified = flowgate("audit", "verify", *map(str, files))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"ok: {len(lines)} lines in {len(files)} files" in verified.stdout, verified.stdout
    # Out of order, the files do not chain.
    swapped = flowgate("audit", "verify", *map(str, [files[1], files[0], *files[2:]]))
    assert swapped.returncode != 0, swapped.stdout


def test_verify_finds_an_edited_a_deleted_and_a_swapped_line(gateway, okta, tmp_path):
    gw = gateway()

    async def calls():
        client = await connect(gw.address, deployer(okta, "alice"))
        for n in range(6):
            await client.start_workflow(DeployWorkflow.run, "svc", id=uid(f"deploy-audit-{n}"), task_queue=PARKED_QUEUE)

    run(calls())
    time.sleep(0.2)
    original = gw.audit_path.read_text().splitlines()
    assert len(original) >= 12, original
    assert flowgate("audit", "verify", str(gw.audit_path)).returncode == 0

    def tampered(name: str, change) -> subprocess.CompletedProcess:
        lines = list(original)
        change(lines)
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return flowgate("audit", "verify", str(path))

    # A decision turned from allow to deny (1-based line `n`): the line after it no longer links.
    n = next(i for i, line in enumerate(original[:-1], 1) if i > 3 and '"decision":"allow"' in line)

    def edit(lines):
        lines[n - 1] = lines[n - 1].replace('"decision":"allow"', '"decision":"deny"')

    edited = tampered("edited.jsonl", edit)
    expected = f"edited.jsonl:{n + 1}: does not follow the line before it: line {n} of"
    assert edited.returncode != 0 and expected in edited.stdout.splitlines()[0], edited.stdout
    deleted = tampered("deleted.jsonl", lambda ls: ls.pop(7))
    assert deleted.returncode != 0 and "deleted.jsonl:8:" in deleted.stdout.splitlines()[0], deleted.stdout
    swapped = tampered("swapped.jsonl", lambda ls: ls.__setitem__(slice(3, 5), [ls[4], ls[3]]))
    first = swapped.stdout.splitlines()[0]
    assert swapped.returncode != 0 and "swapped.jsonl:4: out of order" in first, swapped.stdout


def test_query_answers_what_a_pipeline_did_and_who_touched_a_workflow(gateway, okta, github, tmp_path):
    gw = gateway(github={"identity": "github:{claim:repository}@{claim:environment}"})
    target, other = uid("deploy-q"), uid("deploy-q-other")

    async def calls():
        ci = await connect(gw.address, github.mint(github_claims()), identity="runner-42")
        await ci.start_workflow(DeployWorkflow.run, "svc", id=target, task_queue=PARKED_QUEUE)
        await ci.start_workflow(DeployWorkflow.run, "svc", id=other, task_queue=PARKED_QUEUE)
        alice = await connect(gw.address, deployer(okta, "alice"))
        await alice.get_workflow_handle(target).signal(DeployWorkflow.approve, "alice")
        await alice.get_workflow_handle(target).describe()

    run(calls())
    time.sleep(0.2)
    log = str(gw.audit_path)

    did = flowgate("audit", "query", "--principal", "github:acme/payments@production", "--since", "1h", log, check=True)
    lines = did.stdout.splitlines()
    assert len(lines) == 2 and all("StartWorkflowExecution" in line and "-> OK run " in line for line in lines), did.stdout
    assert target in did.stdout and other in did.stdout

    touched = flowgate("audit", "query", "--workflow-id", target, "--format", "json", log, check=True)
    records = [json.loads(line) for line in touched.stdout.splitlines()]
    who = [(r["principal"]["id"], r["action"]) for r in records]
    assert who == [
        ("github:repo:acme/payments:environment:production", "StartWorkflowExecution"),
        ("okta:alice", "SignalWorkflowExecution"),
        ("okta:alice", "DescribeWorkflowExecution"),
    ], who
    run_id = records[0]["outcome"]["run_id"]
    by_run = flowgate("audit", "query", "--run-id", run_id, "--format", "json", log, check=True)
    assert [json.loads(line)["resource"]["workflow_id"] for line in by_run.stdout.splitlines()] == [target]
    # Nothing matches a day before the calls; gzipped and rotated files read the same.
    assert flowgate("audit", "query", "--until", "1h", log, check=True).stdout == ""
    gz = tmp_path / "decisions.jsonl.1.gz"
    subprocess.run(["gzip", "-c", log], stdout=open(gz, "wb"), check=True)
    again = flowgate("audit", "query", "--workflow-id", target, "--format", "json", str(gz), check=True)
    assert again.stdout == touched.stdout


def test_replay_tells_what_a_policy_change_would_have_denied(gateway, okta, tmp_path):
    gw = gateway()

    async def calls():
        client = await connect(gw.address, deployer(okta, "alice"))
        for n in range(3):
            await client.start_workflow(DeployWorkflow.run, "svc", id=uid(f"deploy-replay-{n}"), task_queue=PARKED_QUEUE)
        bob = await connect(gw.address, deployer(okta, "bob"))
        await bob.start_workflow(DeployWorkflow.run, "svc", id=uid("deploy-replay-bob"), task_queue=PARKED_QUEUE)

    run(calls())
    proposed = tmp_path / "proposed"
    shutil.copytree(gw.policy_dir, proposed)
    (proposed / "freeze.cedar").write_text(
        '@id("freeze-alice")\n'
        'forbid (principal == Temporal::User::"okta:alice", action == Temporal::Action::"StartWorkflowExecution",'
        " resource);\n"
    )
    same = flowgate("audit", "replay", "--policies", str(gw.policy_dir), "--fail-on-change", str(gw.audit_path))
    assert same.returncode == 0 and " 0 would change" in same.stdout, same.stdout + same.stderr
    changed = flowgate("audit", "replay", "--policies", str(proposed), "--fail-on-change", str(gw.audit_path))
    assert changed.returncode != 0, changed.stdout
    assert "3 calls of okta:alice: StartWorkflowExecution allow -> deny" in changed.stdout, changed.stdout
    assert "okta:bob" not in changed.stdout, changed.stdout
