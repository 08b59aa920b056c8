"""Input serializers (strict: unknown keys refused) and output shapes (for the OpenAPI schema; the
bodies themselves are the services' `*_to_dict`)."""

from __future__ import annotations

from rest_framework import serializers as s

from gateway.api.base import Char, StrictSerializer, page_serializer
from gateway.kinds import SQL_DIALECTS
from gateway.models import ConnectionKind, ContractKind, ContractStatus
from sessions.models import SessionStatus

NAME = {"min_length": 1, "max_length": 63}
GROUP = {"min_length": 1, "max_length": 100}


class Names(s.ListField):
    def __init__(self, **kwargs):
        kwargs.setdefault("child", Char(**GROUP))
        kwargs.setdefault("max_length", 500)
        super().__init__(**kwargs)


class PageOnly(StrictSerializer):
    """The query of every list: `limit` (1-100) and the `cursor` of the previous page."""

    limit = s.IntegerField(min_value=1, max_value=100, default=50)
    cursor = Char(max_length=100, required=False, help_text="The next_cursor of the previous page.")


# --- connections ---------------------------------------------------------------------------------


class ConnectionOptions(StrictSerializer):
    description = Char(max_length=500, required=False, allow_blank=True)
    max_rows = s.IntegerField(min_value=1, max_value=1_000_000, required=False)
    max_output_bytes = s.IntegerField(min_value=1024, max_value=64 * 1024 * 1024, required=False)
    timeout_seconds = s.IntegerField(min_value=1, max_value=86_400, required=False)
    exec_enabled = s.BooleanField(required=False)
    schema_enabled = s.BooleanField(required=False)
    runbooks_enabled = s.BooleanField(required=False)
    agent_queue = Char(max_length=63, required=False, allow_blank=True)


class ConnectionCreate(ConnectionOptions):
    name = Char(**NAME)
    kind = s.ChoiceField(choices=ConnectionKind.choices)
    settings = s.DictField(
        help_text="Settings of the target, secrets included (stored encrypted, never returned): "
        "postgres/mysql: host, port, database, user, password; sqlite: path; command: argv, cwd, env."
    )


class ConnectionUpdate(ConnectionOptions):
    settings = s.DictField(
        required=False,
        help_text="Keys to change; a key set to null is removed; a secret given replaces only that secret.",
    )


class ConnectionOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    kind = Char()
    description = Char()
    config = s.DictField(help_text="Non-secret settings.")
    secret_keys = s.ListField(child=Char(), help_text="Names of the secrets that are set; never values.")
    access_groups = s.ListField(child=Char())
    attributes = s.ListField(child=Char())
    max_rows = s.IntegerField()
    max_output_bytes = s.IntegerField()
    timeout_seconds = s.IntegerField()
    exec_enabled = s.BooleanField()
    schema_enabled = s.BooleanField()
    runbooks_enabled = s.BooleanField()
    agent_queue = Char()
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


class ConnectionQuery(PageOnly):
    search = Char(max_length=100, required=False)
    kind = s.ChoiceField(choices=ConnectionKind.choices, required=False)
    selector = Char(max_length=300, required=False, help_text="Attributes all to match: env=prod,tier.")


class ConnectionImport(StrictSerializer):
    csv = Char(max_length=1_000_000, required=False, help_text="A header row, then one connection per row.")
    rows = s.ListField(child=s.DictField(), max_length=500, required=False)
    dry_run = s.BooleanField(default=False)


class ImportRowOut(s.Serializer):
    row = s.IntegerField()
    name = Char()
    status = s.ChoiceField(choices=["created", "would_create", "error"])
    error = Char(required=False)


class ImportOut(s.Serializer):
    rows = s.IntegerField()
    created = s.IntegerField()
    errors = s.IntegerField()
    dry_run = s.BooleanField()
    results = ImportRowOut(many=True)


class ReviewSettingsIn(StrictSerializer):
    allow_self_approval = s.BooleanField(required=False)
    mcp_decisions_enabled = s.BooleanField(required=False)
    review_ttl_seconds = s.IntegerField(min_value=60, max_value=30 * 24 * 3600, required=False)


