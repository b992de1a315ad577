"""The policy review loop against a real Temporal dev server: hot reload under load, SIGHUP,
a shadow policy set, explaining a denial (admin port and `flowgate explain --admin`), and a
Kubernetes ConfigMap-style symlink swap, and a refusal before any policy (a task token that
names no namespace) that still names its decision and can be explained.

Calls go through grpcio's WorkflowService stub (no SDK retries), so every gRPC status the
gateway sent is counted exactly.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import E2E_DIR, copy_policies, flowgate_bin
from e2e_util import PARKED_QUEUE, deployer, uid, wait_until
from temporalio.api.common.v1 import WorkflowExecution, WorkflowType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import request_response_pb2 as rr
from temporalio.api.workflowservice.v1 import service_pb2_grpc as svc

START = "StartWorkflowExecution"
DESCRIBE_NS = "DescribeNamespace"

# The stricter deployers.cedar: the e2e set's policies, and a freeze on every start in payments.
FREEZE_ID = "e2e-freeze-deploys"
FREEZE = f"""
// A deploy freeze: nobody starts workflows in payments.
@id("{FREEZE_ID}")
forbid (
  principal,
  action == Temporal::Action::"StartWorkflowExecution",
  resource in Temporal::Namespace::"payments"
);
"""

# A syntax error: `whenn` on the second line of this snippet.
BROKEN = """@id("e2e-broken")
permit (principal, action, resource)
whenn { true };
"""
BROKEN_LINE_OFFSET = 3  # 1-based line of `whenn` within BROKEN


# --------------------------------------------------------------------------------------------
# helpers


def replace_atomically(path: Path, text: str) -> None:
    """Writes `text` to a temporary file next to `path` (not a *.cedar name) and renames it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def validate(directory: Path) -> str:
    """`flowgate policy validate DIR`: the set's version (the test fails if the set is invalid)."""
    out = subprocess.run([str(flowgate_bin()), "policy", "validate", str(directory)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, f"policy validate {directory}: {out.stdout}{out.stderr}"
    m = re.search(r"version ([0-9a-f]+)\s*$", out.stdout.strip())
    assert m, f"no version in validate output: {out.stdout!r}"
    return m.group(1)


def stricter_set(gw, tmp_path: Path, name: str = "strict") -> tuple[Path, str, str]:
    """A copy of the gateway's policy dir with the freeze added to deployers.cedar.

    Returns (dir, new deployers.cedar text, version)."""
    d = tmp_path / name
    shutil.copytree(gw.policy_dir, d)
    text = (gw.policy_dir / "deployers.cedar").read_text() + FREEZE
    (d / "deployers.cedar").write_text(text)
    return d, text, validate(d)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(gw) -> dict[tuple[str, frozenset], float]:
    status, text = gw.http_get("/metrics")
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def series(gw_or_metrics, name: str) -> dict[frozenset, float]:
    """Every sample of metric `name`: {frozenset(label items): value}."""
    ms = gw_or_metrics if isinstance(gw_or_metrics, dict) else metrics(gw_or_metrics)
    return {labels: v for (n, labels), v in ms.items() if n == name}


def value(gw_or_metrics, name: str, **labels) -> float | None:
    return series(gw_or_metrics, name).get(frozenset(labels.items()))


def info_versions(gw_or_metrics, name: str = "flowgate_policy_info") -> dict[str, float]:
    return {dict(labels)["policy_version"]: v for labels, v in series(gw_or_metrics, name).items()}


def reloads(gw_or_metrics) -> dict[tuple[str, str], float]:
    return {(dict(labels)["set"], dict(labels)["result"]): v
            for labels, v in series(gw_or_metrics, "flowgate_policy_reload_total").items()}  # fmt: skip


class Caller:
    """One grpcio channel to flowgate with a bearer token; returns (status name, details)."""

    def __init__(self, address: str, token: str, namespace: str = "payments"):
        self.channel = grpc.insecure_channel(address)
        self.stub = svc.WorkflowServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")]
        self.namespace = namespace

    def _call(self, method, request) -> tuple[str, str]:
        try:
            method(request, metadata=self.metadata, timeout=15)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""

    def start(self, workflow_id: str, workflow_type: str = "DeployWorkflow", task_queue: str = PARKED_QUEUE):
        from google.protobuf.duration_pb2 import Duration

        req = rr.StartWorkflowExecutionRequest(
            namespace=self.namespace, workflow_id=workflow_id, workflow_type=WorkflowType(name=workflow_type),
            task_queue=TaskQueue(name=task_queue), request_id=str(uuid.uuid4()), identity="e2e-policy-loop",
            workflow_execution_timeout=Duration(seconds=120),
        )  # fmt: skip
        return self._call(self.stub.StartWorkflowExecution, req)

    def describe_namespace(self):
        return self._call(self.stub.DescribeNamespace, rr.DescribeNamespaceRequest(namespace=self.namespace))

    def close(self):
        self.channel.close()


def upstream_workflow(temporal: str, workflow_id: str, namespace: str = "payments"):
    """Asks Temporal directly (not through flowgate): (status name, DescribeWorkflowExecutionResponse|None)."""
    with grpc.insecure_channel(temporal) as ch:
        stub = svc.WorkflowServiceStub(ch)
        req = rr.DescribeWorkflowExecutionRequest(namespace=namespace, execution=WorkflowExecution(workflow_id=workflow_id))
        try:
            return "OK", stub.DescribeWorkflowExecution(req, timeout=10)
        except grpc.RpcError as e:
            return e.code().name, None


DENIAL_POINTER = re.compile(
    r" \(decision `([0-9a-f-]{36})`: `flowgate explain --admin <admin address> --decision \1`\)$"
)


def decision_id_of(details: str) -> str:
    m = DENIAL_POINTER.search(details)
    assert m, f"a PERMISSION_DENIED message without the decision pointer: {details!r}"
    return m.group(1)


def http(gw, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(gw.admin + path, data=data, method=method,
                                 headers={"content-type": "application/json"} if data else {})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def flowgate(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([str(flowgate_bin()), *args], capture_output=True, text=True, timeout=60, env=full_env)


# --------------------------------------------------------------------------------------------
# 1. reload under load


class Load:
    """Two threads calling through flowgate until stopped: DescribeNamespace and
    StartWorkflowExecution (DeployWorkflow, each with a fresh id). Every call is kept as
    (kind, t_sent, t_answered, status, details, workflow_id)."""

    def __init__(self, address: str, token: str):
        self.address, self.token = address, token
        self.stop = threading.Event()
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in (DESCRIBE_NS, START)]

    def _run(self, kind: str):
        caller = Caller(self.address, self.token)
        try:
            while not self.stop.is_set():
                wf_id = uid("load") if kind == START else None
                t0 = time.monotonic()
                status, details = caller.start(wf_id) if kind == START else caller.describe_namespace()
                t1 = time.monotonic()
                with self.lock:
                    self.calls.append((kind, t0, t1, status, details, wf_id))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
        finally:
            caller.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def count(self, kind: str | None = None) -> int:
        with self.lock:
            return sum(1 for c in self.calls if kind is None or c[0] == kind)


def test_reload_under_load(gateway, okta, temporal, tmp_path):
    interval = 0.5
    gw = gateway(policy_extra='watch_interval = "500ms"')
    v1 = validate(gw.policy_dir)
    _, strict_text, v2 = stricter_set(gw, tmp_path)
    assert v1 != v2
    broken_text = strict_text + "\n" + BROKEN
    broken_line = strict_text.count("\n") + 1 + BROKEN_LINE_OFFSET
    target = gw.policy_dir / "deployers.cedar"

    m0 = metrics(gw)
    assert info_versions(m0) == {v1: 1}, series(m0, "flowgate_policy_info")
    assert reloads(m0) == {}, f"reloads counted before any change: {reloads(m0)}"

    def versions_seen() -> set[str]:
        return {d["policy_version"] for d in gw.decisions()}

    t_begin = time.monotonic()
    wall_begin = time.time()
    with Load(gw.address, deployer(okta, "alice")) as load:
        # Phase 1: the e2e set.
        assert wait_until(lambda: load.count(START) >= 60, 30), f"only {load.count(START)} starts in 30 s"
        time.sleep(0.5)
        # Phase 2: the stricter set, replaced atomically under load.
        wall_swap1, t_swap1 = time.time(), time.monotonic()
        replace_atomically(target, strict_text)
        assert wait_until(lambda: v2 in versions_seen(), 30, 0.02), "no record under the stricter set within 30 s"
        t_seen1 = time.monotonic()
        n_seen1 = load.count()
        wait_until(lambda: load.count() >= n_seen1 + 40, 20)
        time.sleep(1.5)
        # Phase 3: an invalid set: refused, the stricter one stays.
        wall_swap2, t_swap2 = time.time(), time.monotonic()
        replace_atomically(target, broken_text)
        assert wait_until(lambda: reloads(gw).get(("enforced", "failure")), 30, 0.05), \
            f"the invalid set was not refused within 30 s: {reloads(gw)}"  # fmt: skip
        t_refused = time.monotonic()
        n_refused = load.count()
        time.sleep(3 * interval)  # at least two more polls of the (unchanged, invalid) directory
        wait_until(lambda: load.count() >= n_refused + 40, 20)
        t_end = time.monotonic()
    assert not load.errors, load.errors
    assert all(not t.is_alive() for t in load.threads)
    calls = load.calls

    # Every call: OK or PERMISSION_DENIED; DescribeNamespace never denied.
    by_status: dict[tuple[str, str], int] = {}
    for kind, _, _, status, _, _ in calls:
        by_status[(kind, status)] = by_status.get((kind, status), 0) + 1
    print(f"\nreload under load: {len(calls)} calls in {t_end - t_begin:.1f} s: {by_status}; "
          f"stricter set in force {t_seen1 - t_swap1:.2f} s after the rename, invalid set refused "
          f"{t_refused - t_swap2:.2f} s after the rename")  # fmt: skip
    assert {s for _, _, _, s, _, _ in calls} <= {"OK", "PERMISSION_DENIED"}, by_status
    assert by_status.get((DESCRIBE_NS, "PERMISSION_DENIED"), 0) == 0, by_status
    assert len(calls) >= 200, f"only {len(calls)} calls: {by_status}"
    starts = [c for c in calls if c[0] == START]
    describes = [c for c in calls if c[0] == DESCRIBE_NS]
    # Starts answered before the first rename: all allowed. Starts sent after a record showed
    # the stricter set: all denied (also after the invalid set was refused).
    before = [c for c in starts if c[2] < t_swap1]
    after = [c for c in starts if c[1] > t_seen1]
    after_refusal = [c for c in starts if c[1] > t_refused]
    assert len(before) >= 10 and len(after) >= 10 and len(after_refusal) >= 5, (len(before), len(after), len(after_refusal))
    assert all(c[3] == "OK" for c in before), [c for c in before if c[3] != "OK"][:3]
    assert all(c[3] == "PERMISSION_DENIED" for c in after), [c for c in after if c[3] != "PERMISSION_DENIED"][:3]
    for c in after[:3]:
        assert f"`{START}`" in c[4] and "forbid (" not in c[4], c[4]  # the action, never the policy text

    # Records: one per call, each under one of the two valid versions, decided as that version says.
    time.sleep(0.3)
    records = gw.wait_decisions(lambda d: True, len(calls), 10)
    assert len(records) == len(calls), f"{len(records)} records for {len(calls)} calls"
    records = gw.decisions()
    assert len(records) == len(calls), f"{len(records)} records for {len(calls)} calls"
    assert {d["policy_version"] for d in records} == {v1, v2}, {d["policy_version"] for d in records}
    for d in records:
        assert d["principal"]["id"] == "okta:alice", d
        assert "shadow" not in d, d
        if d["action"] == DESCRIBE_NS:
            assert (d["decision"], d["reasons"], d["status"]) == ("allow", ["e2e-deployers-read"], None), d
        else:
            assert d["action"] == START, d
            if d["policy_version"] == v1:
                assert (d["decision"], d["reasons"], d["status"]) == ("allow", ["e2e-deployers-start-deploy"], None), d
            else:
                assert (d["decision"], d["reasons"], d["status"]) == ("deny", [FREEZE_ID], 7), d
    assert sum(1 for d in records if d["action"] == DESCRIBE_NS) == len(describes)
    start_records = {d["resource"]["workflow_id"]: d for d in records if d["action"] == START}
    assert len(start_records) == len(starts)
    for _, t0, _, status, details, wf_id in starts:
        rec = start_records[wf_id]
        if status == "OK":
            assert rec["decision"] == "allow" and rec["policy_version"] == v1, rec
        else:
            assert rec["decision"] == "deny" and rec["policy_version"] == v2, rec
            assert decision_id_of(details) == rec["decision_id"], (details, rec)
        if t0 > t_refused:
            assert rec["policy_version"] == v2, rec
    # The switch happens once: the log is v1 records, then v2 records (with two client threads,
    # one call that took the old set just before the swap may be written after the first v2 one).
    versions = [d["policy_version"] for d in records]
    first_v2 = versions.index(v2)
    assert versions[first_v2:].count(v1) <= 1, versions[first_v2 - 3:first_v2 + 5]
    # A record under each set names the real outcome upstream: an allowed start exists in
    # Temporal, a denied one does not.
    allowed_id = next(c[5] for c in starts if c[3] == "OK")
    denied_id = next(c[5] for c in starts if c[3] == "PERMISSION_DENIED")
    status, desc = upstream_workflow(temporal, allowed_id)
    assert status == "OK" and desc.workflow_execution_info.type.name == "DeployWorkflow", status
    assert upstream_workflow(temporal, denied_id)[0] == "NOT_FOUND"

    # The invalid set was refused once (not retried while unchanged), the stricter one stays.
    m = metrics(gw)
    assert reloads(m) == {("enforced", "success"): 1, ("enforced", "failure"): 1}, reloads(m)
    assert info_versions(m) == {v2: 1}, series(m, "flowgate_policy_info")
    assert series(m, "flowgate_shadow_policy_info") == {}, series(m, "flowgate_shadow_policy_info")
    ok_ts = value(m, "flowgate_policy_last_reload_timestamp_seconds", set="enforced", result="success")
    fail_ts = value(m, "flowgate_policy_last_reload_timestamp_seconds", set="enforced", result="failure")
    assert wall_swap1 - 1 <= ok_ts <= wall_swap2, (wall_begin, wall_swap1, ok_ts, wall_swap2)
    assert wall_swap2 - 1 <= fail_ts <= time.time(), (wall_swap2, fail_ts)
    calls_total = series(m, "flowgate_calls_total")
    # No `metrics.namespaces` here: every namespace is `other`.
    assert calls_total.get(frozenset({("method", START), ("decision", "deny"), ("grpc_status", "7"),
                                      ("namespace", "other")})) == \
        by_status[(START, "PERMISSION_DENIED")], calls_total  # fmt: skip
    assert calls_total.get(frozenset({("method", START), ("decision", "allow"), ("grpc_status", "0"),
                                      ("namespace", "other")})) == \
        by_status[(START, "OK")], calls_total  # fmt: skip
    # The refusal is logged with the file and the line of the error.
    err = gw.stderr
    assert "policy set refused" in err, err[-3000:]
    assert f"{target}:{broken_line}:" in err, f"stderr does not name {target}:{broken_line}:\n{err[-3000:]}"
    assert err.count("policy set refused") == 1, err[-3000:]


# --------------------------------------------------------------------------------------------
# 2. SIGHUP only


def test_sighup_reloads_when_polling_is_off(gateway, okta, tmp_path):
    gw = gateway(policy_extra='watch_interval = "0s"')
    v1 = validate(gw.policy_dir)
    _, strict_text, v2 = stricter_set(gw, tmp_path)
    target = gw.policy_dir / "deployers.cedar"
    caller = Caller(gw.address, deployer(okta, "alice"))

    def start_and_record(expect_status: str) -> dict:
        wf_id = uid("hup")
        status, details = caller.start(wf_id)
        assert status == expect_status, (status, details)
        [rec] = gw.wait_decisions(lambda d: d["resource"].get("workflow_id") == wf_id, 1)
        return rec

    rec = start_and_record("OK")
    assert rec["policy_version"] == v1 and rec["reasons"] == ["e2e-deployers-start-deploy"], rec

    replace_atomically(target, strict_text)
    time.sleep(2.5)  # no polling: nothing may change
    m = metrics(gw)
    assert reloads(m) == {}, reloads(m)
    assert info_versions(m) == {v1: 1}, series(m, "flowgate_policy_info")
    rec = start_and_record("OK")
    assert rec["policy_version"] == v1 and rec["decision"] == "allow", rec

    t0 = time.monotonic()
    os.kill(gw.pid, signal.SIGHUP)
    assert wait_until(lambda: reloads(gw).get(("enforced", "success")) == 1, 30, 0.02), reloads(gw)
    print(f"\nSIGHUP: reloaded in {time.monotonic() - t0:.2f} s")
    m = metrics(gw)
    assert reloads(m) == {("enforced", "success"): 1}, reloads(m)  # no shadow set: nothing counted for it
    assert info_versions(m) == {v2: 1}, series(m, "flowgate_policy_info")
    rec = start_and_record("PERMISSION_DENIED")
    assert (rec["policy_version"], rec["decision"], rec["reasons"], rec["status"]) == (v2, "deny", [FREEZE_ID], 7), rec
    assert caller.describe_namespace() == ("OK", "")

    # SIGHUP with nothing changed: a successful reload of the same version.
    os.kill(gw.pid, signal.SIGHUP)
    assert wait_until(lambda: reloads(gw).get(("enforced", "success")) == 2, 30, 0.02), reloads(gw)
    assert info_versions(gw) == {v2: 1}

    # SIGHUP with an invalid set: refused, the stricter set stays.
    replace_atomically(target, strict_text + "\n" + BROKEN)
    time.sleep(1.0)
    assert reloads(gw) == {("enforced", "success"): 2}, "a reload without SIGHUP while polling is off"
    os.kill(gw.pid, signal.SIGHUP)
    assert wait_until(lambda: reloads(gw).get(("enforced", "failure")) == 1, 30, 0.02), reloads(gw)
    m = metrics(gw)
    assert reloads(m) == {("enforced", "success"): 2, ("enforced", "failure"): 1}, reloads(m)
    assert info_versions(m) == {v2: 1}
    rec = start_and_record("PERMISSION_DENIED")
    assert (rec["policy_version"], rec["reasons"]) == (v2, [FREEZE_ID]), rec
    broken_line = strict_text.count("\n") + 1 + BROKEN_LINE_OFFSET
    assert f"{target}:{broken_line}:" in gw.stderr, gw.stderr[-3000:]
    caller.close()
    assert {d["policy_version"] for d in gw.decisions()} == {v1, v2}


# --------------------------------------------------------------------------------------------
# 3. shadow set


FROZEN_QUEUE = "deploys-frozen"
SHADOW_FORBID_ID = "e2e-shadow-no-frozen-queue"
SHADOW_FORBID = f"""// The next set: no more starts on the frozen task queue.
@id("{SHADOW_FORBID_ID}")
forbid (
  principal,
  action == Temporal::Action::"StartWorkflowExecution",
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when {{ resource has task_queue && resource.task_queue == "{FROZEN_QUEUE}" }};
"""


def test_shadow_set_is_recorded_never_enforced(gateway, okta, temporal, tmp_path):
    shadow_src = copy_policies(tmp_path / "shadow-src")
    (shadow_src / "shadow-freeze.cedar").write_text(SHADOW_FORBID)
    gw = gateway(policy_extra='watch_interval = "500ms"', shadow_policies=shadow_src)
    v1, vs = validate(gw.policy_dir), validate(gw.shadow_dir)
    assert v1 == validate(copy_policies(tmp_path / "e2e-copy", E2E_DIR / "policies")) and vs != v1
    m = metrics(gw)
    assert info_versions(m) == {v1: 1} and info_versions(m, "flowgate_shadow_policy_info") == {vs: 1}, m
    caller = Caller(gw.address, deployer(okta, "alice"))

    n_frozen, n_parked, n_describe = 5, 3, 4
    frozen = [uid("frozen") for _ in range(n_frozen)]
    parked = [uid("parked") for _ in range(n_parked)]
    drop = uid("drop")
    for wf_id in frozen:
        assert caller.start(wf_id, task_queue=FROZEN_QUEUE) == ("OK", "")
    for wf_id in parked:
        assert caller.start(wf_id) == ("OK", "")
    for _ in range(n_describe):
        assert caller.describe_namespace() == ("OK", "")
    status, details = caller.start(drop, workflow_type="DropDatabaseWorkflow")
    assert status == "PERMISSION_DENIED", (status, details)
    total = n_frozen + n_parked + n_describe + 1
    records = gw.wait_decisions(lambda d: True, total)
    assert len(records) == total, records

    # The shadow forbid did not stop the starts: they are running in Temporal.
    for wf_id in frozen:
        status, desc = upstream_workflow(temporal, wf_id)
        assert status == "OK", (wf_id, status)
        assert desc.workflow_execution_info.type.name == "DeployWorkflow"
        assert desc.execution_config.task_queue.name == FROZEN_QUEUE

    by_wf = {d["resource"].get("workflow_id"): d for d in records if d["action"] == START}
    expected_shadow = {"decision": "deny", "reasons": [SHADOW_FORBID_ID], "errors": [], "policy_version": vs}
    for wf_id in frozen:
        rec = by_wf[wf_id]
        assert (rec["decision"], rec["reasons"], rec["policy_version"]) == ("allow", ["e2e-deployers-start-deploy"], v1), rec
        assert rec.get("shadow") == expected_shadow, rec
    agreeing = [by_wf[w] for w in parked + [drop]] + [d for d in records if d["action"] == DESCRIBE_NS]
    assert len(agreeing) == n_parked + 1 + n_describe
    for rec in agreeing:
        assert "shadow" not in rec, f"both sets agree, yet the record has `shadow`: {rec}"
        assert rec["policy_version"] == v1, rec
    assert (by_wf[drop]["decision"], by_wf[drop]["reasons"], by_wf[drop]["status"]) == ("deny", [], 7), by_wf[drop]

    m = metrics(gw)
    assert series(m, "flowgate_shadow_disagreements_total") == {
        frozenset({("action", START), ("enforced", "allow"), ("shadow", "deny")}): n_frozen
    }, series(m, "flowgate_shadow_disagreements_total")
    assert value(m, "flowgate_shadow_decisions_total", result="disagree") == n_frozen, series(m, "flowgate_shadow_decisions_total")
    assert value(m, "flowgate_shadow_decisions_total", result="agree") == len(agreeing), series(m, "flowgate_shadow_decisions_total")

    # An invalid shadow set is refused; enforcement and the last good shadow set stay.
    bad = gw.shadow_dir / "broken.cedar"
    replace_atomically(bad, BROKEN)
    assert wait_until(lambda: reloads(gw).get(("shadow", "failure")) == 1, 30, 0.05), reloads(gw)
    time.sleep(1.2)  # two more polls: not retried while unchanged
    m = metrics(gw)
    assert reloads(m) == {("shadow", "failure"): 1}, reloads(m)  # the enforced set was not reloaded
    assert info_versions(m) == {v1: 1} and info_versions(m, "flowgate_shadow_policy_info") == {vs: 1}, m
    assert f"{bad}:{BROKEN_LINE_OFFSET}:" in gw.stderr, gw.stderr[-3000:]
    more = [uid("frozen") for _ in range(2)]
    for wf_id in more:
        assert caller.start(wf_id, task_queue=FROZEN_QUEUE) == ("OK", "")
    drop2 = uid("drop")
    assert caller.start(drop2, workflow_type="DropDatabaseWorkflow")[0] == "PERMISSION_DENIED"
    recs = gw.wait_decisions(lambda d: d["resource"].get("workflow_id") in set(more + [drop2]), 3)
    assert len(recs) == 3, recs
    for rec in recs:
        if rec["resource"]["workflow_id"] in more:
            assert rec["decision"] == "allow" and rec["policy_version"] == v1 and rec.get("shadow") == expected_shadow, rec
        else:
            assert rec["decision"] == "deny" and "shadow" not in rec, rec
    m = metrics(gw)
    assert value(m, "flowgate_shadow_disagreements_total", action=START, enforced="allow", shadow="deny") == n_frozen + 2
    assert value(m, "flowgate_shadow_decisions_total", result="agree") == len(agreeing) + 1

    # Promote: the same files into policy.dir. The version does not depend on the directory.
    replace_atomically(gw.policy_dir / "shadow-freeze.cedar", SHADOW_FORBID)
    assert wait_until(lambda: info_versions(gw) == {vs: 1}, 30, 0.05), series(metrics(gw), "flowgate_policy_info")
    assert reloads(gw) == {("shadow", "failure"): 1, ("enforced", "success"): 1}, reloads(gw)
    promoted = uid("frozen")
    status, details = caller.start(promoted, task_queue=FROZEN_QUEUE)
    assert status == "PERMISSION_DENIED", (status, details)
    [rec] = gw.wait_decisions(lambda d: d["resource"].get("workflow_id") == promoted, 1)
    assert (rec["decision"], rec["reasons"], rec["policy_version"]) == ("deny", [SHADOW_FORBID_ID], vs), rec
    assert "shadow" not in rec, f"the promoted set and the shadow set agree: {rec}"
    assert decision_id_of(details) == rec["decision_id"]
    m = metrics(gw)
    assert value(m, "flowgate_shadow_disagreements_total", action=START, enforced="allow", shadow="deny") == n_frozen + 2
    assert value(m, "flowgate_shadow_decisions_total", result="agree") == len(agreeing) + 2
    caller.close()


# --------------------------------------------------------------------------------------------
# 4. explain


def test_explain_a_denial_and_a_described_call(gateway, okta):
    gw = gateway()
    v1 = validate(gw.policy_dir)
    token = deployer(okta, "alice")
    caller = Caller(gw.address, token)
    wf_id = uid("drop")
    status, details = caller.start(wf_id, workflow_type="DropDatabaseWorkflow")
    caller.close()
    assert status == "PERMISSION_DENIED", (status, details)
    decision_id = decision_id_of(details)
    assert details.endswith(f"(decision `{decision_id}`: `flowgate explain --admin <admin address> --decision {decision_id}`)")
    [rec] = gw.wait_decisions(lambda d: d["resource"].get("workflow_id") == wf_id, 1)
    assert rec["decision_id"] == decision_id and rec["decision"] == "deny" and rec["status"] == 7, rec

    # GET /explain/<id>: JSON.
    status, body = http(gw, "GET", f"/explain/{decision_id}")
    assert status == 200, body
    got = json.loads(body)
    assert got["denial"] == {"decision_id": decision_id, "ts": rec["ts"], "policy_version": v1, "reasons": []}, got["denial"]
    ex = got["explanation"]
    p = ex["principal"]
    assert (p["entity"], p["issuer"], p["sub"]) == ('Temporal::User::"okta:alice"', "okta", "alice"), p
    assert p["groups"] == ['Temporal::Group::"okta:deployers"'], p
    assert p["tags"]["sub"] == "alice" and p["tags"]["aud"] == "api://temporal", p["tags"]
    assert "grant" not in p or p["grant"] is None, p
    assert ex["action"] == 'Temporal::Action::"StartWorkflowExecution"' and ex["action_group"] == "write", ex
    assert ex["resource"]["uid"] == {"type": "Temporal::Workflow", "id": f"payments/{wf_id}"}, ex["resource"]
    assert ex["resource"]["attrs"] == {"id": wf_id, "namespace": "payments", "task_queue": PARKED_QUEUE,
                                       "type": "DropDatabaseWorkflow"}, ex["resource"]  # fmt: skip
    assert ex["context"] == {"method": f"/temporal.api.workflowservice.v1.WorkflowService/{START}"}, ex["context"]
    d = ex["decision"]
    assert (d["decision"], d["policies"], d["errors"], d["policy_version"]) == ("deny", [], [], v1), d
    # Every e2e policy whose action scope takes StartWorkflowExecution, and no other.
    assert sorted(d["considered"]) == [
        "e2e-deployers-start-deploy", "e2e-github-production-deploy", "e2e-minted-credentials-within-grant"
    ], d["considered"]  # fmt: skip
    assert not d.get("refused"), d
    assert "shadow" not in ex or ex["shadow"] is None, ex

    status, text = http(gw, "GET", f"/explain/{decision_id}?format=text")
    assert status == 200 and f"DENY under policy set {v1}" in text and 'Temporal::User::"okta:alice"' in text, text

    # The CLI, as the denial message says.
    out = flowgate("explain", "--admin", gw.admin, "--decision", decision_id)
    assert out.returncode == 0, out.stderr
    assert 'Temporal::User::"okta:alice"' in out.stdout and "DENY" in out.stdout, out.stdout
    assert "DropDatabaseWorkflow" in out.stdout and decision_id in out.stdout, out.stdout

    # An unknown id: 404, CLI exit 1.
    unknown = str(uuid.UUID(int=uuid.uuid4().int & ~(0xF << 76) | (7 << 76)))
    status, body = http(gw, "GET", f"/explain/{unknown}")
    assert status == 404 and unknown in body, (status, body)
    out = flowgate("explain", "--admin", gw.admin, "--decision", unknown)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)

    # POST /explain with the same real token and an allowed call.
    call = {"method": START, "namespace": "payments", "workflow_type": "DeployWorkflow", "workflow_id": uid("d"),
            "task_queue": PARKED_QUEUE}  # fmt: skip
    status, body = http(gw, "POST", "/explain", {"token": token, "call": call})
    assert status == 200, body
    ex = json.loads(body)
    assert ex["principal"]["entity"] == 'Temporal::User::"okta:alice"', ex["principal"]
    assert ex["resource"]["attrs"]["type"] == "DeployWorkflow", ex["resource"]
    d = ex["decision"]
    assert (d["decision"], d["policies"], d["policy_version"]) == ("allow", ["e2e-deployers-start-deploy"], v1), d
    # The same with a principal described by claims.
    status, body = http(gw, "POST", "/explain", {"principal": {"issuer": "okta", "claims": {"sub": "bob", "groups": ["deployers"]}}, "call": call})
    assert status == 200, body
    ex = json.loads(body)
    assert ex["principal"]["entity"] == 'Temporal::User::"okta:bob"' and ex["decision"]["decision"] == "allow", ex

    # A tampered token (payload changed, signature kept): 400 unauthenticated.
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["platform-admins"]
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    status, body = http(gw, "POST", "/explain", {"token": f"{head}.{forged_payload}.{sig}", "call": call})
    assert status == 400 and body.startswith("unauthenticated: "), (status, body)
    # A field the method does not carry: 400.
    signal_call = {"method": "SignalWorkflowExecution", "namespace": "payments", "workflow_id": "x",
                   "workflow_type": "DeployWorkflow", "signal_name": "approve"}  # fmt: skip
    status, body = http(gw, "POST", "/explain", {"token": token, "call": signal_call})
    assert status == 400 and "workflow_type" in body, (status, body)

    # The CLI against the gateway's policies with a token from the environment.
    out = flowgate("explain", "--admin", gw.admin, "--token-env", "E2E_EXPLAIN_TOKEN", "--method", START,
                   "--namespace", "payments", "--workflow-type", "DeployWorkflow", "--workflow-id", "x",
                   "--task-queue", PARKED_QUEUE, env={"E2E_EXPLAIN_TOKEN": token})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ALLOW" in out.stdout and "e2e-deployers-start-deploy" in out.stdout, out.stdout

    # The CLI with a tampered token: the gateway's 400 and exit 1.
    out = flowgate("explain", "--admin", gw.admin, "--token-env", "E2E_EXPLAIN_TOKEN", "--method", START,
                   "--namespace", "payments", env={"E2E_EXPLAIN_TOKEN": f"{head}.{forged_payload}.{sig}"})  # fmt: skip
    assert out.returncode == 1 and "unauthenticated: " in out.stderr, (out.returncode, out.stdout, out.stderr)

    # Explaining wrote no decision records.
    assert len(gw.decisions()) == 1, gw.decisions()


def test_every_permission_denied_names_its_decision(gateway, okta):
    """A task-token call whose token names no namespace is PERMISSION_DENIED before any policy;
    its message, like every PERMISSION_DENIED, ends with the decision id of its record."""
    gw = gateway()
    caller = Caller(gw.address, deployer(okta, "alice"))
    forged = rr.RespondActivityTaskCompletedRequest(task_token=b"\x0a\x24" + b"0" * 36, identity="e2e")
    status, details = caller._call(caller.stub.RespondActivityTaskCompleted, forged)
    caller.close()
    assert status == "PERMISSION_DENIED", (status, details)
    [rec] = gw.wait_decisions(lambda d: d["action"] == "RespondActivityTaskCompleted", 1)
    assert rec["decision"] == "deny" and rec["status"] == 7, rec
    assert decision_id_of(details) == rec["decision_id"], (details, rec)
    status, body = http(gw, "GET", f"/explain/{rec['decision_id']}")
    assert status == 200, (status, body)
    verdict = json.loads(body)["explanation"]["decision"]
    assert verdict["decision"] == "deny", verdict
    assert verdict["refused"] == "`RespondActivityTaskCompleted` names no namespace", verdict


# --------------------------------------------------------------------------------------------
# 5. a Kubernetes ConfigMap volume: files are symlinks into `..data`, itself a symlink swapped


def test_configmap_symlink_swap_is_reloaded(gateway, okta):
    gw = gateway(policy_extra='watch_interval = "500ms"')
    d = gw.policy_dir
    v1 = validate(d)
    first = d / "..2026_11_23_01"
    first.mkdir()
    names = sorted(f.name for f in d.iterdir() if f.is_file())
    for name in names:
        os.replace(d / name, first / name)
    os.symlink(first.name, d / "..data")
    for name in names:
        os.symlink(f"..data/{name}", d / name)
    time.sleep(1.5)  # the same contents behind symlinks: nothing to reload
    assert reloads(gw) == {} and info_versions(gw) == {v1: 1}, (reloads(gw), info_versions(gw))

    second = d / "..2026_11_23_02"
    shutil.copytree(first, second)
    (second / "deployers.cedar").write_text((first / "deployers.cedar").read_text() + FREEZE)
    v2 = validate(second)
    os.symlink(second.name, d / "..data_tmp")
    os.replace(d / "..data_tmp", d / "..data")  # what kubelet does
    assert wait_until(lambda: info_versions(gw) == {v2: 1}, 30, 0.05), (reloads(gw), info_versions(gw))
    assert reloads(gw) == {("enforced", "success"): 1}, reloads(gw)
    caller = Caller(gw.address, deployer(okta, "alice"))
    wf_id = uid("cm")
    status, details = caller.start(wf_id)
    caller.close()
    assert status == "PERMISSION_DENIED", (status, details)
    [rec] = gw.wait_decisions(lambda r: r["resource"].get("workflow_id") == wf_id, 1)
    assert (rec["policy_version"], rec["reasons"]) == (v2, [FREEZE_ID]), rec
