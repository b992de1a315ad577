"""One decision record per decision, with the documented fields; admin endpoints answer."""

import time
from datetime import datetime

from e2e_util import PARKED_QUEUE, check_record_shape, connect, deployer, expect_rpc_error, run, uid
from e2e_workflows import DeployWorkflow, DropDatabaseWorkflow
from temporalio.service import RPCStatusCode

START = "StartWorkflowExecution"


def test_one_record_per_decision(gateway, okta):
    gw = gateway()
    allowed, denied_type, denied_ns, unauth = [uid("ok") for _ in range(3)], [uid("type") for _ in range(2)], uid("ns"), uid("anon")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "carol"))
        for wf_id in allowed:
            await client.start_workflow(DeployWorkflow.run, "x", id=wf_id, task_queue=PARKED_QUEUE)
        for wf_id in denied_type:
            await expect_rpc_error(
                client.start_workflow(DropDatabaseWorkflow.run, "x", id=wf_id, task_queue=PARKED_QUEUE),
                RPCStatusCode.PERMISSION_DENIED,
            )
        other = await connect(gw.address, deployer(okta, "carol"), namespace="analytics")
        await expect_rpc_error(
            other.start_workflow(DeployWorkflow.run, "x", id=denied_ns, task_queue=PARKED_QUEUE),
            RPCStatusCode.PERMISSION_DENIED,
        )
        anon = await connect(gw.address, None)
        await expect_rpc_error(
            anon.start_workflow(DeployWorkflow.run, "x", id=unauth, task_queue=PARKED_QUEUE),
            RPCStatusCode.UNAUTHENTICATED,
        )

    t0 = datetime.now().astimezone()
    run(scenario())
    gw.wait_decisions(lambda d: d.get("action") == START, 7)
    time.sleep(0.3)  # anything extra would show up now
    records = gw.decisions()
    starts = [d for d in records if d.get("action") == START]
    assert len(starts) == 7, f"expected 7 StartWorkflowExecution records, got {len(starts)}: {starts}"
    for rec in records:
        check_record_shape(rec)
    ids = [d["decision_id"] for d in records]
    assert len(ids) == len(set(ids)), "decision_id repeats"
    assert len({d["policy_version"] for d in records}) == 1, "policy_version changed without a reload"

    by_id = {(d["resource"] or {}).get("workflow_id"): d for d in starts}
    for wf_id in allowed:
        rec = by_id[wf_id]
        assert rec["decision"] == "allow" and rec["reasons"] == ["e2e-deployers-start-deploy"], rec
        assert rec["principal"]["id"] == "okta:carol" and rec["principal"]["type"] == "User", rec
        assert rec["resource"]["namespace"] == "payments" and rec["resource"]["workflow_type"] == "DeployWorkflow", rec
        assert rec.get("status") is None, rec
        ts = datetime.fromisoformat(rec["ts"].replace("Z", "+00:00"))
        assert abs((ts - t0).total_seconds()) < 60, rec["ts"]
    for wf_id in denied_type:
        rec = by_id[wf_id]
        assert rec["decision"] == "deny" and rec["status"] == 7, rec
        assert rec["resource"]["workflow_type"] == "DropDatabaseWorkflow", rec
        assert not any(r.startswith("e2e-") for r in rec["reasons"]), f"a deny names a permit policy: {rec}"
    rec = by_id[denied_ns]
    assert rec["decision"] == "deny" and rec["status"] == 7 and rec["resource"]["namespace"] == "analytics", rec
    unauth_recs = [d for d in starts if d.get("status") == 16]
    assert len(unauth_recs) == 1 and unauth_recs[0]["principal"] is None, unauth_recs
    assert unauth_recs[0]["reasons"][0].startswith("unauthenticated: "), unauth_recs
    counts = {k: sum(1 for d in starts if d["decision"] == k) for k in ("allow", "deny")}
    assert counts == {"allow": 3, "deny": 4}, counts


def test_admin_endpoints(gateway, okta):
    gw = gateway()
    run(_one_start(gw, okta))
    status, _ = gw.http_get("/healthz")
    assert status == 200
    status, _ = gw.http_get("/readyz")
    assert status == 200
    status, text = gw.http_get("/metrics")
    assert status == 200
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples, f"/metrics has no samples:\n{text[:2000]}"
    assert any("decision" in line or "request" in line for line in samples), text[:3000]


async def _one_start(gw, okta):
    client = await connect(gw.address, deployer(okta, "alice"))
    await client.start_workflow(DeployWorkflow.run, "x", id=uid("m"), task_queue=PARKED_QUEUE)


def test_sigterm_stops_cleanly(gateway):
    gw = gateway()
    rc = gw.stop()
    assert rc == 0, f"flowgate exited with {rc} on SIGTERM; stderr:\n{gw.stderr[-3000:]}"
