"""Runbooks: runbooks_list, runbooks_run, and the admin tools runbook_rules_list|get|create|update|delete.
Runbooks themselves are edited in the Django admin."""

from __future__ import annotations

from typing import Annotated, Any

from channels.db import database_sync_to_async as db
from django.conf import settings
from pydantic import Field

from gateway import pipeline, runbooks
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, tool
from mcpserver.tools.execution import MAX_WAIT, ExecEnvelope, _wait, render_envelope
from mcpserver.tools.rules import Deleted, Limit, Names, Offset, RefArgs, _fields


class RunbookOut(Result):
    name: str
    connection_name: str
    description: str
    parameters: list[dict[str, Any]] = Field(
        description="Each: name, type (string|integer|number|boolean|enum|identifier), required, default, choices, ..."
    )
    template: str


class RunbookList(Result):
    items: list[RunbookOut]


class ListArgs(Args):
    connection_name: str | None = Field(None, max_length=63)


@tool(
    "runbooks_list",
    description=(
        "The pre-approved, parameterized scripts you may run (per connection), with their parameters' types. "
        "Run one with runbooks_run."
    ),
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
    runbook: str = Field(min_length=1, max_length=63)
    parameters: dict[str, Any] | None = Field(None, description="Values for the runbook's parameters.")
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] | None = Field(
        None, description="Wait this long for the result before answering `running` (default 50 s)."
    )


@tool(
    "runbooks_run",
    description=(
        "Run a runbook with typed parameters. Values are validated and quoted for the target, so they cannot change "
        "the script; guardrails, review, masking and audit apply as for exec. Same envelope as exec."
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
            actor=actor, connection_name=args.connection_name, name=args.runbook, parameters=args.parameters
        )
    )()
    if not session.is_final and session.status != "pending_review":
        session, _ = await _wait(session.pk, args.timeout_seconds or settings.EXEC_HANDOFF_SECONDS, ctx)
    return ExecEnvelope(**pipeline.exec_envelope(session))


# --- runbook rules ---------------------------------------------------------------------------------


class RuleOut(Result):
    id: str
    name: str
    description: str
    enabled: bool
    groups: list[str]
    runbooks: list[str]
    connections: list[str]
    attributes: list[str]
    created_at: str
    updated_at: str


class RuleList(Result):
    items: list[RuleOut]
    total: int
    has_next_page: bool
    next_offset: int | None


class RulePage(Args):
    limit: Limit = 50
    offset: Offset = 0


@tool(
    "runbook_rules_list",
    description="Runbook rules of your org: which groups may run which runbooks on which connections (admins, auditors).",
    args=RulePage,
    result=RuleList,
    role=ROLE_AUDITOR,
)
async def runbook_rules_list(actor, args: RulePage, ctx) -> RuleList:
    @db
    def run():
        items, total = runbooks.runbook_rule_list(actor=actor, limit=args.limit, offset=args.offset)
        return [runbooks.runbook_rule_to_dict(r) for r in items], total

    items, total = await run()
    return RuleList(**page(items, total, args.offset))


@tool(
    "runbook_rules_get",
    description="One runbook rule by id or name (admins, auditors).",
    args=RefArgs,
    result=RuleOut,
    role=ROLE_AUDITOR,
)
async def runbook_rules_get(actor, args: RefArgs, ctx) -> RuleOut:
    return RuleOut(
        **await db(
            lambda: runbooks.runbook_rule_to_dict(runbooks.runbook_rule_get(actor=actor, ref=args.id))
        )()
    )


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
    id: str = Field(min_length=1, max_length=100, description="The rule's id or name.")
    name: str | None = Field(None, min_length=1, max_length=63)


@tool(
    "runbook_rules_create",
    description="Let groups run runbooks (names or globs) on connections or attributes (admin).",
    args=RuleCreate,
    result=RuleOut,
    role=ROLE_ADMIN,
    read_only=False,
)
async def runbook_rules_create(actor, args: RuleCreate, ctx) -> RuleOut:
    fields = _fields(args, skip=("name",))
    return RuleOut(
        **await db(
            lambda: runbooks.runbook_rule_to_dict(
                runbooks.runbook_rule_create(actor=actor, name=args.name, **fields)
            )
        )()
    )


@tool(
    "runbook_rules_update",
    description="Change a runbook rule (admin); only the fields given change, lists are replaced.",
    args=RuleUpdate,
    result=RuleOut,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
)
async def runbook_rules_update(actor, args: RuleUpdate, ctx) -> RuleOut:
    fields = _fields(args)
    return RuleOut(
        **await db(
            lambda: runbooks.runbook_rule_to_dict(
                runbooks.runbook_rule_update(actor=actor, ref=args.id, **fields)
            )
        )()
    )


@tool(
    "runbook_rules_delete",
    description="Delete a runbook rule (admin).",
    args=RefArgs,
    result=Deleted,
    role=ROLE_ADMIN,
    read_only=False,
    destructive=True,
)
async def runbook_rules_delete(actor, args: RefArgs, ctx) -> Deleted:
    name = await db(lambda: runbooks.runbook_rule_delete(actor=actor, ref=args.id))()
    return Deleted(name=name, deleted=True)
