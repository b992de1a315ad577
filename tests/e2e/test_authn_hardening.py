"""Issue 9, items 4 and 5, through flowgate against a real Temporal dev server:

* single use without `jti`: an ES256 token's twin `(r, n - s)` verifies too; flowgate refuses
  high-s signatures (unless the issuer has `ecdsa_high_s = "accept"`), signs its own
  credentials low-s, and keys replay on the signed part, so the twin is never a second exchange;
* key rotation is never a refusal: a key the IdP publishes just after a fetch is accepted on its
  first call, also during a flood of random kids, which cannot force a fetch per call; the
  legitimate client keeps getting OK answers throughout.

The Rust-level spec of the same, against a fake upstream: tests/authn_hardening.rs.
"""

from __future__ import annotations

import asyncio
import math
import time

from conftest import is_high_s, with_s
from e2e_exchange import claims, exchange
from e2e_util import by, connect, deployer, github_claims, okta_claims, run, uid
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import RPCError, RPCStatusCode
from test_authn import START, expect_unauthenticated, start_deploy

WORKER_SUB = "repo:acme/payments:ref:refs/heads/main"
SCOPE = "namespace:payments role:worker task_queue:hardening"
GITHUB_ES256 = {"algorithms": ["RS256", "ES256"]}


def twin(token: str) -> str:
    """The other valid signature of an ES256 token."""
    return with_s(token, high=not is_high_s(token))


def ci_token_without_jti(github) -> str:
    """A job token without `jti`; its own `run_id`, since two tokens with the same claims and
    `iat` are the same token to the single-use check."""
    return github.mint(github_claims(environment=None, sub=WORKER_SUB, jti=None, run_id=uid("run")), alg="ES256")


def test_a_token_without_jti_is_exchanged_once_even_as_its_ecdsa_twin(gateway, github):
    gw = gateway(mint=True, github=GITHUB_ES256)
    token = ci_token_without_jti(github)
    assert "jti" not in claims(token) and not is_high_s(token) and is_high_s(twin(token))
    status, first = exchange(gw.url, token, SCOPE)
    assert status == 200, first
    status, again = exchange(gw.url, twin(token), SCOPE)
    assert (status, again.get("error")) == (400, "invalid_grant"), again
    assert "high-s" in again["error_description"], again

    # flowgate's own credentials are low-s, accepted by Temporal through flowgate, and their
    # twins are refused.
    credentials = [first["access_token"]]
    for _ in range(11):
        status, minted = exchange(gw.url, ci_token_without_jti(github), SCOPE)
        assert status == 200, minted
        credentials.append(minted["access_token"])
    assert not any(is_high_s(c) for c in credentials), "half would be high-s without normalization"

    async def describe(token: str):
        client = await connect(gw.address, None)
        return await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="payments"), metadata={"authorization": f"Bearer {token}"}
        )

    assert run(describe(credentials[0])).namespace_info.name == "payments"
    try:
        run(describe(twin(credentials[0])))
        raise AssertionError("a credential's high-s twin was accepted")
    except RPCError as e:
        assert e.status == RPCStatusCode.UNAUTHENTICATED and "high-s" in e.message, e.message

    # An IdP that does not normalize: both forms verify, and are still one token.
    gw = gateway(mint=True, github={**GITHUB_ES256, "ecdsa_high_s": "accept"})
    token = ci_token_without_jti(github)
    status, first = exchange(gw.url, twin(token), SCOPE)
    assert status == 200, first
    status, again = exchange(gw.url, token, SCOPE)
    assert (status, again.get("error")) == (400, "invalid_grant"), again
    assert "already exchanged" in again["error_description"], again


def test_high_s_tokens_are_refused_on_calls_unless_the_issuer_accepts_them(gateway, okta):
    gw = gateway()
    token = deployer(okta, "alice", alg="ES256")
    assert not is_high_s(token)
    wf_id = uid("low-s")
    run(start_deploy(gw.address, token, wf_id))
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "allow", rec
    rec = expect_unauthenticated(gw, twin(token), "high-s-twin")
    assert "high-s" in rec["reasons"][0] and "`okta`" in rec["reasons"][0], rec

    gw = gateway(okta={"ecdsa_high_s": "accept"})
    wf_id = uid("high-s-accepted")
    run(start_deploy(gw.address, deployer(okta, "alice", alg="ES256", high_s=True), wf_id))
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "allow", rec


def metric(gw, sample: str) -> float:
    _, text = gw.http_get("/metrics")
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_rotated_key_is_accepted_on_its_first_call_even_during_a_flood_of_random_kids(gateway, okta):
    gw = gateway()
    # Any unknown kid (here an attacker's) makes flowgate fetch; the IdP rotates right after.
    expect_unauthenticated(gw, okta.mint(okta_claims("mallory", ["deployers"]), kid="no-such-kid",
                                         key=okta.stranger_key()), "unknown-kid")  # fmt: skip
    okta.rotate("ES256")
    wf_id = uid("rotated")
    run(start_deploy(gw.address, deployer(okta, "bob", alg="ES256"), wf_id))
    [rec] = gw.wait_decisions(by(START, workflow_id=wf_id), 1)
    assert rec["decision"] == "allow", rec

    stranger = okta.stranger_key()
    fetches, started = okta.jwks_requests, time.monotonic()

    async def scenario():
        client = await connect(gw.address, None)
        stop = asyncio.Event()

        async def describe(token: str):
            return await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="payments"), metadata={"authorization": f"Bearer {token}"}
            )

        async def legitimate():
            answers = 0
            while not stop.is_set():
                await describe(deployer(okta, f"alice-{answers}"))  # raises if refused
                answers += 1
                await asyncio.sleep(0.02)
            return answers

        async def attacker(n: int):
            calls = 0
            while not stop.is_set():
                token = okta.mint(okta_claims("mallory", ["deployers"]), kid=f"random-{n}-{calls}", key=stranger)
                try:
                    await describe(token)
                    raise AssertionError("a random kid was accepted")
                except RPCError as e:
                    assert e.status == RPCStatusCode.UNAUTHENTICATED and "unknown signing key" in e.message, e
                calls += 1
            return calls

        tasks = [asyncio.create_task(legitimate())] + [asyncio.create_task(attacker(n)) for n in range(16)]
        await asyncio.sleep(1.2)
        okta.rotate("ES256")
        rotated_at = time.monotonic()
        await describe(deployer(okta, "carol", alg="ES256"))  # the new key's first call: OK
        rotated_in = time.monotonic() - rotated_at
        await asyncio.sleep(1.8)
        stop.set()
        answers, *attacks = await asyncio.gather(*tasks)
        return answers, sum(attacks), rotated_in

    answers, attacks, rotated_in = run(scenario())
    elapsed = time.monotonic() - started
    made = okta.jwks_requests - fetches
    bound = 2 + math.ceil(elapsed)
    assert answers >= 20, f"only {answers} legitimate calls"
    assert rotated_in < 2.5, f"the rotated token was held {rotated_in:.1f}s (jwks_min_refresh = 1s)"
    assert made <= bound, f"{made} JWKS fetches for {attacks} random kids in {elapsed:.1f}s (at most {bound})"
    assert attacks >= 3 * made, f"{attacks} attacker calls, {made} fetches"
    assert metric(gw, 'flowgate_jwks_kid_waits_total{issuer="okta",result="absent"}') >= 16
