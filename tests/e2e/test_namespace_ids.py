"""Requests that name a namespace by id (issue 10, item 5), through flowgate to a real dev server.

`temporal operator namespace describe --namespace-id <id>` sends `DescribeNamespace{id}` and no
name; `OperatorService.DeleteNamespace{namespace_id}` likewise. flowgate used to refuse both
("names no namespace"). It now asks Temporal once which namespace the id is and authorizes that
name: permitted where the name is, refused elsewhere, and refused cleanly for an id Temporal
does not know or a request naming both a name and an id (which Temporal itself refuses).
"""

import json
import os
import subprocess
from pathlib import Path

from temporalio.api.operatorservice.v1 import DeleteNamespaceRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCStatusCode

from e2e_util import by, connect, deployer, expect_rpc_error, okta_claims, run, temporal_bin

E2E_POLICIES = Path(__file__).resolve().parent / "policies"

# The e2e set, plus analysts who may read only `analytics` and admins of `payments`.
EXTRA_POLICIES = """
@id("e2e-analysts-read-analytics")
permit (
  principal in Temporal::Group::"okta:analysts",
  action in Temporal::Action::"read",
  resource in Temporal::Namespace::"analytics"
);

@id("e2e-payments-admins")
permit (
  principal in Temporal::Group::"okta:payments-admins",
  action in Temporal::Action::"admin",
  resource in Temporal::Namespace::"payments"
);
"""


def policies() -> dict:
    files = {f.name: f.read_text() for f in E2E_POLICIES.iterdir() if f.suffix == ".cedar"}
    files["namespace-ids.cedar"] = EXTRA_POLICIES
    return files


def namespace_id(address: str, name: str) -> str:
    """The id Temporal gave namespace `name` (asked directly, not through flowgate)."""

    async def describe():
        client = await Client.connect(address)
        response = await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=name))
        return response.namespace_info.id

    return run(describe())


