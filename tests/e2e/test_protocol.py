"""gRPC edges: public health checks, services no policy permits, task tokens, SignalWithStart."""

import grpc
from e2e_util import PARKED_QUEUE, by, connect, deployer, expect_rpc_error, run, uid, worker_token
from e2e_workflows import DeployWorkflow, DropDatabaseWorkflow
from temporalio.service import RPCStatusCode


def raw_call(address: str, path: str, body: bytes, token: str | None = None) -> tuple[str, bytes | str]:
    """One unary call with raw message bytes; returns (status name, response bytes or details)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        metadata = [("authorization", f"Bearer {token}")] if token else []
        try:
            return "OK", call(body, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return e.code().name, e.details() or ""


def test_health_check_needs_no_token(gateway):
    gw = gateway()
    status, body = raw_call(gw.address, "/grpc.health.v1.Health/Check", b"")
    assert status == "OK", body
    assert body == b"\x08\x01", f"expected SERVING, got {body!r}"  # HealthCheckResponse{status: SERVING}


def test_services_no_policy_names_are_denied(gateway, okta):
    gw = gateway()
    token = deployer(okta, "alice")
    paths = [
        "/temporal.server.api.adminservice.v1.AdminService/DescribeCluster",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/temporal.api.workflowservice.v1.WorkflowService/NoSuchMethod",
        "/temporal.api.operatorservice.v1.OperatorService/ListSearchAttributes",
    ]
    for path in paths:
        status, details = raw_call(gw.address, path, b"", token)
        assert status == "PERMISSION_DENIED", f"{path}: {status} {details}"
        status, details = raw_call(gw.address, path, b"")
        assert status == "UNAUTHENTICATED", f"{path} without a token: {status} {details}"
    denies = [d for d in gw.decisions() if d["decision"] == "deny"]
    assert len(denies) == 2 * len(paths), denies
    assert all(d["status"] in (7, 16) for d in denies), denies


def test_task_token_with_empty_namespace_is_denied(gateway, okta):
    """Temporal would take the namespace from the unsigned task token: flowgate refuses it."""
    from temporalio.api.workflowservice.v1 import RespondActivityTaskCompletedRequest

    gw = gateway()
    forged = RespondActivityTaskCompletedRequest(task_token=b"\x0a\x24" + b"0" * 36 + b"\x12\x03abc", identity="e2e")

    async def scenario():
        client = await connect(gw.address, worker_token(okta))
        await expect_rpc_error(
            client.workflow_service.respond_activity_task_completed(forged, retry=False),
            RPCStatusCode.PERMISSION_DENIED,
        )

    run(scenario())
    [rec] = gw.wait_decisions(by("RespondActivityTaskCompleted"), 1)
    assert rec["decision"] == "deny" and rec["status"] == 7, rec


def test_signal_with_start(gateway, okta):
    gw = gateway()
    ok_id, bad_id = uid("sws-deploy"), uid("sws-drop")

    async def scenario():
        client = await connect(gw.address, deployer(okta, "alice"))
        await client.start_workflow(DeployWorkflow.run, "x", id=ok_id, task_queue=PARKED_QUEUE,
                                    start_signal="approve", start_signal_args=["alice"])  # fmt: skip
        await expect_rpc_error(
            client.start_workflow(DropDatabaseWorkflow.run, "x", id=bad_id, task_queue=PARKED_QUEUE,
                                  start_signal="approve", start_signal_args=["alice"]),  # fmt: skip
            RPCStatusCode.PERMISSION_DENIED,
        )

    run(scenario())
    [ok] = gw.wait_decisions(by("SignalWithStartWorkflowExecution", workflow_id=ok_id), 1)
    # A signal-with-start is also asked as the signal it sends: both policies allowed it.
    assert ok["decision"] == "allow" and ok["reasons"] == ["e2e-deployers-approve", "e2e-deployers-start-deploy"], ok
    asked = [(q["action"], q["decision"], q["reasons"]) for q in ok["questions"]]
    assert asked == [
        ("SignalWithStartWorkflowExecution", "allow", ["e2e-deployers-start-deploy"]),
        ("SignalWorkflowExecution", "allow", ["e2e-deployers-approve"]),
    ], ok["questions"]
    assert ok["resource"]["workflow_type"] == "DeployWorkflow", ok
    [bad] = gw.wait_decisions(by("SignalWithStartWorkflowExecution", workflow_id=bad_id), 1)
    assert bad["decision"] == "deny" and bad["resource"]["workflow_type"] == "DropDatabaseWorkflow", bad