class ReviewSettingsOut(s.Serializer):
    allow_self_approval = s.BooleanField()
    mcp_decisions_enabled = s.BooleanField()
    review_ttl_seconds = s.IntegerField()


class RunbookIn(StrictSerializer):
    connection_name = Char(**NAME)
    name = Char(**NAME)
    template = Char(max_length=100_000)
    parameters = s.ListField(child=s.DictField(), max_length=50, required=False)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)


class RunbookPatch(StrictSerializer):
    name = Char(**NAME, required=False)
    template = Char(max_length=100_000, required=False)
    parameters = s.ListField(child=s.DictField(), max_length=50, required=False)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)


class RunbookOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    connection_name = Char()
    description = Char()
    parameters = s.ListField(child=s.DictField())
    template = Char()
    enabled = s.BooleanField()
    updated_at = s.DateTimeField()


class WebhookIn(StrictSerializer):
    name = Char(**NAME)
    url = Char(max_length=2000)
    secret = Char(min_length=16, max_length=500, write_only=True, help_text="Write-only HMAC key.")
    event_types = s.ListField(child=Char(max_length=64), max_length=50, required=False)
    enabled = s.BooleanField(default=True)
    allow_private_network = s.BooleanField(default=False)


class WebhookPatch(StrictSerializer):
    name = Char(**NAME, required=False)
    url = Char(max_length=2000, required=False)
    secret = Char(min_length=16, max_length=500, write_only=True, required=False)
    event_types = s.ListField(child=Char(max_length=64), max_length=50, required=False)
    enabled = s.BooleanField(required=False)
    allow_private_network = s.BooleanField(required=False)


class WebhookOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    url = Char()
    event_types = s.ListField(child=Char())
    enabled = s.BooleanField()
    allow_private_network = s.BooleanField()
    has_secret = s.BooleanField()
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


# --- access control ------------------------------------------------------------------------------


class AccessControlSet(StrictSerializer):
    groups = Names(min_length=1, help_text="Group names; replaces the current list.")


class AccessControlOut(s.Serializer):
    connection_name = Char()
    connection_id = s.UUIDField()
    allowed_groups = s.ListField(child=Char())
    restricted = s.BooleanField(help_text="False: every member of the organization may use it.")
    note = Char()


# --- users and groups ----------------------------------------------------------------------------


class UserCreate(StrictSerializer):
    email = s.EmailField(max_length=254)
    name = Char(max_length=150, required=False, allow_blank=True, default="")
    groups = Names(required=False, default=list)


class UserUpdate(StrictSerializer):
    name = Char(max_length=150, required=False, allow_blank=True)
    is_active = s.BooleanField(required=False)
    groups = Names(required=False, help_text="Replaces the user's groups.")


class UserOut(s.Serializer):
    id = s.UUIDField()
    email = s.EmailField()
    name = Char()
    status = s.ChoiceField(choices=["active", "inactive"])
    groups = s.ListField(child=Char())
    is_admin = s.BooleanField()
    is_auditor = s.BooleanField()
    date_joined = s.DateTimeField()


class UserQuery(PageOnly):
    search = Char(max_length=100, required=False)
    group = Char(max_length=100, required=False)
    active = s.BooleanField(required=False, allow_null=True, default=None)


class GroupCreate(StrictSerializer):
    name = Char(**GROUP)
    members = s.ListField(child=s.EmailField(), required=False, max_length=1000, help_text="E-mails.")


class GroupUpdate(StrictSerializer):
    name = Char(required=False, help_text="A new name (reserved groups keep theirs).", **GROUP)
    members = s.ListField(
        child=s.EmailField(), required=False, max_length=1000, help_text="Replaces members."
    )
    add = s.ListField(child=s.EmailField(), required=False, max_length=1000)
    remove = s.ListField(child=s.EmailField(), required=False, max_length=1000)


