"""Temporal's Web UI behind flowgate, as the person logged in to it.

Temporal's own UI server (ui-server v2.58.1 with its web assets, built by `scripts/setup.sh
test`) logs people in with the test identity provider (oidc-provider; the UI server is a
confidential client with a secret and no PKCE, `IDP_UI_CLIENT_ID`), and its gRPC connection
goes to flowgate instead of Temporal. The browser (a cookie jar and redirects, doing what the
UI's page does: `Authorization: Bearer <access token>` from the `user` cookies) calls the UI
server's API; the UI server turns each call into gRPC with the person's access token in
`authorization`; flowgate authenticates it, authorizes the call as that person and records it.

* alice (group `deployers`) lists the namespaces and the workflows of `payments`, and reads one;
  each call is recorded as `people:alice`;
* a signal, which no policy permits her, is refused with flowgate's decision id in the UI's
  answer; bob (no group) is refused everything;
* the UI server checks only the ID token: an access token that is not the IdP's is refused by
  flowgate, not by the UI server;
* a second `authorization` a browser adds through grpc-gateway's `Grpc-Metadata-Authorization`
  is refused, not resolved in random order.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from conftest import free_port
from e2e_idp import people_issuer, start_idp, stop_idp
from e2e_util import PARKED_QUEUE, by, run, stop_group, uid
from temporalio.client import Client

UI_CLIENT_ID, UI_CLIENT_SECRET = "temporal-web-ui", "web-ui-secret-for-tests"

POLICY = """
// The Web UI's people: deployers read everything in payments, and see the namespace list and
// the cluster's description the UI shows on every page.
@id("ui-deployers-read")
permit (principal in Temporal::Group::"people:deployers", action in Temporal::Action::"read",
        resource in Temporal::Namespace::"payments");

@id("ui-deployers-list")
permit (principal in Temporal::Group::"people:deployers",
        action in [Temporal::Action::"ListNamespaces", Temporal::Action::"GetClusterInfo"], resource);
"""


def ui_server_binary() -> Path:
    cache = os.environ.get("FLOWGATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "flowgate"
    )
    binary = Path(cache) / "bin" / "temporal-ui-server"
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no Temporal UI server at {binary}: `bash scripts/setup.sh test` builds it", pytrace=False)
    return binary


class Browser:
    """A cookie jar and redirects followed by hand: a browser without JavaScript. `api` sends
    what the UI's page sends on each API call: the access and ID tokens from the `user` cookies,
    and the CSRF token on writes."""

    def __init__(self, base: str):
        self.base = base
        self.jar = CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args, **kwargs):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(url, data=data, method=method, headers={"Accept": "application/json", **(headers or {})})
        try:
            with self.opener.open(request, timeout=30) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def login(self, account: str) -> None:
        """The UI's login button, the IdP's login and consent forms, the UI's callback."""
        self.request(self.base + "/")  # the page: sets the `_csrf` cookie
        url, method, data = self.base + "/auth/sso?returnUrl=%2F", "GET", None
        for _ in range(20):
            status, headers, _ = self.request(url, method, data)
            location = headers.get("Location")
            if not (300 <= status < 400 and location):
                break
            url, method, data = urllib.parse.urljoin(url, location), "GET", None
            if "/interaction/" in urllib.parse.urlparse(url).path:  # the IdP's forms, as posted
                method, data = "POST", urllib.parse.urlencode({"account": account, "decision": "approve"}).encode()
        assert self.user().get("AccessToken"), f"no session after the login of {account}: {status} {url}"

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def user(self) -> dict:
        parts, i = [], 0
        while (part := self.cookie(f"user{i}")) is not None:
            parts.append(part)
            i += 1
        return json.loads(base64.b64decode("".join(parts))) if parts else {}

    def api(self, path: str, method: str = "GET", body: dict | None = None, access_token: str | None = None,
            extra: dict | None = None) -> tuple[int, dict]:  # fmt: skip
        user = self.user()
        headers = {"Authorization": "Bearer " + (access_token or user["AccessToken"]),
                   "Authorization-Extras": user["IDToken"]}  # fmt: skip
        if method != "GET":
            headers.update({"X-CSRF-TOKEN": self.cookie("_csrf"), "Content-Type": "application/json"})
        headers.update(extra or {})
        data = json.dumps(body).encode() if body is not None else None
        status, _, answer = self.request(self.base + path, method, data, headers)
        return status, json.loads(answer or b"{}")