def describe_by_id(address: str, tmp_path, ns_id: str, token: str | None = None):
    """`temporal operator namespace describe --namespace-id` (no `--namespace`: the CLI refuses both)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env["HOME"] = str(tmp_path)
    cmd = [temporal_bin(), "operator", "namespace", "describe", "--namespace-id", ns_id, "--address", address,
           "--tls=false", "-o", "json"]  # fmt: skip
    if token:
        cmd += ["--api-key", token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


def test_describe_by_id_is_authorized_as_the_namespace_it_names(gateway, temporal, okta, tmp_path):
    payments_id = namespace_id(temporal, "payments")
    # Temporal itself answers a describe by id (this is what flowgate refused before).
    direct = describe_by_id(temporal, tmp_path, payments_id)
    assert direct.returncode == 0, direct.stderr
    assert json.loads(direct.stdout)["namespaceInfo"]["name"] == "payments"

    gw = gateway(policies=policies())
    alice = deployer(okta, "alice")  # may read payments
    for _ in range(2):
        ok = describe_by_id(gw.address, tmp_path, payments_id, token=alice)
        assert ok.returncode == 0, f"describe by id denied: {ok.stderr}"
        assert json.loads(ok.stdout)["namespaceInfo"]["id"] == payments_id

    # Someone who may read only `analytics`: refused, and not told the name.
    analyst = okta.mint(okta_claims("ann", ["analysts"]))
    denied = describe_by_id(gw.address, tmp_path, payments_id, token=analyst)
    assert denied.returncode != 0, denied.stdout
    assert f"namespace id `{payments_id}`" in denied.stderr and "`payments`" not in denied.stderr, denied.stderr

    # Someone no policy permits DescribeNamespace at all: refused before any lookup.
    nobody = okta.mint(okta_claims("nobody", []))
    never = describe_by_id(gw.address, tmp_path, payments_id, token=nobody)
    assert never.returncode != 0 and "was not resolved" in never.stderr, never.stderr

    records = gw.wait_decisions(by("DescribeNamespace"), 4)
    allowed = [r for r in records if r["decision"] == "allow"]
    assert len(allowed) == 2, records
    for record in allowed:
        assert record["resource"] == {"type": "Namespace", "namespace": "payments", "namespace_id": payments_id}, record
        assert "e2e-deployers-read" in record["reasons"], record
        assert record["client"]["name"] == "temporal-cli", record
    [ann] = [r for r in records if r["principal"]["id"] == "okta:ann"]
    assert ann["decision"] == "deny" and ann["status"] == 7, ann
    assert ann["resource"] == {"type": "Namespace", "namespace": "payments", "namespace_id": payments_id}, ann
    [none] = [r for r in records if r["principal"]["id"] == "okta:nobody"]
    assert none["status"] == 7 and none["resource"] == {"type": "Namespace", "namespace_id": payments_id}, none


def test_unknown_malformed_and_ambiguous_ids_are_refused_cleanly(gateway, temporal, okta, tmp_path):
    payments_id = namespace_id(temporal, "payments")
    gw = gateway(policies=policies())
    alice = deployer(okta, "alice")

    bogus = "9d4c6a1b-2e3f-4a5b-8c7d-0e1f2a3b4c5d"
    unknown = describe_by_id(gw.address, tmp_path, bogus, token=alice)
    assert unknown.returncode != 0 and f"namespace id `{bogus}` names no namespace" in unknown.stderr, unknown.stderr
    malformed = describe_by_id(gw.address, tmp_path, "not-a-uuid", token=alice)
    assert malformed.returncode != 0 and "is not a UUID" in malformed.stderr, malformed.stderr

    both = DescribeNamespaceRequest(namespace="payments", id=payments_id)

    async def describe_both():
        # Temporal refuses a request naming both a name and an id, even when they agree...
        direct = await Client.connect(temporal)
        await expect_rpc_error(direct.workflow_service.describe_namespace(both), RPCStatusCode.INVALID_ARGUMENT)
        # ...and so does flowgate, without asking Temporal which name the id is.
        client = await connect(gw.address, alice)
        error = await expect_rpc_error(client.workflow_service.describe_namespace(both), RPCStatusCode.INVALID_ARGUMENT)
        assert error.message.startswith("ambiguous request"), error.message
        # By id through the SDK: the status codes the CLI does not show.
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(id=payments_id))
        await expect_rpc_error(
            client.workflow_service.describe_namespace(DescribeNamespaceRequest(id=bogus)), RPCStatusCode.NOT_FOUND
        )

    run(describe_both())
    records = gw.wait_decisions(by("DescribeNamespace"), 5)
    statuses = sorted(r.get("status") or 0 for r in records)
    assert statuses == [0, 3, 3, 5, 5], records
    assert all(r["resource"]["namespace_id"] for r in records), records
    unknown_record = next(r for r in records if r.get("status") == 5)
    assert "namespace" not in unknown_record["resource"], unknown_record


def test_delete_by_id_is_asked_as_admin_on_the_resolved_name(gateway, temporal, okta):
    analytics_id = namespace_id(temporal, "analytics")
    payments_id = namespace_id(temporal, "payments")
    gw = gateway(policies=policies())
    admin = okta.mint(okta_claims("root", ["payments-admins"]))  # administers payments only
    alice = deployer(okta, "alice")  # reads payments, administers nothing

    async def delete():
        client = await connect(gw.address, admin)
        operator = client.operator_service
        error = await expect_rpc_error(
            operator.delete_namespace(DeleteNamespaceRequest(namespace_id=analytics_id)),
            RPCStatusCode.PERMISSION_DENIED,
        )
        assert f"`DeleteNamespace` on Namespace in namespace id `{analytics_id}`" in error.message, error.message
        reader = await connect(gw.address, alice)
        error = await expect_rpc_error(
            reader.operator_service.delete_namespace(DeleteNamespaceRequest(namespace_id=payments_id)),
            RPCStatusCode.PERMISSION_DENIED,
        )
        assert "was not resolved" in error.message, error.message

    run(delete())
    records = gw.wait_decisions(by("DeleteNamespace"), 2)
    [root] = [r for r in records if r["principal"]["id"] == "okta:root"]
    assert root["decision"] == "deny" and root["status"] == 7, root
    assert root["resource"] == {"type": "Namespace", "namespace": "analytics", "namespace_id": analytics_id}, root
    [reader] = [r for r in records if r["principal"]["id"] == "okta:alice"]
    assert reader["status"] == 7 and reader["resource"] == {"type": "Namespace", "namespace_id": payments_id}, reader

    # The refused delete did nothing: analytics is still there.
    async def still_there():
        direct = await Client.connect(temporal)
        response = await direct.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace="analytics"))
        assert response.namespace_info.state == 1, response  # NAMESPACE_STATE_REGISTERED

    run(still_there())