class GroupOut(s.Serializer):
    id = Char()
    name = Char()
    reserved = s.BooleanField()
    members = s.ListField(child=s.EmailField())
    connections = s.ListField(child=Char(), help_text="Connections this group guards.")
    created_at = s.DateTimeField()


class SearchQuery(PageOnly):
    search = Char(max_length=100, required=False)


# --- rules and attributes ------------------------------------------------------------------------


class Bindings(StrictSerializer):
    connections = Names(required=False, help_text="Connection names; replaces the list.")
    attributes = Names(required=False, help_text="Attribute names; replaces the list.")


class GuardrailCreate(Bindings):
    name = Char(**NAME)
    description = Char(max_length=500, required=False, allow_blank=True)
    message = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)
    input = s.DictField(required=False, allow_null=True, help_text="Input conditions (see docs/guardrails).")
    output = s.DictField(required=False, allow_null=True, help_text="Output conditions.")


class GuardrailUpdate(GuardrailCreate):
    name = Char(required=False, **NAME)


class GuardrailOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    description = Char()
    message = Char()
    enabled = s.BooleanField()
    input = s.DictField()
    output = s.DictField()
    connections = s.ListField(child=Char())
    attributes = s.ListField(child=Char())
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


class MaskingCreate(Bindings):
    name = Char(**NAME)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)
    spec = s.DictField(help_text="What to mask and how (see docs/guardrails-and-masking.md).")


class MaskingUpdate(MaskingCreate):
    name = Char(required=False, **NAME)
    spec = s.DictField(required=False)


class MaskingOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    description = Char()
    enabled = s.BooleanField()
    spec = s.DictField()
    connections = s.ListField(child=Char())
    attributes = s.ListField(child=Char())
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


class AttributeCreate(StrictSerializer):
    name = Char(**NAME)
    description = Char(max_length=500, required=False, allow_blank=True, default="")
    connections = Names(required=False)


class AttributeUpdate(StrictSerializer):
    description = Char(max_length=500, required=False, allow_blank=True)
    connections = Names(required=False, help_text="Replaces the list.")
    add_connections = Names(required=False, help_text="Tag these too.")
    remove_connections = Names(required=False, help_text="Untag these.")


class AttributeOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    description = Char()
    connections = s.ListField(child=Char())
    created_at = s.DateTimeField()


# --- sessions, audit, exec -----------------------------------------------------------------------


class SessionQuery(PageOnly):
    user_email = Char(max_length=254, required=False)
    connection = Char(max_length=63, required=False)
    status = s.ChoiceField(choices=SessionStatus.choices, required=False)
    verb = Char(max_length=16, required=False)
    surface = Char(max_length=16, required=False)
    risk_level = s.ChoiceField(choices=["low", "medium", "high", "critical"], required=False)
    review_status = s.ChoiceField(
        choices=["PENDING", "APPROVED", "REJECTED", "REVOKED", "EXECUTED", "EXPIRED"], required=False
    )
    rule = Char(max_length=100, required=False, help_text="A guardrail rule named in the session's findings.")
    text = Char(max_length=200, required=False, help_text="Case-insensitive substring of the input.")
    start_date = Char(max_length=40, required=False, help_text="RFC 3339, inclusive.")
    end_date = Char(max_length=40, required=False, help_text="RFC 3339, exclusive.")
    limit = s.IntegerField(min_value=1, max_value=100, default=20)


class StatsQuery(StrictSerializer):
    group_by = Char(max_length=100, help_text="One to three groups, comma-separated.")
    start_date = Char(max_length=40, required=False)
    end_date = Char(max_length=40, required=False)
    connection = Char(max_length=63, required=False)
    status = s.ChoiceField(choices=SessionStatus.choices, required=False)
    review_status = s.ChoiceField(
        choices=["PENDING", "APPROVED", "REJECTED", "REVOKED", "EXECUTED", "EXPIRED"], required=False
    )
    rule = Char(max_length=100, required=False)
    risk_level = s.ChoiceField(choices=["low", "medium", "high", "critical"], required=False)
    user_email = Char(max_length=254, required=False)


