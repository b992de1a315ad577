"""What operators read: JSON logs that join a call's line to its decision record and its trace,
plain text without colour codes in a file, and /metrics in the format promtool and Prometheus
read, with bounded namespace labels, the build, the process and what is in flight."""

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from datetime import timedelta

import pytest
from e2e_util import PARKED_QUEUE, by, connect, deployer, run, uid, worker_token
from e2e_workflows import DeployWorkflow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("`promtool` is missing: `bash scripts/setup.sh test` installs it (Debian: prometheus)", pytrace=False)
    return path


def scrape(gw, accept: str | None = None) -> tuple[str, str]:
    request = urllib.request.Request(gw.admin + "/metrics", headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def sample(text: str, name: str, **labels) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_json_logs_carry_the_decision_and_trace_ids_of_each_call(gateway, okta, temporal, monkeypatch):
    monkeypatch.setenv("FLOWGATE_LOG_FORMAT", "json")
    monkeypatch.setenv("FLOWGATE_LOG", "info,flowgate::access=debug")
    gw = gateway()
    wf_id = uid("traced")

    async def scenario():
        from temporalio.client import Client

        client = await Client.connect(gw.address, namespace="payments", rpc_metadata={
            "authorization": f"Bearer {deployer(okta, 'alice')}", "traceparent": TRACEPARENT})  # fmt: skip
        await client.start_workflow(
            DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=30)
        )
        await (await connect(temporal, None)).get_workflow_handle(wf_id).terminate("test over")

    run(scenario())
    [record] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    assert record["trace_id"] == TRACE_ID, record

    lines = [line for line in gw.stderr.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all("timestamp" in p and "level" in p and "message" in p for p in parsed), parsed[:3]
    access = [p for p in parsed if p.get("target") == "flowgate::access" and p.get("decision_id") == record["decision_id"]]
    assert len(access) == 1, parsed[-10:]
    assert access[0]["trace_id"] == TRACE_ID and access[0]["method"] == "StartWorkflowExecution", access
    assert access[0]["grpc_status"] == 0 and access[0]["duration_us"] > 0, access
    assert "\x1b[" not in gw.stderr


def test_text_logs_in_a_file_have_no_colour_codes_and_a_bad_format_is_refused(gateway, okta, monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWGATE_LOG_FORMAT", raising=False)
    gw = gateway()
    assert "flowgate is serving" in gw.stderr and "\x1b[" not in gw.stderr, gw.stderr[:500]

    from conftest import flowgate_bin

    result = subprocess.run([str(flowgate_bin()), "serve", "--config", str(gw.config_path)], capture_output=True,
                            text=True, timeout=30, env={"FLOWGATE_LOG_FORMAT": "yaml", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == "error: `FLOWGATE_LOG_FORMAT` is `yaml`; use `text` or `json`", result.stderr


def test_metrics_pass_promtool_and_label_namespaces_from_a_bounded_list(gateway, okta, temporal):
    gw = gateway(extra='[metrics]\nnamespaces = ["payments"]\n')

    async def scenario():
        allowed = await connect(gw.address, deployer(okta, "alice"))
        await allowed.start_workflow(DeployWorkflow.run, "api", id=uid("metrics"), task_queue=PARKED_QUEUE,
                                     execution_timeout=timedelta(seconds=30))  # fmt: skip
        # Namespaces the list does not name, invented by the caller: all one label.
        for namespace in ("analytics", "made-up-1", "made-up-2"):
            other = await connect(gw.address, deployer(okta, "alice"), namespace=namespace)
            try:
                await other.start_workflow(DeployWorkflow.run, "api", id=uid("m"), task_queue=PARKED_QUEUE)
            except Exception:  # noqa: BLE001 - refused or unknown: only the label matters here
                pass

    run(scenario())
    content_type, classic = scrape(gw)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    check = subprocess.run([promtool(), "check", "metrics"], input=classic, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    namespaces = set(re.findall(r'flowgate_calls_total\{[^}]*namespace="([^"]*)"', classic))
    assert namespaces == {"payments", "other"}, namespaces
    assert sample(classic, "flowgate_calls_total", method="StartWorkflowExecution", namespace="payments",
                  decision="allow") == 1  # fmt: skip
    assert sample(classic, "flowgate_calls_total", method="StartWorkflowExecution", namespace="other") >= 1
    assert sample(classic, "flowgate_build_info", version="0.1.0") == 1
    assert sample(classic, "flowgate_upstream_connected") == 1
    assert sample(classic, "flowgate_token_cache_entries") >= 1
    assert sample(classic, "process_resident_memory_bytes") > 1_000_000
    assert sample(classic, "process_open_fds") > 0

    # A scraper that asks for OpenMetrics gets it.
    content_type, openmetrics = scrape(gw, "application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text") and openmetrics.endswith("# EOF\n")
    assert "# TYPE flowgate_calls counter" in openmetrics


def test_long_polls_in_flight_are_a_gauge(gateway, okta):
    gw = gateway()

    async def scenario():
        client = await connect(gw.address, worker_token(okta))
        from temporalio.api.workflowservice.v1 import PollWorkflowTaskQueueRequest
        from temporalio.api.taskqueue.v1 import TaskQueue

        poll = asyncio.ensure_future(client.workflow_service.poll_workflow_task_queue(
            PollWorkflowTaskQueueRequest(namespace="payments", task_queue=TaskQueue(name="deploys"), identity="w")))  # fmt: skip
        try:
            for _ in range(50):
                await asyncio.sleep(0.1)
                if sample(scrape(gw)[1], "flowgate_calls_in_flight", kind="long_poll") == 1:
                    return True
            return False
        finally:
            poll.cancel()

    assert run(scenario()), "the poll was never counted in flight"
    for _ in range(50):
        if sample(scrape(gw)[1], "flowgate_calls_in_flight", kind="long_poll") == 0:
            break
        import time

        time.sleep(0.1)
    assert sample(scrape(gw)[1], "flowgate_calls_in_flight", kind="long_poll") == 0
