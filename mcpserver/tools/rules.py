"""Rules: guardrails_*, datamasking_rules_*, attributes_*. Reading is for admins and auditors
(attributes: admins), changing is for admins."""

from __future__ import annotations

from typing import Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from gateway import previews
from gateway.kinds import SQL_DIALECTS
from governance import rules
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, shared, tool
from mcpserver.tools.rule_crud import Kind, Names, RuleRef, RuleServices, register_kind, rule_tools

# --- guardrails --------------------------------------------------------------------------------

CONDITIONS_HELP = (
    '{"sql": {"deny_statements": ["drop", ...], "require_where": true, "single_statement": true, '
    '"read_only": true, "deny_tables": ["billing.*"], "deny_schemas": [...], "deny_functions": [...]}, '
    '"deny_words": [...], "regex": [...]}; SQL is checked parsed, in the connection\'s dialect (unparsable: blocked).'
)
OUTPUT_CONDITIONS_HELP = '{"deny_words": [...], "regex": [...], "secrets": true}'


class GuardrailOut(Result):
    model_config = shared("config_get")

    id: str
    name: str
    description: str
    message: str
    enabled: bool
    input: dict[str, Any]
    output: dict[str, Any]
    connections: list[str]
    attributes: list[str]
    created_at: str
    updated_at: str


class GuardrailFields(Args):
    description: str | None = Field(None, max_length=500)
    message: str | None = Field(None, max_length=500, description="Shown to callers when the rule blocks.")
    enabled: bool | None = None
    # `input` names the text to run everywhere else (exec, guardrails_test): here it is conditions.
    input_conditions: dict[str, Any] | None = Field(
        None,
        description=CONDITIONS_HELP,
        validation_alias=AliasChoices("input_conditions", "input"),
        serialization_alias="input",
    )
    output_conditions: dict[str, Any] | None = Field(
        None,
        description=OUTPUT_CONDITIONS_HELP,
        validation_alias=AliasChoices("output_conditions", "output"),
        serialization_alias="output",
    )
    connections: Names | None = Field(None, description="Connection names (replaces the list).")
    attributes: Names | None = Field(None, description="Attribute names (replaces the list).")


class GuardrailCreate(GuardrailFields):
    name: str = Field(min_length=1, max_length=63)


class GuardrailUpdate(GuardrailFields):
    rule_name: RuleRef
    name: str | None = Field(None, min_length=1, max_length=63, description="A new name.")


rule_tools(
    "guardrails",
    "guardrail",
    "guardrail rule",
    services=RuleServices(
        to_dict=rules.guardrail_to_dict,
        list=rules.guardrail_list,
        get=rules.guardrail_get,
        create=rules.guardrail_create,
        update=rules.guardrail_update,
        delete=rules.guardrail_delete,
    ),
    out=GuardrailOut,
    create_args=GuardrailCreate,
    update_args=GuardrailUpdate,
    create_help="Create a guardrail rule on input and/or output.",
)


class GuardrailTestArgs(Args):
    input: str = Field(min_length=1, description="The SQL, command or output text to evaluate.")
    rule_name: str | None = Field(
        None,
        max_length=100,
        description="Evaluate this rule (name or id)...",
        validation_alias=AliasChoices("rule_name", "id"),
    )
    connection_name: str | None = Field(
        None, max_length=63, description="...or every rule bound to this connection."
    )
    direction: Literal["input", "output"] = "input"
    dialect: Literal[tuple(dict.fromkeys(SQL_DIALECTS.values()))] | None = Field(  # type: ignore[valid-type]
        None, description="SQL dialect when testing a single rule (a connection brings its own)."
    )


class Finding(Result):
    rule: str
    direction: str
    condition: str
    statement: int | None
    detail: str


class GuardrailTestResult(Result):
    blocked: bool
    rules_evaluated: list[str]
    findings: list[Finding]
    read_only: bool


@tool(
    "guardrails_test",
    description="Evaluate text against one guardrail or a connection's guardrails. Runs nothing.",
    args=GuardrailTestArgs,
    result=GuardrailTestResult,
    role=ROLE_AUDITOR,
    render=lambda r: (
        ("BLOCKED: " + ", ".join(sorted({f.rule for f in r.findings}))) if r.blocked else "allowed"
    ),
)
async def guardrails_test(actor, args: GuardrailTestArgs, ctx) -> GuardrailTestResult:
    result = await db(
        lambda: rules.guardrail_test(
            actor=actor,
            input=args.input,
            ref=args.rule_name,
            connection_name=args.connection_name,
            direction=args.direction,
            dialect=args.dialect,
        )
    )()
    return GuardrailTestResult(**result)


# --- masking -----------------------------------------------------------------------------------

SPEC_HELP = (
    '{"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", ...], "custom": [{"name": "EMPLOYEE_ID", "regex": "E\\\\d{6}", '
    '"score": 0.9} or {"name": "PROJECT", "deny_list": [...]}], "columns": ["(?i)e?mail|phone"], '
    '"column_types": {"(?i)^iban$": "IBAN_CODE"}, "score_threshold": 0.5, "method": "redact" | "partial" | "pseudonym", "keep_last": 4, "best_effort": false}'
)