class StatsOut(s.Serializer):
    group_by = s.ListField(child=Char())
    start_date = Char()
    end_date = Char()
    total = s.IntegerField()
    groups = s.ListField(child=s.DictField())


class SessionOut(s.Serializer):
    input_preview = Char(allow_null=True, help_text="Literals and long numbers as ?, secrets never.")
    review_status = Char(allow_null=True)
    review_id = Char(allow_null=True)
    risk_level = Char(allow_null=True)
    id = s.UUIDField()
    connection = Char()
    connection_kind = Char()
    user_email = s.EmailField()
    surface = Char()
    client = Char()
    verb = Char()
    status = Char()
    exit_code = s.IntegerField(allow_null=True)
    row_count = s.IntegerField(allow_null=True)
    truncated = s.BooleanField()
    input_bytes = s.IntegerField()
    input_sha256 = Char()
    error = Char()
    metadata = s.DictField()
    guardrails = s.ListField(child=Char())
    guardrail_findings = s.ListField(child=s.DictField(), help_text="Admins and auditors only.")
    masking = s.DictField(child=s.IntegerField())
    created_at = s.DateTimeField()
    started_at = s.DateTimeField(allow_null=True)
    ended_at = s.DateTimeField(allow_null=True)
    execution_time_ms = s.IntegerField(allow_null=True)


class ContentQuery(StrictSerializer):
    offset = s.IntegerField(min_value=0, default=0, help_text="Byte offset into the output.")
    max_bytes = s.IntegerField(min_value=1, max_value=1024 * 1024, default=64 * 1024)


class ContentOut(s.Serializer):
    id = s.UUIDField()
    connection = Char()
    status = Char()
    verb = Char()
    input = Char()
    input_truncated = s.BooleanField()
    output = Char()
    output_offset = s.IntegerField()
    output_total_bytes = s.IntegerField()
    next_offset = s.IntegerField(allow_null=True)
    columns = s.ListField(child=Char(), allow_null=True)
    rows = s.ListField(child=s.ListField(), allow_null=True)
    exit_code = s.IntegerField(allow_null=True)
    error = Char()


class AuditQuery(PageOnly):
    actor_email = Char(max_length=254, required=False)
    action = Char(max_length=100, required=False, help_text="Exact, or a prefix ending in '.'.")
    surface = Char(max_length=16, required=False)
    outcome = Char(max_length=16, required=False)
    start_date = Char(max_length=40, required=False)
    end_date = Char(max_length=40, required=False)


class AuditEventOut(s.Serializer):
    id = s.IntegerField()
    created_at = s.DateTimeField()
    actor_email = Char()
    surface = Char()
    client = Char()
    action = Char()
    target_type = Char()
    target_id = Char()
    target = Char()
    outcome = Char()
    detail = s.DictField()
    hash = Char()


class ExecIn(StrictSerializer):
    connection_name = Char(**NAME)
    input = Char(trim_whitespace=False, help_text="SQL, or stdin for command connections.")
    max_rows = s.IntegerField(min_value=1, max_value=1_000_000, required=False)
    metadata = s.DictField(required=False, help_text="Attached to the session record.")
    timeout_seconds = s.FloatField(
        min_value=0,
        max_value=300,
        required=False,
        help_text="Wait this long for the result before answering `running` (default: the gateway's handoff).",
    )
    idempotency_key = Char(
        max_length=200,
        required=False,
        help_text="A unique string for this request (or the Idempotency-Key header): a retry with it returns the "
        "first attempt's session and never runs twice.",
    )