@pytest.fixture(scope="module")
def ui(tmp_path_factory, temporal, bare_gateway):
    """(UI base URL, flowgate): the IdP with the UI's client, flowgate trusting it, the UI server
    pointed at flowgate."""
    work = tmp_path_factory.mktemp("webui")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp = start_idp(work, IDP_UI_CLIENT_ID=UI_CLIENT_ID, IDP_UI_CLIENT_SECRET=UI_CLIENT_SECRET,
                    IDP_UI_REDIRECT_URIS=f"{base}/auth/sso/callback", IDP_ACCESS_TOKEN_TTL="600")  # fmt: skip
    gw = bare_gateway(upstream=f"http://{temporal}", extra=people_issuer(idp.issuer), policies={"people.cedar": POLICY})
    config = work / "config"
    config.mkdir()
    # The UI server's own config file (its keys; `--env test` reads config/test.yaml).
    (config / "test.yaml").write_text(json.dumps({
        "temporalGrpcAddress": gw.address, "port": port, "enableUi": True, "disableNewsFetch": True,
        "defaultNamespace": "payments",
        "cors": {"cookieInsecure": True, "allowOrigins": [base]},  # plain http on loopback
        "auth": {"enabled": True, "providers": [{
            "label": "test", "type": "oidc", "providerUrl": idp.issuer, "clientId": UI_CLIENT_ID,
            "clientSecret": UI_CLIENT_SECRET, "callbackUrl": f"{base}/auth/sso/callback",
            "scopes": ["openid", "profile", "email", "offline_access"],
        }]},
    }))  # fmt: skip
    log = open(work / "ui-server.log", "wb")
    proc = subprocess.Popen([str(ui_server_binary()), "--root", str(work), "--config", "config", "--env", "test",
                             "start"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, f"the UI server exited: {(work / 'ui-server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the UI server did not start"
            time.sleep(0.1)
        yield base, gw
    finally:
        stop_group(proc)
        stop_idp(idp)


@pytest.fixture(scope="module")
def workflow(temporal) -> str:
    """A workflow in payments for the UI to show (started straight at Temporal)."""
    wf_id = uid("ui-shown")

    async def start():
        client = await Client.connect(temporal, namespace="payments")
        await client.start_workflow("DeployWorkflow", "api", id=wf_id, task_queue=PARKED_QUEUE)

    run(start())
    return wf_id


def test_the_ui_serves_its_page(ui):
    base, _ = ui
    status, headers, body = Browser(base).request(base + "/", headers={"Accept": "text/html"})
    assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
    assert b"_app/immutable" in body, "the UI's own page, with its scripts"


def test_a_person_reads_through_the_ui_as_themselves(ui, workflow):
    base, gw = ui
    alice = Browser(base)
    alice.login("alice")
    status, answer = alice.api("/api/v1/namespaces")
    assert status == 200, answer
    assert "payments" in {n["namespaceInfo"]["name"] for n in answer["namespaces"]}
    query = urllib.parse.quote(f"WorkflowId = '{workflow}'")
    status, answer = alice.api(f"/api/v1/namespaces/payments/workflows?query={query}")
    assert status == 200, answer
    assert [e["execution"]["workflowId"] for e in answer["executions"]] == [workflow], answer
    status, answer = alice.api(f"/api/v1/namespaces/payments/workflows/{workflow}")
    assert status == 200 and answer["workflowExecutionInfo"]["type"]["name"] == "DeployWorkflow", answer
    for action in ("ListNamespaces", "ListWorkflowExecutions", "DescribeWorkflowExecution"):
        [rec] = gw.wait_decisions(by(action, principal="people:alice"), 1)
        assert rec["decision"] == "allow" and rec["principal"]["type"] == "User", rec


def test_what_no_policy_permits_is_refused_with_the_decision(ui, workflow):
    base, gw = ui
    alice = Browser(base)
    alice.login("alice")
    status, answer = alice.api(f"/api/v1/namespaces/payments/workflows/{workflow}/signal/approve", "POST", {})
    assert status == 403 and answer["code"] == 7, answer
    [rec] = gw.wait_decisions(by("SignalWorkflowExecution", principal="people:alice"), 1)
    assert rec["decision"] == "deny" and rec["decision_id"] in answer["message"], (rec, answer)

    bob = Browser(base)
    bob.login("bob")
    status, answer = bob.api("/api/v1/namespaces/payments/workflows")
    assert status == 403 and answer["code"] == 7, answer
    [rec] = gw.wait_decisions(by("ListWorkflowExecutions", principal="people:bob"), 1)
    assert rec["decision"] == "deny", rec


def test_flowgate_checks_the_access_token_the_ui_server_does_not(ui):
    base, gw = ui
    alice = Browser(base)
    alice.login("alice")
    header, payload, signature = alice.user()["AccessToken"].split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["deployers", "admins"]
    forged = ".".join([header, base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode(), signature])
    status, answer = alice.api("/api/v1/namespaces/payments/workflows", access_token=forged)
    assert status == 401 and answer["code"] == 16 and "signature" in answer["message"], answer

    # Without a login the UI server answers itself; nothing reaches flowgate.
    before = len(gw.decisions())
    status, _, _ = Browser(base).request(base + "/api/v1/namespaces/payments/workflows")
    assert status == 401
    assert len(gw.decisions()) == before


def test_a_second_authorization_from_the_browser_is_refused(ui):
    base, gw = ui
    bob = Browser(base)
    bob.login("bob")
    alice = Browser(base)
    alice.login("alice")
    extra = {"Grpc-Metadata-Authorization": "Bearer " + bob.user()["AccessToken"]}
    for _ in range(5):  # grpc-gateway orders the two at random: every order is refused
        status, answer = alice.api("/api/v1/namespaces/payments/workflows", extra=extra)
        assert status == 401 and "more than one `authorization` header" in answer["message"], answer
