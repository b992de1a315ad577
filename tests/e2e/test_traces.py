"""Traces, end to end: a Temporal SDK client that traces calls through flowgate into a Temporal
dev server that traces too, all exporting to a real Jaeger (its OTLP receiver, read back
through its query API). The client's trace is continued by flowgate's spans, and Temporal's
own span of the call hangs under flowgate's `forward` span: the `traceparent` went upstream.

Jaeger is built with Go by `scripts/setup.sh test` (scripts/install-go-tool.sh) into the
cache's bin/, which scripts/test.sh puts on PATH."""

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from conftest import _gateway_factory, _stop_all, free_port
from e2e_util import PARKED_QUEUE, by, deployer, run, stop_group, temporal_bin, uid
from e2e_workflows import DeployWorkflow

WS = "temporal.api.workflowservice.v1.WorkflowService"
PHASES = ["authenticate", "inspect", "authorize", "record", "forward"]


def jaeger_bin() -> str:
    path = shutil.which("jaeger")
    if path is None:
        pytest.fail("`jaeger` is missing: `bash scripts/setup.sh test` builds it with Go", pytrace=False)
    return path


JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class Jaeger:
    def __init__(self, query: int, otlp_grpc: int, otlp_http: int):
        self.query = f"http://127.0.0.1:{query}"
        self.otlp_grpc = f"http://127.0.0.1:{otlp_grpc}"
        self.otlp_http = f"http://127.0.0.1:{otlp_http}/v1/traces"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.query + path, timeout=10) as r:
            return json.loads(r.read())

    def trace(self, trace_id: str, until, timeout: float = 20.0) -> dict:
        """The trace `trace_id` once `until(spans)` holds (spans keyed by their process's
        service name and operation), else fails with what Jaeger has."""
        deadline = time.monotonic() + timeout
        found: dict = {}
        while time.monotonic() < deadline:
            try:
                data = self.get(f"/api/traces/{trace_id}")["data"]
            except urllib.error.HTTPError as e:  # 404 until the first span of the trace arrives
                if e.code != 404:
                    raise
                data = []
            if data:
                found = data[0]
                if until(spans_of(found)):
                    return found
            time.sleep(0.2)
        pytest.fail(f"jaeger did not get the spans expected of trace {trace_id}; it has {json.dumps(found)[:3000]}")


