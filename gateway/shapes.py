"""The output shape of every entity, declared once for both surfaces (issue 19 item 4).

A shape is a pydantic model of what a service's `*_to_dict` returns. The MCP tools use it as their
`outputSchema` and validate each result against it; the REST API describes its responses with it
(drf-spectacular reads pydantic models) and renders each body through it (`gateway.api.base.render`).
Unknown keys are refused (`extra="forbid"`), so a service dict that grows a field fails on both
surfaces until the shape has it, and the OpenAPI schema cannot omit a field that GET returns.

Pure: pydantic only, no Django, so any layer may import it (it sits with the pure modules in the
layer contract). The MCP-only parts stay in `mcpserver`: a record several tools return is described
in full by one tool (`mcpserver.registry.shared`), which an MCP subclass of the shape sets; it adds
no field.

Where the surfaces differ on purpose, the difference is here and nowhere else:

* **pages**: an MCP list answers `has_next_page` and `next_offset` (an agent passes an offset back);
  a REST list answers `next_cursor` and `next` (an opaque cursor, and the next page's URL).
  `OffsetPage` and `CursorPage` below are the two.
* **optional fields**: REST leaves a field the service did not set out of the body; MCP sends it as
  null (the SDK dumps every field). Both come from the same field of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, create_model

# Strings with a format the OpenAPI schema states (MCP's outputSchema leaves formats out: the
# registry drops them, as it drops descriptions, to keep tools/list small).
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Uuid = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]
Email = Annotated[str, WithJsonSchema({"type": "string", "format": "email"})]
Url = Annotated[str, WithJsonSchema({"type": "string", "format": "uri"})]

EXEC_STATUS = Literal["completed", "failed", "blocked", "pending_approval", "running"]
RISK_LEVEL = Literal["low", "medium", "high", "critical"]


# A result's rows. The schema says "an array" and no more: a client validating structured content
# against the output schema (the SDK client does) would otherwise walk every cell of a 100k-row
# result. The model checks a list and no more, for the same reason (walking the cells of 100k rows
# took 50 ms per answer); the connectors build every row as a list.
ROWS_SCHEMA = {"type": ["array", "null"], "description": "Lists of cells, in column order."}
Rows = Annotated[list[Any] | None, WithJsonSchema(ROWS_SCHEMA)]


class Shape(BaseModel):
    """Base of every output shape: unknown keys are refused, not dropped.

    `JSON_READY`: fields whose values are JSON values already (a result's rows, made JSON-safe by
    the connector or loaded from the stored result), which the MCP server hands on as they are
    instead of having pydantic walk them (mcpserver/server.py)."""

    model_config = ConfigDict(extra="forbid")
    JSON_READY: ClassVar[frozenset[str]] = frozenset()


# --- pages ---------------------------------------------------------------------------------------


class OffsetPage(Shape):
    """MCP's page fields (after `items`): pass `next_offset` back as `offset`."""

    total: int
    has_next_page: bool
    next_offset: int | None


class CursorPage(Shape):
    """REST's page fields (after `items`): pass `next_cursor` back as `cursor`, or follow `next`."""

    total: int
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")
    next: Url | None = Field(description="The URL of the next page; null on the last page.")


def cursor_page(name: str, item: type[Shape]) -> type[Shape]:
    """The REST page of `item`: `items`, then `CursorPage`'s fields."""
    fields: dict[str, Any] = {"items": (list[item], ...)}  # type: ignore[valid-type]
    fields.update({k: (f.annotation, f) for k, f in CursorPage.model_fields.items()})
    return create_model(name, __base__=Shape, **fields)


# --- connections ---------------------------------------------------------------------------------


class ConnectionOut(Shape):
    id: Uuid
    name: str
    kind: str
    description: str
    config: dict[str, Any] = Field(description="Non-secret settings.")
    secret_keys: list[str] = Field(
        description="Names of the secrets that are set; values are never returned."
    )
    access_groups: list[str]
    attributes: list[str]
    max_rows: int
    max_output_bytes: int
    timeout_seconds: int
    exec_enabled: bool
    schema_enabled: bool
    runbooks_enabled: bool
    agent_queue: str
    created_at: Timestamp
    updated_at: Timestamp


class ImportRowOut(Shape):
    row: int
    name: str
    status: Literal["created", "would_create", "error"]
    error: str | None = None


class ImportOut(Shape):
    rows: int
    created: int
    errors: int
    dry_run: bool
    results: list[ImportRowOut]


class ConnectionTestOut(Shape):
    connection_name: str
    ok: bool
    message: str
    latency_ms: int


