"""Authentication through flowgate: bad tokens are UNAUTHENTICATED, keys rotate, CI tokens bind."""

import base64
import hashlib
import hmac
import math
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from e2e_util import (
    PARKED_QUEUE, by, check_record_shape, connect, deployer, expect_rpc_error, github_claims, okta_claims,
    run, uid,
)  # fmt: skip
from e2e_workflows import DeployWorkflow
from temporalio.service import RPCStatusCode

START = "StartWorkflowExecution"


def start_deploy(address: str, token: str | None, wf_id: str, namespace: str = "payments"):
    async def go():
        # Connect without a token (GetSystemInfo is public), then present the token: so the
        # StartWorkflowExecution call is the one that meets it, whatever flowgate does with a
        # bad token on public calls.
        client = await connect(address, None, namespace=namespace)
        if token is not None:
            client.rpc_metadata = {"authorization": f"Bearer {token}"}
        return await client.start_workflow(
            DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE, execution_timeout=timedelta(seconds=30)
        )

    return go()


def expect_unauthenticated(gw, token, label: str) -> dict:
    """Starts a deploy with `token`; expects UNAUTHENTICATED and exactly one new deny record."""
    unauth = lambda d: d["decision"] == "deny" and d.get("status") == 16  # noqa: E731
    before = len([d for d in gw.decisions() if unauth(d)])
    wf_id = uid(label)
    err = run(expect_rpc_error(start_deploy(gw.address, token, wf_id), RPCStatusCode.UNAUTHENTICATED))
    assert err.message, f"{label}: UNAUTHENTICATED without a message"
    recs = gw.wait_decisions(unauth, before + 1)[before:]
    time.sleep(0.05)
    assert len(recs) == 1 and len([d for d in gw.decisions() if unauth(d)]) == before + 1, f"{label}: {recs}"
    rec = recs[0]
    check_record_shape(rec)
    assert rec["action"] == START, f"{label}: {rec}"
    assert rec["principal"] is None, f"{label}: {rec}"
    assert len(rec["reasons"]) == 1 and rec["reasons"][0].startswith("unauthenticated: "), f"{label}: {rec}"
    return rec


