"""Compressed requests are inspected, not waved through: gzip via grpcio and via the SDK."""

import grpc
from e2e_util import PARKED_QUEUE, by, connect, deployer, run, uid
from e2e_workflows import DeployWorkflow
from temporalio.api.workflowservice.v1 import StartWorkflowExecutionRequest, StartWorkflowExecutionResponse
from temporalio.service import GrpcCompression

START_PATH = "/temporal.api.workflowservice.v1.WorkflowService/StartWorkflowExecution"


def start_request(wf_id: str, workflow_type: str) -> StartWorkflowExecutionRequest:
    req = StartWorkflowExecutionRequest(namespace="payments", workflow_id=wf_id, request_id=uid("req"))
    req.workflow_type.name = workflow_type
    req.task_queue.name = PARKED_QUEUE
    req.workflow_execution_timeout.FromSeconds(30)
    # Long and repetitive, so grpcio really compresses (it sends small messages uncompressed
    # when gzip would not make them smaller).
    req.identity = "e2e-gzip-" + "a" * 4000
    return req


def grpc_start(address: str, token: str, req, compression):
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(
            START_PATH,
            request_serializer=StartWorkflowExecutionRequest.SerializeToString,
            response_deserializer=StartWorkflowExecutionResponse.FromString,
        )
        return call(
            req,
            metadata=[("authorization", f"Bearer {token}"), ("client-name", "e2e-grpcio"), ("client-version", "1.0")],
            compression=compression,
            timeout=15,
        )


def test_gzip_request_is_inspected(gateway, okta):
    gw = gateway()
    token = deployer(okta, "alice")

    allowed_id = uid("gz-deploy")
    resp = grpc_start(gw.address, token, start_request(allowed_id, "DeployWorkflow"), grpc.Compression.Gzip)
    assert resp.run_id, resp

    results = {}
    for label, compression in (("gzip", grpc.Compression.Gzip), ("identity", grpc.Compression.NoCompression)):
        wf_id = uid(f"gz-drop-{label}")
        try:
            grpc_start(gw.address, token, start_request(wf_id, "DropDatabaseWorkflow"), compression)
            results[label] = ("OK", "", wf_id)
        except grpc.RpcError as e:
            results[label] = (e.code().name, e.details(), wf_id)
    for label, (code, details, _) in results.items():
        assert code == "PERMISSION_DENIED", f"{label}: denied type was {code}: {details}"
        assert "StartWorkflowExecution" in details, details

    [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=allowed_id), 1)
    assert rec["decision"] == "allow" and rec["resource"]["workflow_type"] == "DeployWorkflow", rec
    assert rec["client"]["name"] == "e2e-grpcio", rec
    for label, (_, _, wf_id) in results.items():
        [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
        assert rec["decision"] == "deny" and rec["resource"]["workflow_type"] == "DropDatabaseWorkflow", (label, rec)


def test_sdk_with_and_without_compression(gateway, okta):
    """The SDK gzips by default (see test_harness); both modes are inspected the same way."""
    gw = gateway()
    ids = {}

    async def scenario():
        for label, compression in (("gzip", GrpcCompression.GZIP), ("none", GrpcCompression.NONE)):
            client = await connect(gw.address, deployer(okta, "alice"), grpc_compression=compression)
            ids[label] = uid(f"sdk-{label}")
            await client.start_workflow(DeployWorkflow.run, "api", id=ids[label], task_queue=PARKED_QUEUE)

    run(scenario())
    for label, wf_id in ids.items():
        [rec] = gw.wait_decisions(by("StartWorkflowExecution", workflow_id=wf_id), 1)
        assert rec["decision"] == "allow" and rec["resource"]["workflow_type"] == "DeployWorkflow", (label, rec)