class AccessControlOut(Shape):
    connection_name: str
    connection_id: Uuid
    allowed_groups: list[str]
    restricted: bool = Field(description="False: open to every member of the organization.")
    note: str


# --- users and groups ----------------------------------------------------------------------------


class UserOut(Shape):
    id: Uuid
    email: Email
    name: str
    status: Literal["active", "inactive"]
    groups: list[str]
    is_admin: bool
    is_auditor: bool
    date_joined: Timestamp


class GroupOut(Shape):
    id: str
    name: str
    reserved: bool
    members: list[Email]
    connections: list[str] = Field(description="Connections this group may use (access control).")
    created_at: Timestamp


# --- rules and attributes ------------------------------------------------------------------------


class GuardrailOut(Shape):
    id: Uuid
    name: str
    description: str
    message: str
    enabled: bool
    input: dict[str, Any] = Field(description="Input conditions.")
    output: dict[str, Any] = Field(description="Output conditions.")
    connections: list[str]
    attributes: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class MaskingOut(Shape):
    id: Uuid
    name: str
    description: str
    enabled: bool
    spec: dict[str, Any] = Field(description="What to mask and how.")
    connections: list[str]
    attributes: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class AttributeOut(Shape):
    id: Uuid
    name: str
    description: str
    connections: list[str]
    created_at: Timestamp


class AccessRuleOut(Shape):
    id: Uuid
    name: str
    description: str
    enabled: bool
    access_type: Literal["command", "jit", "jit_command"]
    approval_required_groups: list[str]
    skip_review_groups: list[str]
    reviewer_groups: list[str]
    force_approval_groups: list[str]
    all_groups_must_approve: bool
    min_approvals: int | None
    max_jit_duration_seconds: int | None
    time_window: dict[str, str] | None = Field(description="start_time and end_time, HH:MM UTC.")
    min_risk: str | None
    connections: list[str]
    attributes: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class RunbookRuleOut(Shape):
    id: Uuid
    name: str
    description: str
    enabled: bool
    groups: list[str]
    runbooks: list[str] = Field(description="Runbook names or globs.")
    connections: list[str]
    attributes: list[str]
    created_at: Timestamp
    updated_at: Timestamp


class RunbookBrief(Shape):
    """A runbook as MCP's runbooks_list shows it to whoever may run it: what running it needs. The
    REST list (GET runbooks/) answers the whole `RunbookOut`; MCP trims it, an agent's context being
    the scarcer resource (see tests/test_rest_mcp_fields.py)."""

    name: str
    connection_name: str
    description: str
    parameters: list[dict[str, Any]] = Field(
        description="Each: name, type (string|integer|number|boolean|enum|identifier), required, default, "
        "choices, allowed (identifier name globs), ..."
    )
    template: str


class RunbookOut(RunbookBrief):
    id: Uuid
    enabled: bool
    updated_at: Timestamp


# --- sessions and the audit log ------------------------------------------------------------------


class SessionOut(Shape):
    input_preview: str | None = Field(
        description="The input's shape: literals and long numbers as ?, secrets never (owner, admins, auditors)."
    )
    review_status: str | None = Field(description="Of its review, if it went through one.")
    review_id: str | None
    risk_level: str | None

    guardrails: list[str] = Field(description="Guardrails that blocked it or withheld its result.")
    guardrail_findings: list[dict[str, Any]] = Field(
        description="Which rule, which statement (admins, auditors)."
    )
    masking: dict[str, int] = Field(description="Values masked per entity type.")
    id: Uuid
    connection: str
    connection_kind: str
    user_email: Email
    surface: str
    client: str
    verb: str
    status: str
    exit_code: int | None
    row_count: int | None
    truncated: bool
    input_bytes: int
    input_sha256: str
    error: str
    metadata: dict[str, Any]
    created_at: Timestamp
    started_at: Timestamp | None
    ended_at: Timestamp | None
    execution_time_ms: int | None


class StatsOut(Shape):
    group_by: list[str]
    start_date: str = Field(description="The range counted: from (inclusive) ...")
    end_date: str = Field(description="... to (exclusive).")
    total: int
    groups: list[dict[str, Any]] = Field(description="One object per group: the group values and `count`.")


class AuditEventOut(Shape):
    id: int
    created_at: Timestamp
    actor_email: str
    surface: str
    client: str
    action: str
    target_type: str
    target_id: str
    target: str
    outcome: str
    detail: dict[str, Any]
    hash: str