class ExecOut(s.Serializer):
    status = s.ChoiceField(choices=["completed", "failed", "blocked", "pending_approval", "running"])
    timed_out = s.BooleanField(required=False, help_text="Waits only: true when the wait ended first.")
    session_id = s.UUIDField()
    session_status = Char()
    output = Char(required=False)
    columns = s.ListField(child=Char(), required=False)
    rows = s.ListField(child=s.ListField(), required=False)
    row_count = s.IntegerField(required=False, allow_null=True)
    truncated = s.BooleanField(required=False)
    exit_code = s.IntegerField(required=False, allow_null=True)
    execution_time_ms = s.IntegerField(required=False, allow_null=True)
    analysis = s.DictField(required=False, allow_null=True)
    masking = s.DictField(child=s.IntegerField(), required=False)
    rule = Char(required=False, allow_null=True, help_text="The guardrail that blocked it (name only).")
    message = Char(required=False)
    next_step = Char(required=False)
    review_id = Char(required=False, allow_null=True)
    review_url = Char(required=False, allow_null=True)
    timed_out = s.BooleanField(required=False)


class MeOut(s.Serializer):
    user_id = s.UUIDField()
    user_email = s.EmailField()
    org_name = Char()
    groups = s.ListField(child=Char())
    is_admin = s.BooleanField()
    is_auditor = s.BooleanField()
    capability = s.ChoiceField(choices=["read_only", "read_write", "admin"])
    capability_explained = Char()
    client = Char()


class Deleted(s.Serializer):
    name = Char()
    deleted = s.BooleanField()


ConnectionPage = page_serializer("ConnectionPage", ConnectionOut)
AccessControlPage = page_serializer("AccessControlPage", AccessControlOut)
UserPage = page_serializer("UserPage", UserOut)
GroupPage = page_serializer("GroupPage", GroupOut)
GuardrailPage = page_serializer("GuardrailPage", GuardrailOut)
MaskingPage = page_serializer("MaskingRulePage", MaskingOut)
AttributePage = page_serializer("AttributePage", AttributeOut)
SessionPage = page_serializer("SessionPage", SessionOut)
AuditEventPage = page_serializer("AuditEventPage", AuditEventOut)


# --- reviews -------------------------------------------------------------------------------------


class ReviewQuery(PageOnly):
    status = Char(max_length=16, required=False, help_text="PENDING, APPROVED, REJECTED, ...")
    type = s.ChoiceField(choices=["onetime", "jit"], required=False)
    connection = Char(max_length=63, required=False)
    waiting_for_me = s.BooleanField(required=False, default=False)
    mine = s.BooleanField(required=False, default=False)
    limit = s.IntegerField(min_value=1, max_value=100, default=20)


class ReviewDecide(StrictSerializer):
    status = s.ChoiceField(choices=["APPROVED", "REJECTED", "REVOKED"])
    reason = Char(max_length=1000, required=False, allow_blank=True, default="")
    force = s.BooleanField(required=False, default=False, help_text="Force-approval groups only.")


class ReviewDecision(s.Serializer):
    group = Char()
    decision = Char()
    reviewer_email = s.EmailField()
    reason = Char()
    forced = s.BooleanField()
    decided_at = s.DateTimeField()


class ReviewOut(s.Serializer):
    id = s.UUIDField()
    session_id = s.UUIDField(allow_null=True)
    type = Char()
    status = Char()
    connection_name = Char()
    requester_email = s.EmailField()
    reason = Char()
    access_request_rule_name = Char(allow_null=True)
    reviewer_groups = s.ListField(child=Char())
    force_approval_groups = s.ListField(child=Char())
    quorum = Char()
    min_approvals = s.IntegerField(allow_null=True)
    all_groups_must_approve = s.BooleanField()
    decisions = ReviewDecision(many=True)
    time_window = s.DictField(allow_null=True)
    duration_seconds = s.IntegerField(allow_null=True)
    access_until = s.DateTimeField(allow_null=True)
    expires_at = s.DateTimeField()
    created_at = s.DateTimeField()
    decided_at = s.DateTimeField(allow_null=True)
    executed_at = s.DateTimeField(allow_null=True)
    rejection_reason = Char(allow_null=True)
    review_url = Char()
    you_can_decide = s.BooleanField()
    you_can_revoke = s.BooleanField()
    input = Char(required=False, help_text="Reviewers, the requester, admins and auditors only.")
    input_sha256 = Char(required=False, allow_null=True)
    risk = s.DictField(required=False, allow_null=True)


