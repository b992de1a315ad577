"""Decisions shared across tokens: a new token is decided as an earlier token of the same principal
was only when the policies cannot tell the two apart (same subject and groups, same values of
every tag a policy reads); a token that differs in a tag a policy reads, or in its groups, is
decided afresh. Each call here brings a new token (a new `jti`, as each CI job does)."""

from e2e_util import PARKED_QUEUE, connect, expect_rpc_error, okta_claims, run, uid
from e2e_workflows import DeployWorkflow
from temporalio.service import RPCStatusCode

START = "StartWorkflowExecution"

POLICIES = {
    "window.cedar": """
// Deployers may start deploys while their token says the change window is open.
@id("e2e-change-window")
permit (
  principal in Temporal::Group::"okta:deployers",
  action == Temporal::Action::"StartWorkflowExecution",
  resource is Temporal::Workflow in Temporal::Namespace::"payments"
)
when {
  principal.hasTag("change_window") && principal.getTag("change_window") == "open" &&
  resource has type && resource.type == "DeployWorkflow"
};
""",
}


def test_a_new_token_reuses_a_decision_only_when_no_policy_can_tell_it_apart(gateway, okta):
    gw = gateway(policies=POLICIES)
    # (what differs from the first token, groups, extra claims, allowed?)
    tokens = [
        ("first", ["deployers"], {"change_window": "open"}, True),
        ("a closed window", ["deployers"], {"change_window": "closed"}, False),
        ("another job, window open", ["deployers"], {"change_window": "open", "run_id": "2"}, True),
        ("no window claim", ["deployers"], {}, False),
        ("not a deployer", ["auditors"], {"change_window": "open"}, False),
        ("open again, after the refusals", ["deployers"], {"change_window": "open", "run_id": "3"}, True),
    ]
    ids = {what: uid("shared") for what, *_ in tokens}

    async def scenario():
        for what, groups, extra, allowed in tokens:
            token = okta.mint(okta_claims("dana", groups, **extra))
            client = await connect(gw.address, token)
            start = client.start_workflow(DeployWorkflow.run, "x", id=ids[what], task_queue=PARKED_QUEUE)
            if allowed:
                await start
            else:
                await expect_rpc_error(start, RPCStatusCode.PERMISSION_DENIED)

    run(scenario())
    records = gw.wait_decisions(lambda d: d.get("action") == START, len(tokens))
    by_id = {d["resource"]["workflow_id"]: d for d in records}
    for what, _, _, allowed in tokens:
        record = by_id[ids[what]]
        assert record["principal"]["id"] == "okta:dana", record
        if allowed:
            assert record["decision"] == "allow" and record["reasons"] == ["e2e-change-window"], (what, record)
        else:
            assert record["decision"] == "deny" and record["status"] == 7, (what, record)
            assert "e2e-change-window" not in record["reasons"], (what, record)