class AnalysisOut(Shape):
    session_id: str
    status: Literal["ready", "pending"] = Field(
        description="pending until the analysis is stored (shortly after the session ends)."
    )
    risk_level: RISK_LEVEL | None
    title: str | None
    explanation: str | None
    suggested_action: str | None
    analyzer: str | None = Field(description='"builtin" or "llm:<model>".')
    fallback_reason: str | None = Field(
        description="Why the built-in analyzer answered although an LLM analyzer is configured."
    )
    reasons: list[str] = Field(description='Machine-readable reasons, e.g. "ddl.drop", "write.no_where".')
    created_at: Timestamp | None
    timed_out: bool
    waited_seconds: float


# --- reviews -------------------------------------------------------------------------------------


class ReviewDecision(Shape):
    group: str
    decision: str
    reviewer_email: Email
    reason: str
    forced: bool
    decided_at: Timestamp


class ReviewOut(Shape):
    id: Uuid
    session_id: Uuid | None
    type: Literal["onetime", "jit"]
    status: str = Field(description="PENDING, APPROVED, REJECTED, REVOKED, EXECUTED or EXPIRED.")
    connection_name: str
    requester_email: Email
    reason: str
    access_request_rule_name: str | None
    reviewer_groups: list[str]
    force_approval_groups: list[str]
    quorum: str
    min_approvals: int | None
    all_groups_must_approve: bool
    decisions: list[ReviewDecision]
    time_window: dict[str, str] | None
    duration_seconds: int | None
    access_until: Timestamp | None
    expires_at: Timestamp
    created_at: Timestamp
    decided_at: Timestamp | None
    executed_at: Timestamp | None
    rejection_reason: str | None
    review_url: str
    you_can_decide: bool
    you_can_revoke: bool
    input: str | None = Field(
        None, description="The exact input under review (requester, eligible reviewers, admins, auditors)."
    )
    input_sha256: str | None = None
    risk: dict[str, Any] | None = Field(None, description="The built-in analyzer's verdict on the input.")
    timed_out: bool | None = Field(None, description="Waits only: true when the wait ended first.")
    waited_seconds: float | None = Field(None, description="Waits only.")


class ReviewSettingsOut(Shape):
    allow_self_approval: bool
    mcp_decisions_enabled: bool
    review_ttl_seconds: int


# --- webhooks ------------------------------------------------------------------------------------


class WebhookOut(Shape):
    id: Uuid
    name: str
    url: str
    event_types: list[str]
    enabled: bool
    allow_private_network: bool
    has_secret: bool = Field(description="The secret itself is write-only.")
    created_at: Timestamp
    updated_at: Timestamp


class DeliveryOut(Shape):
    id: int
    webhook_name: str
    event_id: Uuid
    event_type: str
    status: Literal["pending", "delivered", "failed", "dead"]
    attempts: int
    response_code: int | None
    last_error: str
    created_at: Timestamp
    last_attempt_at: Timestamp | None
    next_attempt_at: Timestamp
    delivered_at: Timestamp | None


class TimelineEvent(Shape):
    event: str
    at: Timestamp
    detail: str


class ContentOut(Shape):
    """A session's input and output, the output paged by bytes (REST's sessions/{id}/content/; MCP
    adds the same fields to sessions_get with `content: true`)."""

    id: Uuid
    connection: str
    status: str
    verb: str
    input: str
    input_truncated: bool
    output: str
    output_offset: int
    output_total_bytes: int
    next_offset: int | None
    columns: list[str] | None
    rows: Rows
    exit_code: int | None
    error: str
    timeline: list[TimelineEvent] = Field(
        description="What happened, in order: recorded, queued_for_review, review decisions, approved, "
        "run_requested, started, finished (or blocked/failed/cancelled), analysed."
    )


# --- schema introspection (each listing a recorded session) -------------------------------------


class DatabaseItem(Shape):
    name: str


class TableItem(Shape):
    schema_: str | None = Field(None, alias="schema")
    name: str
    type: str


class ColumnItem(Shape):
    name: str
    type: str | None
    nullable: bool
    default: Any = None
    position: int


# --- exec and its dry runs -----------------------------------------------------------------------