ReviewPage = page_serializer("ReviewPage", ReviewOut)
WebhookPage = page_serializer("WebhookPage", WebhookOut)


# --- access request rules, runbook rules, JIT requests, schema, analyses, explain ---------------------

ACCESS_TYPES = ["command", "jit", "jit_command"]
RISKS = ["low", "medium", "high", "critical"]


class TimeWindowIn(StrictSerializer):
    start_time = Char(max_length=5, help_text="HH:MM, UTC")
    end_time = Char(max_length=5, help_text="HH:MM, UTC")


class AccessRuleUpdate(StrictSerializer):
    name = Char(**NAME, required=False)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)
    access_type = s.ChoiceField(choices=ACCESS_TYPES, required=False)
    approval_required_groups = Names(required=False)
    skip_review_groups = Names(required=False)
    reviewer_groups = Names(required=False)
    force_approval_groups = Names(required=False)
    all_groups_must_approve = s.BooleanField(required=False)
    min_approvals = s.IntegerField(min_value=1, max_value=100, required=False)
    max_jit_duration_seconds = s.IntegerField(min_value=60, max_value=30 * 24 * 3600, required=False)
    time_window = TimeWindowIn(required=False, allow_null=True)
    min_risk = s.ChoiceField(choices=RISKS, required=False, allow_null=True)
    connections = Names(required=False)
    attributes = Names(required=False)


class AccessRuleCreate(AccessRuleUpdate):
    name = Char(**NAME)
    access_type = s.ChoiceField(choices=ACCESS_TYPES)
    reviewer_groups = Names()


class AccessRuleOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    description = Char()
    enabled = s.BooleanField()
    access_type = Char()
    approval_required_groups = s.ListField(child=Char())
    skip_review_groups = s.ListField(child=Char())
    reviewer_groups = s.ListField(child=Char())
    force_approval_groups = s.ListField(child=Char())
    all_groups_must_approve = s.BooleanField()
    min_approvals = s.IntegerField(allow_null=True)
    max_jit_duration_seconds = s.IntegerField()
    time_window = s.DictField(allow_null=True)
    min_risk = Char(allow_null=True)
    connections = s.ListField(child=Char())
    attributes = s.ListField(child=Char())
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


class RunbookRuleUpdate(StrictSerializer):
    name = Char(**NAME, required=False)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)
    groups = Names(required=False)
    runbooks = Names(required=False, help_text="Runbook names or globs.")
    connections = Names(required=False)
    attributes = Names(required=False)


class RunbookRuleCreate(RunbookRuleUpdate):
    name = Char(**NAME)


class RunbookRuleOut(s.Serializer):
    id = s.UUIDField()
    name = Char()
    description = Char()
    enabled = s.BooleanField()
    groups = s.ListField(child=Char())
    runbooks = s.ListField(child=Char())
    connections = s.ListField(child=Char())
    attributes = s.ListField(child=Char())
    created_at = s.DateTimeField()
    updated_at = s.DateTimeField()


class AccessRequestIn(StrictSerializer):
    connection_name = Char(**NAME)
    reason = Char(max_length=1000)
    duration_seconds = s.IntegerField(min_value=60, max_value=30 * 24 * 3600, required=False)


class SchemaQuery(StrictSerializer):
    database = Char(max_length=128, required=False)
    schema = Char(max_length=128, required=False)
    table = Char(max_length=256, required=False)


class ExplainIn(StrictSerializer):
    connection_name = Char(**NAME)
    input = Char(max_length=1_000_000, trim_whitespace=False)


AccessRulePage = page_serializer("AccessRulePage", AccessRuleOut)
RunbookRulePage = page_serializer("RunbookRulePage", RunbookRuleOut)


class SchemaOut(s.Serializer):
    connection_name = Char()
    items = s.ListField(
        child=s.DictField(), help_text="databases: name; tables: schema, name, type; columns: ..."
    )