def test_bad_tokens_are_unauthenticated(gateway, okta, github):
    gw = gateway()
    now = int(time.time())
    alice = lambda **kw: okta_claims("alice", ["deployers"], **kw)  # noqa: E731
    stranger = okta.stranger_key()
    rsa_pub_pem = okta.signing["RS256"].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def hs256_with_public_key() -> str:
        unsigned = okta.mint_unsigned(alice(), {"alg": "HS256", "typ": "JWT", "kid": okta.signing["RS256"].kid})
        head, body, _ = unsigned.split(".")
        sig = hmac.new(rsa_pub_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()

    cases = {
        "expired": (okta.mint(alice(iat=now - 900, nbf=now - 900, exp=now - 600)), "expired"),
        "not-yet-valid": (okta.mint(alice(nbf=now + 600, exp=now + 900)), "nbf"),
        "forged": (okta.mint(alice(), key=stranger), "signature"),
        "wrong-audience": (okta.mint(alice(aud="api://someone-else")), "audience"),
        "wrong-issuer": (okta.mint(alice(iss="https://evil.example.com/oauth2/default")), "issuer"),
        "other-tenant": (github.mint(github_claims("evil/payments", owner="evil")), "repository_owner"),
        "alg-none": (okta.mint_unsigned(alice(), {"alg": "none", "typ": "JWT"}), ""),
        "hs256-public-key": (hs256_with_public_key(), ""),
        "garbage": ("not-a-jwt", ""),
        "no-exp": (okta.mint(alice(exp=None)), "exp"),
    }
    for label, (token, why) in cases.items():
        rec = expect_unauthenticated(gw, token, label)
        assert why.lower() in rec["reasons"][0].lower(), f"{label}: reason does not say `{why}`: {rec['reasons']}"

    # Nothing was forwarded: none of these workflows exists.
    allows = [d for d in gw.decisions() if d["action"] == START and d["decision"] == "allow"]
    assert not allows, allows


def test_no_token_connects_but_cannot_start(gateway):
    gw = gateway()
    wf_id = uid("anon")

    async def scenario():
        client = await connect(gw.address, None)  # Client.connect calls GetSystemInfo: public
        await expect_rpc_error(
            client.start_workflow(DeployWorkflow.run, "api", id=wf_id, task_queue=PARKED_QUEUE),
            RPCStatusCode.UNAUTHENTICATED,
        )

    run(scenario())
    recs = gw.wait_decisions(by(START), 1)
    assert len(recs) == 1 and recs[0]["decision"] == "deny" and recs[0]["status"] == 16, recs
    assert "unauthenticated" in recs[0]["reasons"][0] and "token" in recs[0]["reasons"][0], recs
    assert all(d["decision"] == "allow" for d in gw.decisions() if d["action"] == "GetSystemInfo")


def test_es256_tokens_are_accepted(gateway, okta):
    gw = gateway()
    wf_id = uid("es256")
    run(start_deploy(gw.address, deployer(okta, "alice", alg="ES256"), wf_id))
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "allow", rec


def test_key_rotation_is_picked_up_without_restart(gateway, okta):
    gw = gateway()
    run(start_deploy(gw.address, deployer(okta, "alice"), uid("before-rotation")))
    time.sleep(1.2)  # past jwks_min_refresh = 1s since the gateway's last fetch
    fetches = okta.jwks_requests
    okta.rotate("RS256")
    token = deployer(okta, "alice")
    wf_id = uid("after-rotation")
    run(start_deploy(gw.address, token, wf_id))  # first call with the new kid must succeed
    assert okta.jwks_requests > fetches, "the new kid was accepted without fetching the JWKS?"
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "allow", rec
    assert gw.proc.poll() is None
    # A kid that is not published anywhere is still refused, and does not hammer the issuer:
    # each new kid may wait for the next permitted fetch (jwks_min_refresh = 1s), but they make
    # at most two fetches at once and then one per second, however many kids there are.
    fetches, started = okta.jwks_requests, time.monotonic()
    for i in range(5):
        bogus = okta.mint(okta_claims("alice", ["deployers"]), kid=f"no-such-kid-{i}", key=okta.stranger_key())
        expect_unauthenticated(gw, bogus, f"unknown-kid-{i}")
    elapsed = time.monotonic() - started
    bound = 2 + math.ceil(elapsed)
    made = okta.jwks_requests - fetches
    assert made <= bound, f"{made} JWKS fetches for 5 unknown kids in {elapsed:.1f}s (at most {bound})"


def test_issuer_outage_keeps_last_good_keys(gateway, okta):
    gw = gateway()
    run(start_deploy(gw.address, deployer(okta, "alice"), uid("before-outage")))
    okta.down = True
    try:
        wf_id = uid("during-outage")
        run(start_deploy(gw.address, deployer(okta, "alice"), wf_id))
        [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
        assert rec["decision"] == "allow", rec
    finally:
        okta.down = False
    status, _ = gw.http_get("/healthz")
    assert status == 200


@pytest.mark.parametrize(
    "claims,expected",
    [
        (dict(repository="acme/payments", environment="production"), "allow"),
        (dict(repository="acme/payments", environment="staging"), "deny"),
        (dict(repository="acme/website", environment="production"), "deny"),
    ],
)
def test_github_actions_job(gateway, github, claims, expected):
    gw = gateway()
    wf_id = uid("gh")
    token = github.mint(github_claims(**claims))
    if expected == "allow":
        run(start_deploy(gw.address, token, wf_id))
    else:
        run(expect_rpc_error(start_deploy(gw.address, token, wf_id), RPCStatusCode.PERMISSION_DENIED))
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    check_record_shape(rec)
    assert rec["decision"] == expected, rec
    sub = f"repo:{claims['repository']}:environment:{claims['environment']}"
    assert rec["principal"]["type"] == "CiJob" and rec["principal"]["id"] == f"github:{sub}", rec
    if expected == "allow":
        assert rec["reasons"] == ["e2e-github-production-deploy"], rec


def test_github_token_with_okta_audience_is_refused(gateway, github):
    gw = gateway()
    # Valid for Okta's audience, signed by the GitHub-like issuer: not for this gateway's GitHub audience.
    rec = expect_unauthenticated(gw, github.mint(github_claims(aud="api://temporal")), "gh-wrong-aud")
    assert "audience" in rec["reasons"][0].lower(), rec
