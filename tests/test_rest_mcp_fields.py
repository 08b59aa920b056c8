"""The MCP tools and the REST API take each entity's input twice (a pydantic arguments model, a DRF
input serializer) and answer with one output shape (gateway/shapes.py): this test makes the inputs
unable to drift silently, and holds the outputs to one declaration (issue 19 item 4).

For every MCP create/update tool with a REST twin, the argument model's fields must equal the REST
input serializer's, up to the deliberate differences listed below, each with its reason. A field
added on one side only fails here until it is added on the other (or listed, with a reason). Each
MCP output model with a REST twin must be that twin's shape itself, or a subclass adding no field
(the MCP-only `shared` config); the pages differ on purpose, as listed."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from rest_framework import serializers

import mcpserver.tools  # noqa: F401  (registers every tool and config kind)
from gateway import shapes
from gateway.api import serializers as io
from mcpserver.tools import (
    access_control,
    admin_ops,
    analysis,
    audit,
    connections,
    execution,
    identity,
    reviews,
    rules,
    runbooks,
    sessions,
    upstream,
    users,
)
from mcpserver.tools.rule_crud import KINDS

# The record a call names: MCP takes it as an argument, REST in the URL path.
URL = "REST names the record in the URL path"

# (MCP model, REST serializer, {MCP field: REST field} deliberate renames, {field: reason} present
# on one side only by design).
PAIRS: list[tuple[type[BaseModel], type[serializers.Serializer], dict[str, str], dict[str, str]]] = [
    # connections
    (connections.CreateArgs, io.ConnectionCreate, {}, {}),
    (connections.UpdateArgs, io.ConnectionUpdate, {}, {"connection_name": URL}),
    (connections.ImportArgs, io.ConnectionImport, {}, {}),
    (access_control.SetArgs, io.AccessControlSet, {}, {"connection_name": URL}),
    # users and groups
    (users.GroupCreateArgs, io.GroupCreate, {}, {}),
    (
        users.GroupChanges,
        io.GroupUpdate,
        # REST shipped add/remove first; config_update's changes name the member lists explicitly
        # because they sit beside other kinds' fields. Both are documented; renaming breaks clients.
        {"add_members": "add", "remove_members": "remove"},
        {},
    ),
    # guardrails, masking, attributes
    (
        rules.GuardrailCreate,
        io.GuardrailCreate,
        # MCP's `input` is the text to run everywhere else; it also accepts input/output as aliases.
        {"input_conditions": "input", "output_conditions": "output"},
        {},
    ),
    (
        rules.GuardrailUpdate,
        io.GuardrailUpdate,
        {"input_conditions": "input", "output_conditions": "output"},
        {"rule_name": URL},
    ),
    (rules.MaskingCreate, io.MaskingCreate, {}, {}),
    (rules.MaskingUpdate, io.MaskingUpdate, {}, {"rule_name": URL}),
    (rules.AttributeCreate, io.AttributeCreate, {}, {}),
    (rules.AttributeChanges, io.AttributeUpdate, {}, {}),
    # reviews and access requests
    (reviews.RuleCreate, io.AccessRuleCreate, {}, {}),
    (reviews.RuleUpdate, io.AccessRuleUpdate, {}, {"rule_name": URL}),
    (reviews.SettingsArgs, io.ReviewSettingsIn, {}, {}),
    (reviews.AccessRequestArgs, io.AccessRequestIn, {}, {}),
    (reviews.UpdateArgs, io.ReviewDecide, {}, {"review_id": URL}),
    # runbooks and runbook rules
    (runbooks.RuleCreate, io.RunbookRuleCreate, {}, {}),
    (runbooks.RuleUpdate, io.RunbookRuleUpdate, {}, {"rule_name": URL}),
    (
        admin_ops.RunbookCreate,
        io.RunbookIn,
        # In MCP `parameters` are runbooks_run's values; the declarations are named apart there.
        {"parameter_specs": "parameters"},
        {},
    ),
    (admin_ops.RunbookChanges, io.RunbookPatch, {"parameter_specs": "parameters"}, {}),
    # webhooks
    (admin_ops.WebhookCreate, io.WebhookIn, {}, {}),
    (admin_ops.WebhookChanges, io.WebhookPatch, {}, {}),
    # upstream MCP servers
    (upstream.CallArgs, io.UpstreamCallIn, {}, {"connection_name": URL}),
    (upstream.AcceptArgs, io.ContractsAcceptIn, {}, {"connection_name": URL}),
]

# MCP output model -> the shape REST answers with (the same model, or an MCP subclass adding no field).
OUTPUTS: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (connections.ConnectionOut, shapes.ConnectionOut),
    (connections.ImportResult, shapes.ImportOut),
    (connections.TestResult, shapes.ConnectionTestOut),
    (access_control.AccessControlOut, shapes.AccessControlOut),
    (users.UserOut, shapes.UserOut),
    (users.GroupOut, shapes.GroupOut),
    (rules.GuardrailOut, shapes.GuardrailOut),
    (rules.MaskingOut, shapes.MaskingOut),
    (rules.AttributeOut, shapes.AttributeOut),
    (reviews.RuleOut, shapes.AccessRuleOut),
    (reviews.SettingsOut, shapes.ReviewSettingsOut),
    (reviews.ReviewOut, shapes.ReviewOut),
    (runbooks.RuleOut, shapes.RunbookRuleOut),
    (admin_ops.RunbookAdminOut, shapes.RunbookOut),
    (admin_ops.WebhookOut, shapes.WebhookOut),
    (admin_ops.DeliveryOut, shapes.DeliveryOut),
    (audit.AuditEventOut, shapes.AuditEventOut),
    (sessions.SessionOut, shapes.SessionOut),
    (sessions.StatsResult, shapes.StatsOut),
    (analysis.AnalysisOut, shapes.AnalysisOut),
    (execution.ExecEnvelope, shapes.ExecOut),
    (execution.ExplainResult, shapes.ExplainOut),
    (rules.GuardrailTestResult, shapes.GuardrailTestOut),
    (rules.PreviewResult, shapes.MaskingPreviewOut),
    (identity.ServerInfoResult, shapes.ServerInfoOut),
    (identity.MeResult, shapes.MeOut),
    (upstream.ToolsListResult, shapes.UpstreamToolsOut),
    (upstream.ToolEnvelope, shapes.UpstreamCallOut),
    (upstream.ContractsListResult, shapes.ContractsOut),
    (runbooks.RunbookOut, shapes.RunbookBrief),
]

# Where the REST twin answers a larger shape than the MCP tool, on purpose: (MCP's, REST's, reason).
REST_ANSWERS_MORE = [
    (
        shapes.RunbookBrief,
        shapes.RunbookOut,
        "runbooks_list trims a runbook to what running it needs (id, enabled, updated_at cost an agent's "
        "context); GET runbooks/ answers it whole",
    ),
]

# Fields an MCP output model adds to its shape on purpose, with the reason.
MCP_ONLY = {
    (identity.MeResult, "tools_a_higher_capability_adds"): "tools are an MCP notion; REST has endpoints",
}

# The pages: MCP pages by offset, REST by cursor (gateway/shapes.py, OffsetPage and CursorPage).
OFFSET = "MCP pages by offset: an agent passes next_offset back"
CURSOR = "REST pages by cursor: a client passes next_cursor back or follows next"
PAGE_DIFFERENCES = {"has_next_page": OFFSET, "next_offset": OFFSET, "next_cursor": CURSOR, "next": CURSOR}
PAGES: list[tuple[type[BaseModel], type[BaseModel]]] = [
    (connections.ListResult, io.ConnectionPage),
    (access_control.ListResult, io.AccessControlPage),
    (users.UsersList, io.UserPage),
    (users.GroupsList, io.GroupPage),
    (reviews.ReviewList, io.ReviewPage),
    (audit.AuditList, io.AuditEventPage),
]


def _mcp_fields(model: type[BaseModel], renames: dict[str, str]) -> set[str]:
    return {renames.get(name, name) for name in model.model_fields}


def _rest_fields(serializer: type[serializers.Serializer]) -> set[str]:
    return set(serializer().fields)


@pytest.mark.parametrize(
    ("mcp", "rest", "renames", "one_sided"),
    PAIRS,
    ids=[f"{m.__module__.rsplit('.', 1)[-1]}.{m.__name__}~{r.__name__}" for m, r, _, _ in PAIRS],
)
def test_the_mcp_model_and_the_rest_serializer_name_the_same_fields(mcp, rest, renames, one_sided):
    assert set(renames) <= set(mcp.model_fields), f"stale rename in the table: {renames}"
    mcp_fields, rest_fields = _mcp_fields(mcp, renames), _rest_fields(rest)
    assert set(one_sided) <= mcp_fields ^ rest_fields, "stale entry in the table of one-sided fields"
    only_mcp = mcp_fields - rest_fields - set(one_sided)
    only_rest = rest_fields - mcp_fields - set(one_sided)
    assert not only_mcp and not only_rest, (
        f"{mcp.__name__} (MCP) and {rest.__name__} (REST) drifted: only in MCP {sorted(only_mcp)}, "
        f"only in REST {sorted(only_rest)}; add the field to the other side or list it here with a reason"
    )


@pytest.mark.parametrize(("mcp", "shape"), OUTPUTS, ids=[m.__qualname__ for m, _ in OUTPUTS])
def test_the_mcp_output_model_is_the_shape_rest_answers_with(mcp, shape):
    assert issubclass(mcp, shape), f"{mcp.__name__} (MCP) is not the shape {shape.__name__} (REST)"
    added = set(mcp.model_fields) - set(shape.model_fields)
    assert added == {f for m, f in MCP_ONLY if m is mcp}, "an MCP subclass of a shape adds no field unlisted"


@pytest.mark.parametrize(("mcp", "rest"), PAGES, ids=[r.__name__ for _, r in PAGES])
def test_an_mcp_page_and_a_rest_page_differ_only_in_how_they_page(mcp, rest):
    (mcp_item,), (rest_item,) = (m.model_fields["items"].annotation.__args__ for m in (mcp, rest))
    assert issubclass(mcp_item, rest_item), "the same records on both surfaces"
    assert set(mcp.model_fields) ^ set(rest.model_fields) == set(PAGE_DIFFERENCES)


@pytest.mark.parametrize(("mcp", "rest", "reason"), REST_ANSWERS_MORE)
def test_a_larger_rest_answer_extends_the_mcp_shape(mcp, rest, reason):
    assert issubclass(rest, mcp) and set(rest.model_fields) > set(mcp.model_fields), reason


def test_sessions_get_with_content_adds_the_fields_of_the_content_shape():
    """sessions_get(content=true) is REST's sessions/{id}/content/ folded into the record: the same names."""
    assert set(sessions.CONTENT_FIELDS) <= set(shapes.ContentOut.model_fields)
    assert set(sessions.CONTENT_FIELDS) <= set(sessions.SessionWithContent.model_fields)


def test_every_config_kind_with_a_rest_twin_is_in_the_table():
    """A new kind of configuration record (config_update's `kind`) must get its pair above."""
    paired = {m for m, _, _, _ in PAIRS} | {m for m, _ in OUTPUTS}
    outs = {kind.name: kind.out for kind in KINDS.values()}
    assert {name for name, out in outs.items() if out not in paired} == set(), outs


def test_the_check_sees_a_drift():
    """The comparison itself reports a field declared on one side only (the bug it guards against)."""

    class Narrower(io.ConnectionUpdate):
        runbooks_enabled = None  # DRF drops a field set to None in a subclass

    drift = _mcp_fields(connections.UpdateArgs, {}) ^ _rest_fields(Narrower)
    assert drift == {"connection_name", "runbooks_enabled"}