class ExplainOut(s.Serializer):
    blocked_by = s.ListField(child=Char())
    findings = s.ListField(child=s.DictField(), help_text="Admins and auditors only.")
    read_only = s.BooleanField()
    masking_rules = s.ListField(child=Char(), required=False)
    review_required = s.BooleanField(required=False)
    review_rule = Char(allow_null=True, required=False)
    risk = s.DictField(allow_null=True, required=False)


class AnalysisOut(s.Serializer):
    session_id = Char()
    status = s.ChoiceField(choices=["ready", "pending"])
    risk_level = Char(allow_null=True)
    title = Char(allow_null=True)
    explanation = Char(allow_null=True)
    suggested_action = Char(allow_null=True)


class GuardrailTestIn(StrictSerializer):
    input = Char(max_length=1_000_000, trim_whitespace=False)
    rule_name = Char(max_length=100, required=False, help_text="A stored rule (name or id)...")
    connection_name = Char(**NAME, required=False, help_text="...or every rule bound to this connection.")
    direction = s.ChoiceField(choices=["input", "output"], default="input")
    dialect = s.ChoiceField(choices=list(dict.fromkeys(SQL_DIALECTS.values())), required=False)


class MaskingPreviewIn(StrictSerializer):
    rule_name = Char(max_length=100, required=False)
    spec = s.DictField(required=False)
    text = Char(max_length=100_000, required=False, trim_whitespace=False)
    columns = s.ListField(child=Char(max_length=200), max_length=200, required=False)
    rows = s.ListField(child=s.ListField(), max_length=1000, required=False)
    connection_name = Char(**NAME, required=False)
    input = Char(max_length=100_000, required=False)


class GuardrailTestOut(s.Serializer):
    blocked = s.BooleanField()
    rules_evaluated = s.ListField(child=Char())
    findings = s.ListField(child=s.DictField())
    read_only = s.BooleanField()


class MaskingPreviewOut(s.Serializer):
    text = Char(allow_null=True, required=False)
    columns = s.ListField(child=Char(), allow_null=True, required=False)
    rows = s.ListField(child=s.ListField(), allow_null=True, required=False)
    counts = s.DictField(child=s.IntegerField())
    unavailable_entities = s.ListField(child=Char())


class ConnectionTestOut(s.Serializer):
    connection_name = Char()
    ok = s.BooleanField()
    message = Char()
    latency_ms = s.IntegerField()


class RunbookRunIn(StrictSerializer):
    parameters = s.DictField(required=False, help_text="Values for the runbook's parameters.")
    timeout_seconds = s.FloatField(min_value=1, max_value=300, required=False)
    idempotency_key = Char(max_length=200, required=False)


# --- long polls, server facts, webhook deliveries ------------------------------------------------


class WaitQuery(StrictSerializer):
    timeout_seconds = s.FloatField(
        min_value=0, max_value=300, default=45, help_text="Seconds to wait (default 45); then timed_out=true."
    )


class AnalysisQuery(StrictSerializer):
    timeout_seconds = s.FloatField(
        min_value=0, max_value=300, default=0, help_text="Wait up to this long while the analysis is pending."
    )


class Waited(s.Serializer):
    timed_out = s.BooleanField()
    waited_seconds = s.FloatField()


class ReviewWaited(ReviewOut, Waited):
    pass


class AnalysisWaited(AnalysisOut, Waited):
    pass


class ServerInfoOut(s.Serializer):
    name = Char()
    version = Char()
    api_url = Char()
    mcp_url = Char()
    auth_methods = s.ListField(child=Char())
    connection_kinds = s.ListField(child=Char())
    command_connections_enabled = s.BooleanField()
    exec_handoff_seconds = s.FloatField()
    max_input_bytes = s.IntegerField()
    outbox_backlog = s.DictField(allow_null=True, help_text="Admins only.")


class DeliveryQuery(PageOnly):
    webhook_name = Char(**NAME, required=False)
    status = Char(max_length=16, required=False, help_text="pending, delivered, failed or dead.")