class MaskingOut(Result):
    model_config = shared("config_get")

    id: str
    name: str
    description: str
    enabled: bool
    spec: dict[str, Any]
    connections: list[str]
    attributes: list[str]
    created_at: str
    updated_at: str


class MaskingFields(Args):
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    connections: Names | None = Field(None, description="Connection names (replaces the list).")
    attributes: Names | None = Field(None, description="Attribute names (replaces the list).")


class MaskingCreate(MaskingFields):
    name: str = Field(min_length=1, max_length=63)
    spec: dict[str, Any] = Field(description=SPEC_HELP)


class MaskingUpdate(MaskingFields):
    rule_name: RuleRef
    name: str | None = Field(None, min_length=1, max_length=63, description="A new name.")
    spec: dict[str, Any] | None = Field(None, description=SPEC_HELP)


rule_tools(
    "datamasking_rules",
    "masking_rule",
    "masking rule",
    services=RuleServices(
        to_dict=rules.masking_rule_to_dict,
        list=rules.masking_rule_list,
        get=rules.masking_rule_get,
        create=rules.masking_rule_create,
        update=rules.masking_rule_update,
        delete=rules.masking_rule_delete,
    ),
    out=MaskingOut,
    create_args=MaskingCreate,
    update_args=MaskingUpdate,
    create_help="Create a masking rule (see spec).",
)


class PreviewArgs(Args):
    rule_name: str | None = Field(
        None,
        max_length=100,
        description="A stored rule (name or id)...",
        validation_alias=AliasChoices("rule_name", "id"),
    )
    spec: dict[str, Any] | None = Field(
        None, description="...or an inline spec (as in datamasking_rules_create)."
    )
    text: str | None = Field(None, max_length=1_000_000, description="A sample text to mask.")
    columns: list[str] | None = Field(None, description="Sample result columns...")
    rows: list[list[Any]] | None = Field(None, max_length=1000, description="...and rows.")
    connection_name: str | None = Field(
        None, max_length=63, description="...or the first 100 rows of a query on this connection..."
    )
    input: str | None = Field(
        None, description="...this query (it runs through exec: guardrails, masking, audit)."
    )


class PreviewResult(Result):
    text: str | None = None
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    counts: dict[str, int]
    unavailable_entities: list[str]


@tool(
    "datamasking_rules_preview",
    description=(
        "Mask a sample with a rule or a draft spec: text, rows you give, or a query's first rows (run through exec). "
        "Returns only masked data."
    ),
    args=PreviewArgs,
    result=PreviewResult,
    role=ROLE_AUDITOR,
)
async def datamasking_rules_preview(actor, args: PreviewArgs, ctx) -> PreviewResult:
    result = await db(
        lambda: previews.masking_preview(
            actor=actor,
            ref=args.rule_name,
            spec=args.spec,
            text=args.text,
            columns=args.columns,
            rows=args.rows,
            connection_name=args.connection_name,
            input=args.input,
        )
    )()
    return PreviewResult(**result)


# --- attributes --------------------------------------------------------------------------------


class AttributeOut(Result):
    model_config = shared("config_get")

    id: str
    name: str
    description: str
    connections: list[str]
    created_at: str


class AttributeCreate(Args):
    name: str = Field(min_length=1, max_length=63)
    description: str = Field("", max_length=500)
    connections: Names | None = None


class AttributeChanges(Args):
    description: str | None = Field(None, max_length=500)
    connections: Names | None = None
    add_connections: Names | None = None
    remove_connections: Names | None = None


def _attributes_page(actor, limit, offset):
    items, total = rules.attribute_list(actor=actor, limit=limit, offset=offset)
    return [rules.attribute_to_dict(a) for a in items], total


def _attribute_update(actor, ref, changes):
    fields = AttributeChanges.model_validate(changes).model_dump()
    return rules.attribute_to_dict(rules.attribute_update(actor=actor, name=ref, **fields))


def _attribute_delete(actor, ref):
    rules.attribute_delete(actor=actor, name=ref)
    return ref


register_kind(
    Kind(
        name="attribute",
        what="attribute",
        create_tool="attributes_create",
        out=AttributeOut,
        list=_attributes_page,
        get=lambda actor, ref: rules.attribute_to_dict(rules.attribute_get(actor=actor, name=ref)),
        update=_attribute_update,
        delete=_attribute_delete,
    )
)


@tool(
    "attributes_create",
    description=(
        "Create an attribute (a tag, or key=value such as env=prod) and tag connections; rules bind to it. "
        "config_update changes: description, connections (replaces), add_connections, remove_connections."
    ),
    args=AttributeCreate,
    result=AttributeOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def attributes_create(actor, args: AttributeCreate, ctx) -> AttributeOut:
    return AttributeOut(
        **await db(
            lambda: rules.attribute_to_dict(
                rules.attribute_create(
                    actor=actor, name=args.name, description=args.description, connections=args.connections
                )
            )
        )()
    )