def spans_of(trace: dict) -> list[dict]:
    """Each span with its service name (`service`) and its parent's span id (`parent`)."""
    processes = trace.get("processes", {})
    out = []
    for span in trace.get("spans", []):
        parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        out.append({**span, "service": processes.get(span["processID"], {}).get("serviceName"),
                    "parent": parents[0] if parents else None,
                    "tagmap": {t["key"]: t["value"] for t in span.get("tags", [])}})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    work = tmp_path_factory.mktemp("jaeger")
    ports = {"query": free_port(), "query_grpc": free_port(), "otlp_grpc": free_port(), "otlp_http": free_port()}
    config = work / "jaeger.yaml"
    config.write_text(JAEGER_CONFIG.format(**ports))
    log = open(work / "jaeger.log", "wb")
    proc = subprocess.Popen([jaeger_bin(), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    j = Jaeger(ports["query"], ports["otlp_grpc"], ports["otlp_http"])
    deadline = time.monotonic() + 60
    while True:
        try:
            j.get("/api/services")
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"jaeger did not start:\n{(work / 'jaeger.log').read_text()[-3000:]}")
            time.sleep(0.2)
    yield j
    stop_group(proc)
    log.close()


@pytest.fixture(scope="module")
def traced_temporal(jaeger, tmp_path_factory):
    """A Temporal dev server that exports its own spans (OTLP/gRPC) to Jaeger."""
    from conftest import _describe_namespaces

    work = tmp_path_factory.mktemp("traced-temporal")
    port = free_port()
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": jaeger.otlp_grpc,
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_BSP_SCHEDULE_DELAY": "200"}  # fmt: skip
    cmd = [temporal_bin(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
           "--http-port", str(free_port()), "--metrics-port", str(free_port()), "--namespace", "payments",
           "--db-filename", str(work / "temporal.db"), "--log-level", "warn"]  # fmt: skip
    log = open(work / "temporal.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            run(_describe_namespaces(address, ["payments"]), 10)
            break
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"traced dev server did not start:\n{(work / 'temporal.log').read_text()[-3000:]}")
            time.sleep(0.3)
    yield address
    stop_group(proc)
    log.close()


@pytest.fixture
def traced_gateway(traced_temporal, okta, github, tmp_path):
    start, started = _gateway_factory(okta, github, tmp_path, "http://" + traced_temporal)
    yield start
    _stop_all(started)


def new_trace() -> tuple[str, str]:
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return trace_id, span_id


async def start_through(gw, okta, traceparent: str, workflow_id: str, workflow=DeployWorkflow.run):
    from temporalio.client import Client

    client = await Client.connect(gw.address, namespace="payments", rpc_metadata={
        "authorization": f"Bearer {deployer(okta, 'alice')}", "traceparent": traceparent})  # fmt: skip
    return await client.start_workflow(
        workflow, "api", id=workflow_id, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=30)
    )


def test_a_clients_trace_goes_through_flowgates_phases_into_temporal(traced_gateway, okta, jaeger):
    # Only the client's sampled flag decides: no call the client does not trace is recorded.
    gw = traced_gateway(extra=f'[traces]\nendpoint = "{jaeger.otlp_http}"\nsample_ratio = 0.0\n')
    trace_id, client_span = new_trace()
    wf_id = uid("traced")
    run(start_through(gw, okta, f"00-{trace_id}-{client_span}-01", wf_id))
    [record] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    assert record["trace_id"] == trace_id, record

    name = f"{WS}/StartWorkflowExecution"

    def complete(spans):
        ours = [s for s in spans if s["service"] == "flowgate" and s["operationName"] == name]
        theirs = [s for s in spans if s["service"] == "io.temporal.frontend" and s["operationName"] == name]
        return ours and theirs and all(any(s["operationName"] == p for s in spans) for p in PHASES)

    spans = spans_of(jaeger.trace(trace_id, complete))
    [root] = [s for s in spans if s["service"] == "flowgate" and s["operationName"] == name
              and s["tagmap"].get("flowgate.decision_id") == record["decision_id"]]  # fmt: skip
    assert root["parent"] == client_span, root
    assert root["tagmap"]["flowgate.decision"] == "allow" and root["tagmap"]["enduser.id"] == "okta:alice", root
    assert root["tagmap"]["temporal.namespace"] == "payments" and root["tagmap"]["rpc.grpc.status_code"] == 0, root
    phases = {s["operationName"]: s for s in spans if s["parent"] == root["spanID"]}
    assert sorted(phases) == sorted(PHASES), phases.keys()
    starts = [phases[p]["startTime"] for p in PHASES]
    assert starts == sorted(starts), "the phases are in order"
    # Temporal's own span of the start is a child of flowgate's forward span.
    [frontend] = [s for s in spans if s["service"] == "io.temporal.frontend" and s["operationName"] == name]
    assert frontend["parent"] == phases["forward"]["spanID"], (frontend, phases["forward"])


def test_a_refused_call_ends_in_flowgate_and_an_unsampled_one_is_not_recorded(traced_gateway, okta, jaeger):
    gw = traced_gateway(extra=f'[traces]\nendpoint = "{jaeger.otlp_http}"\nsample_ratio = 0.0\n')

    # Refused: the trace has flowgate's phases up to `record`, and nothing of Temporal's start.
    trace_id, client_span = new_trace()
    wf_id = uid("traced-denied")

    async def denied():
        from temporalio.service import RPCError

        try:
            await start_through(gw, okta, f"00-{trace_id}-{client_span}-01", wf_id, workflow="DropTablesWorkflow")
        except RPCError as e:
            return e
        return None

    error = run(denied())
    from temporalio.service import RPCStatusCode

    assert error is not None and error.status == RPCStatusCode.PERMISSION_DENIED, error
    [record] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    name = f"{WS}/StartWorkflowExecution"
    spans = spans_of(jaeger.trace(trace_id, lambda spans: any(
        s["operationName"] == name and s["tagmap"].get("flowgate.decision_id") == record["decision_id"] for s in spans)))  # fmt: skip
    [root] = [s for s in spans if s["tagmap"].get("flowgate.decision_id") == record["decision_id"]]
    assert root["tagmap"]["flowgate.decision"] == "deny" and root["tagmap"]["rpc.grpc.status_code"] == 7, root
    assert sorted(s["operationName"] for s in spans if s["parent"] == root["spanID"]) == sorted(PHASES[:4])
    assert not [s for s in spans if s["service"] != "flowgate" and s["operationName"] == name], spans

    # Unsampled by the client: flowgate records nothing, and Temporal gets the header as sent
    # (so it records nothing either). Its key fetch, sampled by the ratio 0, is not there either.
    quiet_id, quiet_span = new_trace()
    wf_quiet = uid("untraced")
    run(start_through(gw, okta, f"00-{quiet_id}-{quiet_span}-00", wf_quiet))
    gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_quiet), 1)
    # A traced call after it: once its spans are in, the earlier call's would be too.
    marker_id, marker_span = new_trace()
    run(start_through(gw, okta, f"00-{marker_id}-{marker_span}-01", uid("marker")))
    jaeger.trace(marker_id, lambda spans: any(s["operationName"] == "record" for s in spans))
    time.sleep(1.5)
    with pytest.raises(urllib.error.HTTPError) as missing:
        jaeger.get(f"/api/traces/{quiet_id}")
    assert missing.value.code == 404


def test_flowgate_traces_its_key_fetches_with_its_service_name(traced_gateway, jaeger):
    gw = traced_gateway(
        extra=f'[traces]\nendpoint = "{jaeger.otlp_http}"\nsample_ratio = 1.0\nservice_name = "flowgate-edge"\n'
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if "flowgate-edge" in jaeger.get("/api/services")["data"]:
            break
        time.sleep(0.2)
    found = jaeger.get("/api/traces?service=flowgate-edge&operation=fetch%20signing%20keys&limit=20")["data"]
    fetches = [s for t in found for s in spans_of(t) if s["operationName"] == "fetch signing keys"]
    assert {s["tagmap"]["flowgate.issuer"] for s in fetches} >= {"okta"}, fetches
    assert all(s["tagmap"]["flowgate.keys"] >= 1 for s in fetches if s["tagmap"]["flowgate.issuer"] == "okta")
    assert "exporting traces" in gw.stderr