class DeliveryOut(s.Serializer):
    id = s.IntegerField()
    webhook_name = Char()
    event_id = s.UUIDField()
    event_type = Char()
    status = Char(help_text="pending, delivered, failed or dead.")
    attempts = s.IntegerField()
    response_code = s.IntegerField(allow_null=True)
    last_error = Char()
    created_at = s.DateTimeField()
    last_attempt_at = s.DateTimeField(allow_null=True)
    next_attempt_at = s.DateTimeField()
    delivered_at = s.DateTimeField(allow_null=True)


DeliveryPage = page_serializer("DeliveryPage", DeliveryOut)


class RetryIn(StrictSerializer):
    delivery_ids = s.ListField(child=s.IntegerField(min_value=1), min_length=1, max_length=500)


class RetryOut(s.Serializer):
    retried = s.IntegerField(help_text="How many failed or dead deliveries were queued again.")


# --- upstream MCP servers (connection kind mcp) --------------------------------------------------

CONTRACT_KINDS = ContractKind.choices
CONTRACT_STATUSES = ContractStatus.choices


class UpstreamToolOut(s.Serializer):
    name = Char()
    title = Char(allow_null=True, required=False)
    description = Char(allow_null=True, required=False)
    input_schema = s.DictField()
    output_schema = s.DictField(allow_null=True, required=False)
    annotations = s.DictField(allow_null=True, required=False)
    requires_approval = s.BooleanField()


class UpstreamToolsOut(s.Serializer):
    connection_name = Char()
    items = UpstreamToolOut(many=True)
    total = s.IntegerField()


class UpstreamCallIn(StrictSerializer):
    tool = Char(min_length=1, max_length=128)
    arguments = s.DictField(required=False, default=dict, help_text="The upstream tool's arguments.")
    idempotency_key = Char(
        max_length=200,
        required=False,
        help_text="As for exec/ (or the Idempotency-Key header): a retry never calls the tool twice.",
    )


class UpstreamCallOut(s.Serializer):
    status = s.ChoiceField(choices=["completed", "failed", "blocked", "pending_approval", "running"])
    session_id = s.UUIDField()
    session_status = Char()
    connection_name = Char()
    tool = Char()
    content = s.ListField(child=s.DictField(), help_text="The upstream's content blocks, masked.")
    structured_content = s.JSONField(allow_null=True, help_text="The upstream's structured content, masked.")
    is_error = s.BooleanField()
    message = Char(allow_null=True)
    execution_time_ms = s.IntegerField(allow_null=True)
    masking = s.DictField(child=s.IntegerField(), allow_null=True)
    rule = Char(allow_null=True, help_text="The guardrail that blocked it (name only).")
    review_id = Char(required=False, allow_null=True)
    review_url = Char(required=False, allow_null=True)


class ContractQuery(StrictSerializer):
    status = s.ChoiceField(choices=CONTRACT_STATUSES, required=False)
    kind = s.ChoiceField(choices=CONTRACT_KINDS, required=False)


class ContractOut(s.Serializer):
    connection_name = Char()
    kind = s.ChoiceField(choices=CONTRACT_KINDS)
    tool = Char(help_text="The tool's name (a resource's URI, a template's URI template, a prompt's name).")
    status = s.ChoiceField(choices=CONTRACT_STATUSES)
    pinned_sha256 = Char(allow_null=True)
    observed_sha256 = Char()
    pinned = s.DictField(allow_null=True, help_text="The accepted contract (null if never accepted).")
    observed = s.DictField(help_text="What the upstream showed last.")
    first_seen_at = s.DateTimeField()
    last_seen_at = s.DateTimeField()
    accepted_at = s.DateTimeField(allow_null=True)


class ContractsOut(s.Serializer):
    items = ContractOut(many=True)
    total = s.IntegerField()


class ContractsAcceptIn(StrictSerializer):
    tools = s.ListField(child=Char(min_length=1, max_length=1024), min_length=1, max_length=100)
    kind = s.ChoiceField(choices=CONTRACT_KINDS, default="tool")
    observed_sha256 = s.DictField(
        child=Char(max_length=64),
        required=False,
        help_text="Name -> the observed_sha256 you reviewed; refused if the upstream changed it since.",
    )
