"""deploy/monitoring: the alert rules (promtool check and the rules' own unit tests), and the
Grafana dashboard (loaded by Grafana's dashboard model, every query valid PromQL, every metric it
or an alert names served by a real flowgate)."""

import json
import re
import shutil
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import REPO
from e2e_util import PARKED_QUEUE, connect, deployer, run, uid
from e2e_workflows import DeployWorkflow

MONITORING = REPO / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\b((?:flowgate|process)_[a-z_]+)\b")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("`promtool` is missing: `bash scripts/setup.sh test` installs it (Debian: prometheus)", pytrace=False)
    return subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    import yaml

    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_alert_rules_check_and_pass_their_unit_tests():
    check = promtool("check", "rules", "alerts.yaml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout, check.stdout
    tests = promtool("test", "rules", "alerts.test.yaml")
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_the_dashboard_is_one_grafana_can_load_with_valid_queries(tmp_path):
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    document = json.loads(DASHBOARD.read_text())
    # Grafana's model drops what it does not know: a round trip that loses a key found a typo
    # or a field this Grafana does not have.
    loaded = json.loads(json.dumps(Dashboard.from_json(document), cls=JSONEncoder))
    dropped = []

    def compare(original, kept, path):
        if isinstance(original, dict):
            for key, value in original.items():
                if key not in kept:
                    dropped.append(f"{path}/{key}")
                else:
                    compare(value, kept[key], f"{path}/{key}")
        elif isinstance(original, list):
            for i, (a, b) in enumerate(zip(original, kept, strict=True)):
                compare(a, b, f"{path}[{i}]")

    compare(document, loaded, "")
    assert dropped == [], f"keys Grafana's dashboard model does not know: {dropped}"

    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]

    # PromQL: every query, with Grafana's variables filled in, as a recording rule promtool parses.
    queries = dashboard_queries()
    assert len(queries) >= 25
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": q.replace("$instance", ".*").replace("$__rate_interval", "5m")}
        for i, q in enumerate(queries)]}]}  # fmt: skip
    (tmp_path / "dashboard-rules.yaml").write_text(json.dumps(rules))
    check = promtool("check", "rules", "dashboard-rules.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_metric_the_dashboard_and_alerts_name_is_served(gateway, okta):
    gw = gateway(extra='[metrics]\nnamespaces = ["payments"]\n')

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"))
        await client.start_workflow(DeployWorkflow.run, "api", id=uid("mon"), task_queue=PARKED_QUEUE,
                                    execution_timeout=timedelta(seconds=30))  # fmt: skip

    run(scenario())
    with urllib.request.urlopen(gw.admin + "/metrics", timeout=10) as r:
        served_text = r.read().decode()
    # Families as the classic format names them (# TYPE lines), with the sample suffixes of
    # histograms.
    served = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", served_text, re.M):
        served.add(name)
        if kind == "histogram":
            served |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    named = {m for q in dashboard_queries() + alert_queries() for m in METRIC.findall(q)}
    assert named, "the queries name metrics"
    # A labelled family has no series (and is not exposed) until its first sample: those must
    # at least be registered under that name (src/telemetry.rs).
    telemetry = (REPO / "src" / "telemetry.rs").read_text()
    registered = set(re.findall(r'register\(\s*"([a-z_]+)"', telemetry))

    def declared(metric: str) -> bool:
        return metric.removeprefix("flowgate_").removesuffix("_total") in registered

    missing = sorted(m for m in named - served if not declared(m))
    assert missing == [], f"named but neither served nor registered: {missing}"
    assert len(named & served) >= 12, sorted(named & served)
