"""`flowgate login` for people, end to end: a real certified OpenID provider (panva's
oidc-provider, tests/e2e/idp, installed by `scripts/setup.sh test` with npm ci) whose consent
step the test drives over HTTP, the gateway naming it (`login` on an issuer), and the
`temporal` CLI going through the gateway with the login's token and no token in sight.

The device flow and the authorization code flow with PKCE; refused consent, an expired device
code, an IdP or a gateway that cannot be reached (one line each); `token print` refreshing;
`logout` revoking the refresh token at the IdP and deleting what was stored."""

import json
import os
import re
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import flowgate_bin, free_port
from e2e_idp import PEOPLE_POLICY, people_issuer, start_idp, stop_idp
from e2e_util import PARKED_QUEUE, by, temporal_bin, uid


@pytest.fixture(scope="module")
def idp(tmp_path_factory):
    # A polling interval of 1 s (the device flow's default is 5 s), tokens of 10 minutes.
    i = start_idp(tmp_path_factory.mktemp("idp"), IDP_DEVICE_INTERVAL="1", IDP_ACCESS_TOKEN_TTL="600")
    yield i
    stop_idp(i)


@pytest.fixture
def people_gateway(gateway, idp):
    return gateway(extra=people_issuer(idp.issuer), policies={"people.cedar": PEOPLE_POLICY})


@pytest.fixture
def home(tmp_path) -> dict:
    """An environment with a home of its own: where the login and the Temporal CLI's env
    file go."""
    h = tmp_path / "home"
    h.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "DISPLAY", "WAYLAND_DISPLAY")}
    return {**env, "HOME": str(h)}


