"""The harness itself, without flowgate: the test issuers and the Temporal dev server work."""

import json
import urllib.request
from datetime import timedelta

import jwt
import pytest
from e2e_util import TASK_QUEUE, okta_claims, run, uid
from e2e_workflows import DeployWorkflow, deploy_step


def fetch(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, json.loads(r.read())


def verify_with_served_jwks(issuer, token: str, audience: str) -> dict:
    status, discovery = fetch(issuer.url + "/.well-known/openid-configuration")
    assert status == 200 and discovery["issuer"] == issuer.url
    _, jwks = fetch(discovery["jwks_uri"])
    kid = jwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k["kid"] == kid)
    key = jwt.PyJWK(jwk)
    return jwt.decode(token, key, algorithms=[jwk["alg"]], audience=audience, issuer=issuer.url)


def test_issuer_tokens_verify_against_served_jwks(okta):
    before = okta.jwks_requests
    for alg in ("RS256", "ES256"):
        token = okta.mint(okta_claims("alice", ["deployers"]), alg=alg)
        claims = verify_with_served_jwks(okta, token, "api://temporal")
        assert claims["sub"] == "alice" and claims["groups"] == ["deployers"]
        assert claims["exp"] - claims["iat"] == 300
    assert okta.jwks_requests == before + 2

    forged = okta.mint(okta_claims("mallory", []), key=okta.stranger_key())
    with pytest.raises(jwt.InvalidSignatureError):
        verify_with_served_jwks(okta, forged, "api://temporal")


def test_issuer_rotation_and_outage(github):
    old = github.signing["RS256"].kid
    new = github.rotate().kid
    assert new != old
    token = github.mint({"sub": "x", "aud": "a"})
    assert jwt.get_unverified_header(token)["kid"] == new
    verify_with_served_jwks(github, token, "a")
    verify_with_served_jwks(github, github.mint({"sub": "x", "aud": "a"}, kid=old), "a")
    github.down = True
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            fetch(github.url + "/jwks")
        assert e.value.code == 503
    finally:
        github.down = False


def test_temporal_dev_server_runs_a_workflow_directly(temporal):
    from temporalio.client import Client
    from temporalio.worker import Worker

    async def scenario():
        client = await Client.connect(temporal, namespace="payments")
        async with Worker(client, task_queue=TASK_QUEUE, workflows=[DeployWorkflow], activities=[deploy_step]):
            handle = await client.start_workflow(
                DeployWorkflow.run, "api", id=uid("direct"), task_queue=TASK_QUEUE,
                execution_timeout=timedelta(seconds=60),
            )  # fmt: skip
            await handle.signal(DeployWorkflow.approve, "bob")
            return await handle.result()

    assert run(scenario(), 60) == "built api; approved by bob"


def test_python_sdk_sends_gzip_by_default():
    """Captures the SDK's first request bytes: its gRPC message carries the compressed flag."""
    import asyncio
    import socket
    import struct
    import threading

    from temporalio.client import Client

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    captured = bytearray()

    def serve():
        conn, _ = srv.accept()
        conn.sendall(struct.pack(">I", 0)[1:] + bytes([4, 0]) + struct.pack(">I", 0))  # empty SETTINGS
        conn.settimeout(1.5)
        try:
            while chunk := conn.recv(65536):
                captured.extend(chunk)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()

    async def connect():
        try:
            await asyncio.wait_for(Client.connect(f"127.0.0.1:{srv.getsockname()[1]}"), 2)
        except Exception:  # noqa: BLE001 - nobody answers: expected
            pass

    asyncio.run(connect())
    t.join(3)
    srv.close()
    data, i, flags = bytes(captured), 24, []  # skip the HTTP/2 client preface
    while i + 9 <= len(data):
        length, frame_type = int.from_bytes(data[i : i + 3], "big"), data[i + 3]
        payload = data[i + 9 : i + 9 + length]
        if frame_type == 0 and payload:  # DATA: first byte of a gRPC message is its compressed flag
            flags.append(payload[0])
        i += 9 + length
    assert flags and flags[0] == 1, f"first gRPC message flags: {flags}"
