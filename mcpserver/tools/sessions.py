"""Session records: sessions_list, sessions_get (with content=true, its input, output and timeline:
it replaced sessions_get_content), sessions_stats."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from channels.db import database_sync_to_async as db
from pydantic import AliasChoices, Field, model_serializer

from gateway import shapes
from mcpserver.registry import Args, Result, page, shared, tool
from sessions import services

# Read from the model, so a status the pipeline adds (e.g. a reviewer's `rejected`) is accepted and
# listed without a change here.
Status = Literal[services.SESSION_STATUSES]
ReviewStatus = Literal["PENDING", "APPROVED", "REJECTED", "REVOKED", "EXECUTED", "EXPIRED"]
Risk = Literal["low", "medium", "high", "critical"]


class SessionOut(shapes.SessionOut):
    model_config = shared("sessions_get")


class ListArgs(Args):
    user_email: str | None = Field(None, max_length=254, validation_alias=AliasChoices("user_email", "user"))
    connection_name: str | None = Field(
        None, max_length=63, validation_alias=AliasChoices("connection_name", "connection")
    )
    status: Status | None = None
    verb: Literal["exec", "schema", "runbook", "tool", "resource", "prompt"] | None = None
    surface: Literal["web", "admin", "api", "mcp", "task", "cli"] | None = None
    risk_level: Risk | None = None
    review_status: ReviewStatus | None = None
    rule_name: str | None = Field(None, max_length=100, description="A guardrail that fired.")
    text: str | None = Field(None, max_length=200, description="In the input, any case.")
    start_date: str | None = Field(None, description="RFC 3339, inclusive.")
    end_date: str | None = Field(None, description="RFC 3339, exclusive.")
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int, Field(ge=0, le=10_000)] = 0
    cursor: str | None = Field(
        None,
        max_length=200,
        description="next_cursor (offset stops at 10000).",
    )


class ListResult(Result):
    items: list[SessionOut]
    total: int
    has_next_page: bool
    next_offset: int | None
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last page.")


@tool(
    "sessions_list",
    description=("Sessions, newest first: yours and those your groups review (admins, auditors: all)."),
    args=ListArgs,
    result=ListResult,
    render=lambda r: (
        "\n".join(
            f"{s.created_at} {s.id} {s.verb} on {s.connection} by {s.user_email}: {s.status}" for s in r.items
        )
        or "no sessions"
    ),
)
async def sessions_list(actor, args: ListArgs, ctx) -> ListResult:
    @db
    def run():
        page, total = services.session_list(
            actor=actor,
            user_email=args.user_email,
            connection=args.connection_name,
            status=args.status,
            verb=args.verb,
            surface=args.surface,
            start_date=args.start_date,
            end_date=args.end_date,
            risk_level=args.risk_level,
            review_status=args.review_status,
            rule=args.rule_name,
            text=args.text,
            limit=args.limit,
            offset=args.offset,
            cursor=args.cursor,
        )
        # A full page may have more after it; with a cursor the position is unknown, so the last
        # page can come back empty.
        cursor = services.session_cursor(page[-1]) if len(page) == args.limit else None
        return [services.session_to_dict(s, actor=actor) for s in page], total, cursor

    items, total, next_cursor = await run()
    if args.cursor:
        return ListResult(
            items=items,
            total=total,
            has_next_page=next_cursor is not None,
            next_offset=None,
            next_cursor=next_cursor,
        )
    listed = page(items, total, args.offset)
    return ListResult(**listed, next_cursor=next_cursor if listed["has_next_page"] else None)


class GetArgs(Args):
    session_id: str = Field(min_length=1, max_length=64, validation_alias=AliasChoices("session_id", "id"))
    content: bool = Field(
        False,
        description="Add input, output (bytes offset..max_bytes), timeline.",
    )
    offset: Annotated[int, Field(ge=0)] = 0
    max_bytes: Annotated[int, Field(ge=1, le=1024 * 1024)] = 64 * 1024


TimelineEvent = shapes.TimelineEvent

# The fields `content: true` adds; absent otherwise.
CONTENT_FIELDS = (
    "input",
    "input_truncated",
    "output",
    "output_offset",
    "output_total_bytes",
    "next_offset",
    "columns",
    "rows",
    "timeline",
)


class SessionWithContent(SessionOut):
    # Absent without content=true (never null), so typed without null.
    input: str = None
    input_truncated: bool = None
    output: str = None
    output_offset: int = None
    output_total_bytes: int = None
    next_offset: int | None = None
    columns: list[str] | None = None
    rows: list[list[Any]] | None = None
    timeline: list[TimelineEvent] = Field(
        None,
        description="What happened, in order: recorded, queued_for_review, review decisions, approved, "
        "run_requested, started, finished (or blocked/failed/cancelled), analysed.",
    )

    @model_serializer(mode="wrap")
    def _without_absent_content(self, handler):
        data = handler(self)
        if self.timeline is None:  # content was not asked for
            for key in CONTENT_FIELDS:
                data.pop(key, None)
        return data


def _render_session(r: SessionWithContent) -> str:
    head = f"session {r.id}: {r.verb} on {r.connection} by {r.user_email}: {r.status}"
    return head if r.timeline is None else f"{head}\ninput:\n{r.input}\n\noutput:\n{r.output}"


@tool(
    "sessions_get",
    description="One session's record (status, timings, exit code, review, findings).",
    args=GetArgs,
    result=SessionWithContent,
    render=_render_session,
)
async def sessions_get(actor, args: GetArgs, ctx) -> SessionWithContent:
    @db
    def run():
        data = services.session_to_dict(
            services.session_get(actor=actor, session_id=args.session_id), actor=actor
        )
        if args.content:
            content = services.session_content(
                actor=actor, session_id=args.session_id, offset=args.offset, max_bytes=args.max_bytes
            )
            data.update({k: content[k] for k in CONTENT_FIELDS})
        return data

    return SessionWithContent(**await run())


StatsGroup = Literal[services.STATS_GROUPS]


class StatsArgs(Args):
    group_by: list[StatsGroup] = Field(min_length=1, max_length=3, description="UTC times.")
    start_date: str | None = Field(
        None, description=f"Default: {services.STATS_DEFAULT_DAYS} days before end_date."
    )
    end_date: str | None = Field(
        None,
        description=f"Exclusive; default: now; at most {services.STATS_MAX_DAYS} days after start_date.",
    )
    connection_name: str | None = Field(
        None, max_length=63, validation_alias=AliasChoices("connection_name", "connection")
    )
    status: Status | None = None
    review_status: ReviewStatus | None = None
    rule_name: str | None = Field(None, max_length=100)
    risk_level: Risk | None = None
    user_email: str | None = Field(None, max_length=254)


StatsResult = shapes.StatsOut


@tool(
    "sessions_stats",
    description=("Count sessions in a date range by up to three keys (as sessions_list sees them)."),
    args=StatsArgs,
    result=StatsResult,
    render=lambda r: (
        "\n".join(
            ", ".join(f"{k}={v}" for k, v in g.items() if k != "count") + f": {g['count']}" for g in r.groups
        )
        or "no sessions"
    ),
)
async def sessions_stats(actor, args: StatsArgs, ctx) -> StatsResult:
    result = await db(
        lambda: services.session_stats(
            actor=actor,
            group_by=list(args.group_by),
            start_date=args.start_date,
            end_date=args.end_date,
            connection=args.connection_name,
            status=args.status,
            review_status=args.review_status,
            rule=args.rule_name,
            risk_level=args.risk_level,
            user_email=args.user_email,
        )
    )()
    return StatsResult(**result)