def login(home: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(flowgate_bin()), "login", *args], env=home, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def read_until(proc: subprocess.Popen, pattern: str, timeout: float = 30) -> re.Match:
    """Reads the process's stderr line by line until `pattern` matches one."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    proc.kill()
    pytest.fail(f"flowgate login never printed /{pattern}/; it printed: {''.join(seen)}{proc.stderr.read()}")


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    try:
        _, rest = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, rest = proc.communicate()
        pytest.fail(f"flowgate login did not finish: {rest}")
    return proc.returncode, rest


def temporal(home: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([temporal_bin(), *args], env=home, capture_output=True, text=True, timeout=60)


def stored_login(home: dict, gw) -> tuple[Path, dict]:
    [path] = (Path(home["HOME"]) / ".config" / "flowgate" / "logins").glob("*.json")
    return path, json.loads(path.read_text())


def test_device_flow_then_the_temporal_cli_goes_through_the_gateway_as_the_person(people_gateway, idp, home):
    gw = people_gateway
    proc = login(home, "--address", gw.address, "--flow", "device", "--temporal-env", "fg", "--namespace", "payments")
    code = read_until(proc, r"enter the code (\S+)").group(1)
    status, body = idp.post("/test/approve", {"user_code": code, "account": "alice", "decision": "approve"})
    assert status == 200 and body["result"] == "approved", body
    rc, rest = finish(proc)
    assert rc == 0, rest
    assert "logged in to http://" + gw.address + " as alice@example.com" in rest, rest

    path, stored = stored_login(home, gw)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stored["issuer"] == idp.issuer and stored["refresh_token"], stored
    env_file = Path(home["HOME"]) / ".config" / "temporalio" / "temporal.yaml"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stored["access_token"] in env_file.read_text()

    # The Temporal CLI, with the environment only: allowed, then refused.
    wf_id = uid("login-device")
    done = temporal(home, "workflow", "start", "--env", "fg", "--type", "DeployWorkflow", "--task-queue",
                    PARKED_QUEUE, "--workflow-id", wf_id, "--execution-timeout", "30s")  # fmt: skip
    assert done.returncode == 0, done.stderr
    [record] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
    assert record["decision"] == "allow" and record["principal"]["id"].startswith("people:"), record
    assert record["principal"]["type"] == "User"
    refused = temporal(home, "workflow", "start", "--env", "fg", "--type", "DropTablesWorkflow", "--task-queue",
                       PARKED_QUEUE, "--workflow-id", uid("login-refused"))  # fmt: skip
    assert refused.returncode != 0 and "permission denied" in refused.stderr.lower(), refused.stderr

    # token print gives the stored token while it is fresh.
    printed = subprocess.run([str(flowgate_bin()), "token", "print", "--address", gw.address], env=home,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    assert printed.returncode == 0 and printed.stdout.strip() == stored["access_token"], printed.stderr


def test_browser_flow_with_pkce_and_a_loopback_redirect(people_gateway, idp, home):
    gw = people_gateway
    proc = login(home, "--address", gw.address, "--flow", "browser", "--no-browser")
    url = read_until(proc, r"^(http://\S+/auth\?\S+)$").group(1)
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0], query
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", query["redirect_uri"][0]), query
    status, body = idp.post("/test/authorize", {"url": url, "account": "alice", "decision": "approve"})
    assert status == 200, body
    rc, rest = finish(proc)
    assert rc == 0, rest
    _, stored = stored_login(home, gw)
    # The token works on the gateway: a read call through it, as alice.
    printed = subprocess.run([str(flowgate_bin()), "token", "print", "--address", gw.address], env=home,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    token = printed.stdout.strip()
    assert token == stored["access_token"]
    done = temporal(home, "workflow", "list", "--address", gw.address, "--namespace", "payments", "--api-key", token,
                    "--tls=false", "--limit", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_refused_consent_and_an_expired_device_code_are_one_line_each(people_gateway, idp, home, tmp_path):
    gw = people_gateway
    proc = login(home, "--address", gw.address, "--flow", "browser", "--no-browser")
    url = read_until(proc, r"^(http://\S+/auth\?\S+)$").group(1)
    idp.post("/test/authorize", {"url": url, "account": "alice", "decision": "deny"})
    rc, rest = finish(proc)
    assert rc == 1 and "login refused: the identity provider answered `access_denied`" in rest, rest
    assert len(rest.strip().splitlines()) == 1, rest

    proc = login(home, "--address", gw.address, "--flow", "device")
    code = read_until(proc, r"enter the code (\S+)").group(1)
    idp.post("/test/approve", {"user_code": code, "decision": "deny"})
    rc, rest = finish(proc)
    assert rc == 1 and "`access_denied`" in rest and len(rest.strip().splitlines()) == 1, rest

    assert not list((Path(home["HOME"]) / ".config").glob("flowgate/logins/*.json")), "nothing is stored"


def test_an_expired_device_code_is_one_line(gateway, home, tmp_path):
    # An IdP of its own, whose device codes live 2 s: nobody approves this one in time.
    short = start_idp(tmp_path, IDP_DEVICE_TTL="2", IDP_DEVICE_INTERVAL="1")
    try:
        gw = gateway(extra=people_issuer(short.issuer), policies={"people.cedar": PEOPLE_POLICY})
        proc = login(home, "--address", gw.address, "--flow", "device")
        read_until(proc, r"enter the code (\S+)")
        rc, rest = finish(proc)
        assert rc == 1 and "the device code expired before it was approved" in rest, rest
        assert len(rest.strip().splitlines()) == 1, rest
    finally:
        stop_idp(short)


def test_token_print_refreshes_and_logout_revokes(gateway, home, tmp_path):
    # Tokens of 30 s: less than the minute `token print` wants left, so it refreshes at once.
    short = start_idp(tmp_path, IDP_DEVICE_INTERVAL="1", IDP_ACCESS_TOKEN_TTL="30")
    try:
        gw = gateway(extra=people_issuer(short.issuer), policies={"people.cedar": PEOPLE_POLICY})
        proc = login(home, "--address", gw.address, "--flow", "device", "--temporal-env", "fg")
        code = read_until(proc, r"enter the code (\S+)").group(1)
        short.post("/test/approve", {"user_code": code, "account": "alice", "decision": "approve"})
        rc, rest = finish(proc)
        assert rc == 0, rest
        _, first = stored_login(home, gw)
        printed = subprocess.run([str(flowgate_bin()), "token", "print", "--address", gw.address], env=home,
                                 capture_output=True, text=True, timeout=30)  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        _, second = stored_login(home, gw)
        assert printed.stdout.strip() == second["access_token"] != first["access_token"]
        assert second["refresh_token"] != first["refresh_token"], "the rotated refresh token is kept"
        env_file = Path(home["HOME"]) / ".config" / "temporalio" / "temporal.yaml"
        assert second["access_token"] in env_file.read_text(), "the Temporal CLI environment is kept fresh"

        out = subprocess.run([str(flowgate_bin()), "logout", "--address", gw.address], env=home,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0 and "revoked" in out.stderr, out.stderr
        assert not list((Path(home["HOME"]) / ".config" / "flowgate" / "logins").glob("*.json"))
        assert "api-key" not in env_file.read_text()
        status, body = short.token({"grant_type": "refresh_token", "refresh_token": second["refresh_token"],
                                    "client_id": "flowgate-cli"})  # fmt: skip
        assert status == 400 and body["error"] == "invalid_grant", body
        again = subprocess.run([str(flowgate_bin()), "token", "print", "--address", gw.address], env=home,
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        assert again.returncode == 1 and "not logged in to" in again.stderr, again.stderr
    finally:
        stop_idp(short)


def test_an_idp_or_a_gateway_that_cannot_be_reached(gateway, home):
    closed = free_port()
    gw = gateway(extra=people_issuer(f"http://127.0.0.1:{closed}"), policies={"people.cedar": PEOPLE_POLICY},
                 wait="readyz")  # fmt: skip
    proc = login(home, "--address", gw.address, "--flow", "device")
    rc, rest = finish(proc)
    assert rc == 1 and f"the identity provider `http://127.0.0.1:{closed}`" in rest, rest
    assert len(rest.strip().splitlines()) == 1, rest

    proc = login(home, "--address", f"127.0.0.1:{free_port()}", "--flow", "device")
    rc, rest = finish(proc)
    assert rc == 1 and "cannot reach `http://127.0.0.1:" in rest and len(rest.strip().splitlines()) == 1, rest

    # A gateway that offers no login says so.
    plain = gateway()
    proc = login(home, "--address", plain.address, "--flow", "device")
    rc, rest = finish(proc)
    assert rc == 1 and "offers no login" in rest, rest