class ExecOut(Shape):
    """The exec envelope: exec, sessions_wait, runbooks_run and reviews_execute answer it."""

    JSON_READY = frozenset({"rows"})

    status: EXEC_STATUS
    session_id: Uuid
    session_status: str
    output: str | None = None
    columns: list[str] | None = None
    rows: Rows = None
    row_count: int | None = None
    truncated: bool | None = None
    exit_code: int | None = None
    execution_time_ms: int | None = None
    analysis: dict[str, Any] | None = None
    masking: dict[str, int] | None = Field(
        None, description="How many values of each entity type were masked."
    )
    rule: str | None = Field(None, description="The guardrail that blocked it (its name only).")
    review_id: str | None = Field(None, description="With pending_approval: the review to wait for.")
    review_url: str | None = Field(None, description="With pending_approval: the reviewers' web page.")
    message: str | None = None
    next_step: str | None = None
    timed_out: bool | None = Field(None, description="Waits only: true when the wait ended first.")


class ExplainFinding(Shape):
    rule: str
    direction: str
    condition: str
    statement: int | None
    detail: str


class ExplainOut(Shape):
    connection_name: str
    would_run: bool
    blocked_by: list[str] = Field(description="Names of the guardrails that would block it.")
    # Sequence: MCP narrows it to its subclass that says the record is described once (by exec_explain).
    findings: Sequence[ExplainFinding] = Field(description="Details, for admins and auditors only.")
    read_only: bool = Field(description="Whether it would run in a read-only transaction.")
    max_affected_rows: int | None = Field(
        None, description="A guardrail's ceiling on changed rows: more is rolled back and blocked."
    )
    guardrails_evaluated: list[str]
    masking_rules: list[str]
    unavailable_entities: list[str]
    review_required: bool
    review_rule: str | None = Field(None, description="The access request rule that asks for a review.")
    risk: dict[str, Any] | None = Field(None, description="The built-in analyzer's verdict on this input.")


class GuardrailTestOut(Shape):
    blocked: bool
    rules_evaluated: list[str]
    findings: Sequence[ExplainFinding]  # as ExplainOut's
    read_only: bool


class MaskingPreviewOut(Shape):
    text: str | None = None
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    counts: dict[str, int]
    unavailable_entities: list[str]


# --- who and where -------------------------------------------------------------------------------


class MeOut(Shape):
    user_id: Uuid
    user_email: Email
    user_name: str
    org_id: Uuid
    org_name: str
    groups: list[str]
    is_admin: bool
    is_auditor: bool
    capability: Literal["read_only", "read_write", "admin"] = Field(
        description="The token's ceiling: read_only, read_write or admin."
    )
    capability_explained: str = Field(description="What the capability does to your roles here.")
    client: str


class ServerInfoOut(Shape):
    name: str
    version: str
    api_url: str
    mcp_url: str
    auth_methods: list[str]
    connection_kinds: list[str]
    command_connections_enabled: bool
    exec_handoff_seconds: float
    max_input_bytes: int
    outbox_backlog: dict[str, Any] | None = Field(
        None,
        description="Admins: messages waiting to leave (events, analyses, agent dispatches) per kind, with the "
        "age of the oldest in seconds. A growing backlog means the broker or a sink is down; nothing is lost.",
    )


# --- upstream MCP servers (connection kind mcp) --------------------------------------------------


class UpstreamToolOut(Shape):
    name: str
    title: str | None = None
    description: str | None = None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None
    requires_approval: bool


class UpstreamToolsOut(Shape):
    connection_name: str
    items: list[UpstreamToolOut]
    total: int


class UpstreamCallOut(Shape):
    status: EXEC_STATUS
    session_id: Uuid
    session_status: str
    connection_name: str
    tool: str
    content: list[dict[str, Any]] = Field(description="The upstream's content blocks, masked.")
    structured_content: Any = Field(None, description="The upstream's structured content, masked.")
    is_error: bool
    message: str | None = None
    execution_time_ms: int | None = None
    masking: dict[str, int] | None = Field(
        None, description="How many values of each entity type were masked."
    )
    rule: str | None = Field(None, description="The guardrail that blocked it (its name only).")
    review_id: str | None = Field(None, description="With pending_approval: the review to wait for.")
    review_url: str | None = Field(None, description="With pending_approval: the reviewers' web page.")


class ContractOut(Shape):
    connection_name: str
    kind: str
    tool: str = Field(
        description="The tool's name (a resource's URI, a template's URI template, a prompt's name)."
    )
    status: str
    pinned_sha256: str | None
    observed_sha256: str
    pinned: dict[str, Any] | None = Field(
        description="The accepted contract (null for a tool never accepted)."
    )
    observed: dict[str, Any] = Field(description="What the upstream showed last.")
    first_seen_at: Timestamp
    last_seen_at: Timestamp
    accepted_at: Timestamp | None


class ContractsOut(Shape):
    items: list[ContractOut]
    total: int
