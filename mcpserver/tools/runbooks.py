"""Runbooks: runbooks_list, runbooks_run, and the admin tools runbook_rules_list|get|create|update|delete.
Runbooks themselves are edited in the Django admin."""

from __future__ import annotations

from typing import Annotated, Any

from channels.db import database_sync_to_async as db
from django.conf import settings
from pydantic import AliasChoices, Field

from gateway import runbooks, shapes
from mcpserver.registry import Args, Result, shared, tool
from mcpserver.tools.execution import (
    MAX_WAIT,
    ExecEnvelope,
    _wait,
    envelope_of,
    idempotency_key_field,
    render_envelope,
)
from mcpserver.tools.rule_crud import Names, RuleRef, RuleServices, rule_tools

RunbookOut = shapes.RunbookBrief


class RunbookList(Result):
    items: list[RunbookOut]


class ListArgs(Args):
    connection_name: str | None = Field(None, max_length=63)


@tool(
    "runbooks_list",
    description="Scripts you may run with runbooks_run.",
    args=ListArgs,
    result=RunbookList,
    render=lambda r: (
        "\n".join(f"{i.connection_name}/{i.name}: {i.description}" for i in r.items) or "no runbooks"
    ),
)
async def runbooks_list(actor, args: ListArgs, ctx) -> RunbookList:
    @db
    def run():
        items = runbooks.runbook_list(actor=actor, connection_name=args.connection_name)
        return [
            {k: v for k, v in runbooks.runbook_to_dict(r).items() if k in RunbookOut.model_fields}
            for r in items
        ]

    return RunbookList(items=await run())


class RunArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)
    runbook_name: str = Field(
        min_length=1, max_length=63, validation_alias=AliasChoices("runbook_name", "runbook")
    )
    parameters: dict[str, Any] | None = None
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] | None = Field(None, description="As exec's.")
    idempotency_key: str | None = idempotency_key_field()


@tool(
    "runbooks_run",
    description=(
        "Run a runbook; its parameters are typed and quoted (they cannot change the script). exec's policy and "
        "envelope."
    ),
    args=RunArgs,
    result=ExecEnvelope,
    read_only=False,
    destructive=True,
    render=render_envelope,
    capability="read_only",  # the pipeline applies the token's ceiling to what runs
)
async def runbooks_run(actor, args: RunArgs, ctx) -> ExecEnvelope:
    session = await db(
        lambda: runbooks.runbook_run(
            actor=actor,
            connection_name=args.connection_name,
            name=args.runbook_name,
            parameters=args.parameters,
            idempotency_key=args.idempotency_key,
        )
    )()
    if not session.is_final and session.status != "pending_review":
        session, _ = await _wait(session.pk, args.timeout_seconds or settings.EXEC_HANDOFF_SECONDS, ctx)
    return envelope_of(session)


# --- runbook rules ---------------------------------------------------------------------------------


class RuleOut(shapes.RunbookRuleOut):
    model_config = shared("config_get")


GroupNames = list[Annotated[str, Field(min_length=1, max_length=100)]]
Patterns = list[Annotated[str, Field(min_length=1, max_length=63)]]


class RuleFields(Args):
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    groups: GroupNames | None = Field(None, description="Groups whose members may run the runbooks.")
    runbooks: Patterns | None = Field(None, description='Runbook names or globs, e.g. ["restart-*"].')
    connections: Names | None = None
    attributes: Names | None = None


class RuleCreate(RuleFields):
    name: str = Field(min_length=1, max_length=63)
    groups: GroupNames = Field(min_length=1)
    runbooks: Patterns = Field(min_length=1)


class RuleUpdate(RuleFields):
    rule_name: RuleRef
    name: str | None = Field(None, min_length=1, max_length=63)


rule_tools(
    "runbook_rules",
    "runbook_rule",
    "runbook rule",
    services=RuleServices(
        to_dict=runbooks.runbook_rule_to_dict,
        list=runbooks.runbook_rule_list,
        get=runbooks.runbook_rule_get,
        create=runbooks.runbook_rule_create,
        update=runbooks.runbook_rule_update,
        delete=runbooks.runbook_rule_delete,
    ),
    out=RuleOut,
    create_args=RuleCreate,
    update_args=RuleUpdate,
    create_help="Let groups run runbooks (names or globs) on connections or attributes.",
)
