"""Rules: guardrails_*, datamasking_rules_*, attributes_*. Reading is for admins and auditors
(attributes: admins), changing is for admins."""

from __future__ import annotations

from typing import Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from gateway import previews, shapes
from gateway.kinds import SQL_DIALECTS
from governance import rules
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, shared, tool
from mcpserver.tools.execution import ExplainFinding
from mcpserver.tools.rule_crud import (
    ATTRIBUTES_HELP,
    Kind,
    Names,
    RuleRef,
    RuleServices,
    register_kind,
    rule_tools,
)

# --- guardrails --------------------------------------------------------------------------------

# Written without JSON quotes: each would cost an escaped \" in tools/list.
CONDITIONS_HELP = (
    "{sql: {deny_statements: [drop, ...], require_where, single_statement, read_only: true, "
    "deny_tables: [billing.*], deny_schemas, deny_functions}, deny_words: [...], regex: [...]}; SQL is "
    "parsed in the connection's dialect (unparsable: blocked)."
)
OUTPUT_CONDITIONS_HELP = "{deny_words, regex, secrets: true}"


class GuardrailOut(shapes.GuardrailOut):
    model_config = shared("config_get")


class GuardrailFields(Args):
    description: str | None = Field(None, max_length=500)
    message: str | None = Field(None, max_length=500, description="Shown when it blocks.")
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
    connections: Names | None = None
    attributes: Names | None = Field(None, description=ATTRIBUTES_HELP)


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
    input: str = Field(min_length=1, description=None)
    rule_name: str | None = Field(
        None,
        max_length=100,
        description="This rule...",
        validation_alias=AliasChoices("rule_name", "id"),
    )
    connection_name: str | None = Field(None, max_length=63, description="...or this connection's.")
    direction: Literal["input", "output"] = "input"
    dialect: Literal[tuple(dict.fromkeys(SQL_DIALECTS.values()))] | None = Field(  # type: ignore[valid-type]
        None, description="For a single rule."
    )


Finding = ExplainFinding


class GuardrailTestResult(shapes.GuardrailTestOut):
    findings: list[Finding]  # the shared record (described once, by exec_explain)


@tool(
    "guardrails_test",
    description="Evaluate text against a guardrail or a connection's; runs nothing.",
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
    "{entities: [EMAIL_ADDRESS, CREDIT_CARD, ...], custom: [{name, regex, score} or {name, deny_list}], "
    "columns: [column name regex], column_types: {column regex: entity}, score_threshold: 0.5, "
    "method: redact|partial|pseudonym, keep_last: 4, best_effort: false}"
)


class MaskingOut(shapes.MaskingOut):
    model_config = shared("config_get")


class MaskingFields(Args):
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    connections: Names | None = None
    attributes: Names | None = Field(None, description=ATTRIBUTES_HELP)


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
        description="A rule...",
        validation_alias=AliasChoices("rule_name", "id"),
    )
    spec: dict[str, Any] | None = Field(None, description="...or a draft spec.")
    text: str | None = Field(None, max_length=1_000_000, description="Text...")
    columns: list[str] | None = Field(None, description="...or columns...")
    rows: list[list[Any]] | None = Field(None, max_length=1000, description="...and rows.")
    connection_name: str | None = Field(
        None, max_length=63, description="...or 100 rows of this connection's..."
    )
    input: str | None = Field(None, description="...query (run through exec).")


PreviewResult = shapes.MaskingPreviewOut


@tool(
    "datamasking_rules_preview",
    description=(
        "Mask a sample (text, rows, or a query's rows) with a rule or a draft spec; returns only masked data."
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


class AttributeOut(shapes.AttributeOut):
    model_config = shared("config_get")


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
        "Create a tag (pci) or key=value (env=prod) attribute on connections; rules bind to it. config_update "
        "also takes add_connections, remove_connections."
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
