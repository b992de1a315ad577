"""Temporal's HTTP API through flowgate (`[http_api]`), with curl, against the dev server.

flowgate serves the API on its own listener: it reads each request into the gRPC call it
stands for and sends that through the same phases as a gRPC client's call (authentication,
Cedar, records, stamping) to Temporal's gRPC port. So:

* a CI job with curl and its OIDC token starts an allowed workflow and is refused a forbidden
  one; each is one decision record with `http: {method, route}`;
* what flowgate answers is what Temporal's own HTTP port answers for the same reads;
* what issue 6 closed for gRPC stays closed here: an implied terminate (a conflict policy in
  any spelling), an encoded `/` that Temporal would route elsewhere, the method-override
  header, `Grpc-Metadata-Authorization`, another namespace in the body than in the path;
* bad input gets Temporal's error shape: unauthenticated 401, unknown route 404, wrong method
  501, malformed JSON 400, missing workflow 404, duplicate start 409.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
from e2e_util import PARKED_QUEUE, by, check_record_shape, connect, deployer, github_claims, run, uid
from temporalio.client import Client

START = "StartWorkflowExecution"


@pytest.fixture
def gw(gateway):
    return gateway(extra="[http_api]\n")


def curl(url: str, *args: str) -> tuple[int, dict]:
    """curl as a CI job runs it: the status code and the JSON answer."""
    out = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, url], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    body, _, status = out.stdout.rpartition("\n")
    return int(status), json.loads(body or "{}")


def request(url: str, method: str = "GET", body: dict | bytes | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                        **(headers or {})})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read() or b"{}")


def start_body(workflow_type: str, **extra) -> dict:
    return {"workflowType": {"name": workflow_type}, "taskQueue": {"name": PARKED_QUEUE}, "input": ["api"], **extra}


def describe(temporal: str, wf_id: str):
    async def go():
        client = await Client.connect(temporal, namespace="payments")
        return await client.get_workflow_handle(wf_id).describe()

    return run(go())


def exists(temporal: str, wf_id: str) -> bool:
    try:
        describe(temporal, wf_id)
        return True
    except Exception as e:  # noqa: BLE001 - RPCError NOT_FOUND
        assert "not found" in str(e).lower(), e
        return False


def test_curl_starts_an_allowed_workflow_and_is_refused_a_forbidden_one(gw, github, temporal):
    token = github.mint(github_claims())
    allowed, forbidden = uid("http-deploy"), uid("http-drop")
    base = f"http://{gw.address}/api/v1/namespaces/payments/workflows"
    auth = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]
    status, answer = curl(f"{base}/{allowed}", "-X", "POST", *auth, "-d", json.dumps(start_body("DeployWorkflow")))
    assert status == 200 and answer.get("runId"), answer
    desc = describe(temporal, allowed)
    assert desc.workflow_type == "DeployWorkflow" and desc.run_id == answer["runId"]

    status, answer = curl(f"{base}/{forbidden}", "-X", "POST", *auth, "-d",
                          json.dumps(start_body("DropDatabaseWorkflow")))  # fmt: skip
    assert status == 403 and answer["code"] == 7, answer
    assert not exists(temporal, forbidden), "the forbidden start never reached Temporal"

    [ok] = gw.wait_decisions(by(START, workflow_id=allowed), 1)
    [no] = gw.wait_decisions(by(START, workflow_id=forbidden), 1)
    for rec in (ok, no):
        check_record_shape(rec)
        assert rec["http"] == {"method": "POST", "route": "/api/v1/namespaces/{namespace}/workflows/{workflow_id}"}, rec
        assert rec["principal"]["id"].startswith("github:repo:acme/payments"), rec
    assert ok["decision"] == "allow" and ok["resource"]["workflow_type"] == "DeployWorkflow", ok
    assert no["decision"] == "deny" and no["resource"]["workflow_type"] == "DropDatabaseWorkflow", no
    assert no["decision_id"] in answer["message"], answer
    [outcome] = [o for o in gw.outcomes() if o["decision_id"] == ok["decision_id"]]
    assert outcome["run_id"] == desc.run_id, outcome


def test_reads_answer_as_temporals_own_http_port(gw, okta, temporal):
    wf_id = uid("http-read")

    async def start():
        client = await connect(gw.address, deployer(okta, "alice"))
        await client.start_workflow("DeployWorkflow", "api", id=wf_id, task_queue=PARKED_QUEUE)

    run(start())
    auth = {"Authorization": f"Bearer {deployer(okta, 'alice')}"}
    for path in (f"/api/v1/namespaces/payments/workflows/{wf_id}/history",
                 f"/namespaces/payments/workflows/{wf_id}/history?noPayloadShorthand=true",
                 f"/api/v1/namespaces/payments/workflows/{wf_id}/history?pretty"):  # fmt: skip
        via_flowgate = request(f"http://{gw.address}{path}", headers=auth)
        direct = request(f"http://{temporal.http}{path}")
        assert via_flowgate[0] == direct[0] == 200, (via_flowgate, direct)
        assert via_flowgate[2] == direct[2], f"{path}: flowgate and Temporal answer differently"
    events = via_flowgate[2]["history"]["events"]
    assert events[0]["workflowExecutionStartedEventAttributes"]["input"] == ["api"], "payload shorthand"
    [rec] = gw.wait_decisions(by("GetWorkflowExecutionHistory", principal="okta:alice"), 3)[:1]
    assert rec["decision"] == "allow" and rec["http"]["method"] == "GET", rec


def test_what_issue_6_closed_stays_closed(gw, okta, temporal):
    token = deployer(okta, "alice")
    auth = {"Authorization": f"Bearer {token}"}
    base = f"http://{gw.address}/api/v1/namespaces/payments/workflows"

    # A conflict policy that terminates the running workflow asks for TerminateWorkflowExecution,
    # in each of the spellings Temporal's JSON reader accepts.
    running = uid("http-running")
    assert request(f"{base}/{running}", "POST", start_body("DeployWorkflow"), auth)[0] == 200
    for spelling in ("TerminateExisting", "WORKFLOW_ID_CONFLICT_POLICY_TERMINATE_EXISTING", 3):
        status, _, answer = request(f"{base}/{running}", "POST",
                                    start_body("DeployWorkflow", workflowIdConflictPolicy=spelling), auth)  # fmt: skip
        assert status == 403 and "TerminateWorkflowExecution" in answer["message"], (spelling, answer)
    assert describe(temporal, running).status.name == "RUNNING"

    # An encoded `/` would turn a start into another route at Temporal: refused.
    status, _, answer = request(f"{base}/wf%2Fsignal%2Fsneaky", "POST", {"signalName": "x"}, auth)
    assert status == 400 and "%2F" in answer["message"], answer
    # The method override Temporal honours (a POST run as a DELETE): refused.
    status, _, answer = request(f"{base}/{running}", "POST", start_body("DeployWorkflow"),
                                {**auth, "X-HTTP-Method-Override": "DELETE"})  # fmt: skip
    assert status == 400, answer
    # `Grpc-Metadata-Authorization` is not an `authorization`.
    status, headers, answer = request(f"{base}/{uid('meta')}", "POST", start_body("DeployWorkflow"),
                                      {"Grpc-Metadata-Authorization": f"Bearer {token}"})  # fmt: skip
    assert status == 401 and answer["code"] == 16 and headers.get("www-authenticate") == "Bearer", answer
    # The path names the namespace: a body naming another is overwritten, as Temporal does.
    other = uid("http-ns")
    status, _, answer = request(f"{base}/{other}", "POST", start_body("DeployWorkflow", namespace="analytics"), auth)
    assert status == 200, answer
    [rec] = gw.wait_decisions(by(START, workflow_id=other), 1)
    assert rec["resource"]["namespace"] == "payments", rec
    assert describe(temporal, other).workflow_type == "DeployWorkflow"


def test_bad_requests_get_temporals_error_shape(gw, okta):
    auth = {"Authorization": f"Bearer {deployer(okta, 'alice')}"}
    root = f"http://{gw.address}"
    cases = [
        (f"{root}/api/v1/namespaces/payments/workflows/x", "POST", start_body("DeployWorkflow"), {}, 401, 16),
        (f"{root}/api/v1/no-such-route", "GET", None, auth, 404, 5),
        (f"{root}/api/v1/namespaces/payments/workflows/x/history", "PUT", None, auth, 501, 12),
        (f"{root}/api/v1/namespaces/payments/workflows/x", "POST", b'{"workflowType": ', auth, 400, 3),
        (f"{root}/api/v1/namespaces/payments/workflows/x", "POST",
         b'{"workflowType":{"name":"DeployWorkflow"},"workflow_type":{"name":"DeployWorkflow"}}', auth, 400, 3),
        (f"{root}/api/v1/namespaces/payments/workflows/{uid('missing')}", "GET", None, auth, 404, 5),
    ]  # fmt: skip
    for url, method, body, headers, status, code in cases:
        got, _, answer = request(url, method, body, headers)
        assert (got, answer.get("code")) == (status, code), (url, method, body, answer)
        assert isinstance(answer.get("message"), str), answer

    wf_id = uid("http-twice")
    url = f"{root}/api/v1/namespaces/payments/workflows/{wf_id}"
    assert request(url, "POST", start_body("DeployWorkflow"), auth)[0] == 200
    status, _, answer = request(url, "POST", start_body("DeployWorkflow"), auth)
    assert status == 409 and answer["code"] == 6, answer
    assert answer["details"][0]["@type"].endswith("WorkflowExecutionAlreadyStartedFailure"), answer


def test_what_json_would_cost_is_bounded_before_it_is_parsed(gw, okta, temporal):
    """JSON parsed takes far more memory than its text: the door counts a body's values before
    parsing (more than 65 536 is a 400, nothing allocated for them) and never reads the body of
    a route that has none, so a GET with a body still gets Temporal's answer."""
    auth = {"Authorization": f"Bearer {deployer(okta, 'alice')}"}
    root = f"http://{gw.address}/api/v1/namespaces/payments"
    wf_id = uid("http-values")
    many = b'{"workflowType":{"name":"DeployWorkflow"},"taskQueue":{"name":"%s"},"input":[%s0]}' % (
        PARKED_QUEUE.encode(), b"0," * 70_000)
    status, _, answer = request(f"{root}/workflows/{wf_id}", "POST", many, auth)
    assert (status, answer["code"]) == (400, 3), answer
    assert "more than 65536 values" in answer["message"], answer
    assert not exists(temporal, wf_id)

    # The same payloads, fewer of them: started, each value a payload of its own.
    fewer = many.replace(b"0," * 70_000, b"0," * 60_000)
    status, _, answer = request(f"{root}/workflows/{wf_id}", "POST", fewer, auth)
    assert status == 200 and answer.get("runId"), answer
    assert describe(temporal, wf_id).workflow_type == "DeployWorkflow"

    # A body on a GET is not read: the answer is Temporal's, the body ignored.
    status, _, answer = request(f"{root}/workflows/{wf_id}", "GET", b"[" * 10_000, auth)
    assert status == 200 and answer["workflowExecutionInfo"]["execution"]["workflowId"] == wf_id, answer
