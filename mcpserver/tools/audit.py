"""The audit log: audit_events_list (admins and auditors)."""

from __future__ import annotations

from typing import Annotated, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field

from gateway import shapes
from governance.policy import ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, tool
from sessions import services


class AuditArgs(Args):
    actor_email: str | None = Field(
        None, max_length=254, validation_alias=AliasChoices("actor_email", "actor")
    )
    action: str | None = Field(None, max_length=64, description="exec.request, or a prefix: guardrail.")
    surface: Literal["web", "admin", "api", "mcp", "task", "cli"] | None = None
    outcome: Literal["success", "denied", "blocked", "failed", "invalid"] | None = None
    start_date: str | None = Field(None, description="RFC 3339, inclusive.")
    end_date: str | None = Field(None, description="RFC 3339, exclusive.")
    limit: Annotated[int, Field(ge=1, le=100)] = 50
    offset: Annotated[int, Field(ge=0, le=10_000)] = 0


AuditEventOut = shapes.AuditEventOut


class AuditList(Result):
    items: list[AuditEventOut]
    total: int
    has_next_page: bool
    next_offset: int | None


@tool(
    "audit_events_list",
    description=(
        "The org's audit log, newest first: every change and attempt (denied, blocked too), every surface."
    ),
    args=AuditArgs,
    result=AuditList,
    role=ROLE_AUDITOR,
    render=lambda r: (
        "\n".join(
            f"{e.created_at} {e.actor_email or 'system'} {e.action} {e.target} [{e.surface}] {e.outcome}"
            for e in r.items
        )
        or "no events"
    ),
)
async def audit_events_list(actor, args: AuditArgs, ctx) -> AuditList:
    @db
    def run():
        items, total = services.audit_event_list(
            actor=actor,
            actor_email=args.actor_email,
            action=args.action,
            surface=args.surface,
            outcome=args.outcome,
            start_date=args.start_date,
            end_date=args.end_date,
            limit=args.limit,
            offset=args.offset,
        )
        return [services.audit_event_to_dict(e) for e in items], total

    items, total = await run()
    return AuditList(**page(items, total, args.offset))
