"""Input serializers (strict: unknown keys refused), and REST's pages of the output shapes.

An entity's output is declared once, in `gateway/shapes.py`, for MCP and REST alike; the views
document their responses with those pydantic models and check each body against them. REST's own
differences are its pages (`cursor_page`: a cursor instead of an offset) and the few answers below
that have no MCP twin."""

from __future__ import annotations

from pydantic import Field, RootModel
from rest_framework import serializers as s

from gateway import shapes
from gateway.api.base import Char, StrictSerializer
from gateway.kinds import SQL_DIALECTS
from gateway.models import ConnectionKind, ContractKind, ContractStatus
from gateway.shapes import Shape, cursor_page
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


class ConnectionQuery(PageOnly):
    search = Char(max_length=100, required=False)
    kind = s.ChoiceField(choices=ConnectionKind.choices, required=False)
    selector = Char(max_length=300, required=False, help_text="Attributes all to match: env=prod,tier.")


class ConnectionImport(StrictSerializer):
    csv = Char(max_length=1_000_000, required=False, help_text="A header row, then one connection per row.")
    rows = s.ListField(child=s.DictField(), max_length=500, required=False)
    dry_run = s.BooleanField(default=False)


class ReviewSettingsIn(StrictSerializer):
    allow_self_approval = s.BooleanField(required=False)
    mcp_decisions_enabled = s.BooleanField(required=False)
    review_ttl_seconds = s.IntegerField(min_value=60, max_value=30 * 24 * 3600, required=False)


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


# --- access control ------------------------------------------------------------------------------


class AccessControlSet(StrictSerializer):
    groups = Names(min_length=1, help_text="Group names; replaces the current list.")


# --- users and groups ----------------------------------------------------------------------------


class UserCreate(StrictSerializer):
    email = s.EmailField(max_length=254)
    name = Char(max_length=150, required=False, allow_blank=True, default="")
    groups = Names(required=False, default=list)


class UserUpdate(StrictSerializer):
    name = Char(max_length=150, required=False, allow_blank=True)
    is_active = s.BooleanField(required=False)
    groups = Names(required=False, help_text="Replaces the user's groups.")


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


class MaskingCreate(Bindings):
    name = Char(**NAME)
    description = Char(max_length=500, required=False, allow_blank=True)
    enabled = s.BooleanField(required=False)
    spec = s.DictField(help_text="What to mask and how (see docs/guardrails-and-masking.md).")


class MaskingUpdate(MaskingCreate):
    name = Char(required=False, **NAME)
    spec = s.DictField(required=False)


class AttributeCreate(StrictSerializer):
    name = Char(**NAME)
    description = Char(max_length=500, required=False, allow_blank=True, default="")
    connections = Names(required=False)


class AttributeUpdate(StrictSerializer):
    description = Char(max_length=500, required=False, allow_blank=True)
    connections = Names(required=False, help_text="Replaces the list.")
    add_connections = Names(required=False, help_text="Tag these too.")
    remove_connections = Names(required=False, help_text="Untag these.")


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


class ContentQuery(StrictSerializer):
    offset = s.IntegerField(min_value=0, default=0, help_text="Byte offset into the output.")
    max_bytes = s.IntegerField(min_value=1, max_value=1024 * 1024, default=64 * 1024)


class AuditQuery(PageOnly):
    actor_email = Char(max_length=254, required=False)
    action = Char(max_length=100, required=False, help_text="Exact, or a prefix ending in '.'.")
    surface = Char(max_length=16, required=False)
    outcome = Char(max_length=16, required=False)
    start_date = Char(max_length=40, required=False)
    end_date = Char(max_length=40, required=False)


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


class DeliveryQuery(PageOnly):
    webhook_name = Char(**NAME, required=False)
    status = Char(max_length=16, required=False, help_text="pending, delivered, failed or dead.")


class RetryIn(StrictSerializer):
    delivery_ids = s.ListField(child=s.IntegerField(min_value=1), min_length=1, max_length=500)


# --- upstream MCP servers (connection kind mcp) --------------------------------------------------

CONTRACT_KINDS = ContractKind.choices
CONTRACT_STATUSES = ContractStatus.choices


class UpstreamCallIn(StrictSerializer):
    tool = Char(min_length=1, max_length=128)
    arguments = s.DictField(required=False, default=dict, help_text="The upstream tool's arguments.")
    idempotency_key = Char(
        max_length=200,
        required=False,
        help_text="As for exec/ (or the Idempotency-Key header): a retry never calls the tool twice.",
    )


class ContractQuery(StrictSerializer):
    status = s.ChoiceField(choices=CONTRACT_STATUSES, required=False)
    kind = s.ChoiceField(choices=CONTRACT_KINDS, required=False)


class ContractsAcceptIn(StrictSerializer):
    tools = s.ListField(child=Char(min_length=1, max_length=1024), min_length=1, max_length=100)
    kind = s.ChoiceField(choices=CONTRACT_KINDS, default="tool")
    observed_sha256 = s.DictField(
        child=Char(max_length=64),
        required=False,
        help_text="Name -> the observed_sha256 you reviewed; refused if the upstream changed it since.",
    )


# --- REST's pages of the output shapes ------------------------------------------------------------

ConnectionPage = cursor_page("ConnectionPage", shapes.ConnectionOut)
AccessControlPage = cursor_page("AccessControlPage", shapes.AccessControlOut)
UserPage = cursor_page("UserPage", shapes.UserOut)
GroupPage = cursor_page("GroupPage", shapes.GroupOut)
GuardrailPage = cursor_page("GuardrailPage", shapes.GuardrailOut)
MaskingPage = cursor_page("MaskingRulePage", shapes.MaskingOut)
AttributePage = cursor_page("AttributePage", shapes.AttributeOut)
SessionPage = cursor_page("SessionPage", shapes.SessionOut)
AuditEventPage = cursor_page("AuditEventPage", shapes.AuditEventOut)
ReviewPage = cursor_page("ReviewPage", shapes.ReviewOut)
WebhookPage = cursor_page("WebhookPage", shapes.WebhookOut)
AccessRulePage = cursor_page("AccessRulePage", shapes.AccessRuleOut)
RunbookRulePage = cursor_page("RunbookRulePage", shapes.RunbookRuleOut)
DeliveryPage = cursor_page("DeliveryPage", shapes.DeliveryOut)


class RunbookList(RootModel[list[shapes.RunbookOut]]):
    """GET runbooks/ answers a plain list of the runbooks you may run, not a page."""


# --- answers only REST gives (their MCP twins are shaped differently) ------------------------------


class DatabasesOut(Shape):
    """connections/{name}/databases/: the items of connection_databases (MCP names the list
    `databases` and adds no more)."""

    connection_name: str
    items: list[shapes.DatabaseItem]


class TablesOut(Shape):
    """connections/{name}/tables/: the items of connection_tables (MCP: `tables`, with the database)."""

    connection_name: str
    items: list[shapes.TableItem]


class ColumnsOut(Shape):
    """connections/{name}/columns/: the items of connection_columns (MCP: `columns`, with the database
    and table)."""

    connection_name: str
    items: list[shapes.ColumnItem]


class RetryOut(Shape):
    """webhook-deliveries/retry/ (MCP: webhooks_deliveries answers the count beside the page)."""

    retried: int = Field(description="How many failed or dead deliveries were queued again.")
