"""Human approval over MCP: reviews_list|get|update|wait|execute, access_request, review settings,
and access_request_rules_create (the rest of that kind: config_*)."""

from __future__ import annotations

from typing import Annotated, Literal

from channels.db import database_sync_to_async as db
from django.conf import settings
from pydantic import AliasChoices, Field

from gateway import reviewed, shapes, waits
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR
from mcpserver.registry import Args, Result, page, shared, tool
from mcpserver.tools.execution import (
    DEFAULT_WAIT,
    MAX_WAIT,
    ExecEnvelope,
    _wait,
    envelope_of,
    idempotency_key_field,
    render_envelope,
)
from mcpserver.tools.rule_crud import ATTRIBUTES_HELP, Limit, Names, Offset, RuleRef, RuleServices, rule_tools
from reviews import services

# A session's id is taken too; reviews_get says so, once.
ReviewId = Annotated[
    str, Field(min_length=1, max_length=64, validation_alias=AliasChoices("review_id", "id"))
]


Decision = shapes.ReviewDecision


class ReviewOut(shapes.ReviewOut):
    model_config = shared("reviews_get")


def _render(r: ReviewOut) -> str:
    text = f"review {r.id} ({r.type}) on {r.connection_name} by {r.requester_email}: {r.status}"
    if r.timed_out:
        text += " (still pending; call reviews_wait again)"
    if r.input:
        text += f"\n{r.input[:2000]}"
    return text


class ReviewList(Result):
    items: list[ReviewOut]
    total: int
    has_next_page: bool
    next_offset: int | None


class ListArgs(Args):
    status: Literal["PENDING", "APPROVED", "REJECTED", "REVOKED", "EXECUTED", "EXPIRED"] | None = None
    type: Literal["onetime", "jit"] | None = None
    connection_name: str | None = Field(
        None, max_length=63, validation_alias=AliasChoices("connection_name", "connection")
    )
    waiting_for_me: bool = Field(False, description="Awaiting your decision.")
    limit: Limit = 20
    offset: Offset = 0


@tool(
    "reviews_list",
    description=("Reviews you may see (yours, your groups'; admins, auditors: all), newest first."),
    args=ListArgs,
    result=ReviewList,
)
async def reviews_list(actor, args: ListArgs, ctx) -> ReviewList:
    @db
    def run():
        items, total = services.review_list(
            actor=actor,
            status=args.status,
            type=args.type,
            connection=args.connection_name,
            waiting_for_me=args.waiting_for_me,
            limit=args.limit,
            offset=args.offset,
        )
        return [services.review_to_dict(r, actor=actor) for r in items], total

    items, total = await run()
    return ReviewList(**page(items, total, args.offset))


class GetArgs(Args):
    review_id: ReviewId = Field(description="The review's id (or its session's id).")


@tool(
    "reviews_get",
    description=("One review, with its input and risk."),
    args=GetArgs,
    result=ReviewOut,
    render=_render,
)
async def reviews_get(actor, args: GetArgs, ctx) -> ReviewOut:
    return ReviewOut(
        **await db(
            lambda: services.review_to_dict(
                services.review_get(actor=actor, review_id=args.review_id), actor=actor
            )
        )()
    )


class UpdateArgs(Args):
    review_id: ReviewId
    status: Literal["APPROVED", "REJECTED", "REVOKED"]
    reason: str | None = Field(None, max_length=1000, description="Required to reject.")
    force: bool = Field(False, description="Approve alone (force-approval groups).")


@tool(
    "reviews_update",
    description=(
        "Approve or reject a PENDING review, or revoke an approved one; never your own "
        "(see reviews_get you_can_decide)."
    ),
    args=UpdateArgs,
    result=ReviewOut,
    read_only=False,
    destructive=True,
    render=_render,
)
async def reviews_update(actor, args: UpdateArgs, ctx) -> ReviewOut:
    @db
    def run():
        review = services.review_decide(
            actor=actor,
            review_id=args.review_id,
            status=args.status,
            reason=args.reason or "",
            force=args.force,
        )
        return services.review_to_dict(services.review_get(actor=actor, review_id=review.pk), actor=actor)

    return ReviewOut(**await run())


class WaitArgs(Args):
    review_id: ReviewId
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] = Field(
        DEFAULT_WAIT,
        description="Default 45.",
    )


@tool(
    "reviews_wait",
    description=(
        "Wait until a review is decided; timed_out=true means call again. Once APPROVED, call "
        "reviews_execute."
    ),
    args=WaitArgs,
    result=ReviewOut,
    render=_render,
)
async def reviews_wait(actor, args: WaitArgs, ctx) -> ReviewOut:
    async def progress(elapsed, total):
        await ctx.progress(round(elapsed, 1), total, "waiting for reviewers")

    return ReviewOut(
        **await waits.review_wait(
            actor=actor, review_id=args.review_id, timeout=args.timeout_seconds, on_progress=progress
        )
    )


class ExecuteArgs(Args):
    review_id: ReviewId
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] | None = Field(None, description="As exec's.")
    idempotency_key: str | None = idempotency_key_field()


@tool(
    "reviews_execute",
    description=(
        "Run, once, exactly the input an APPROVED one-time review approved (requester only). exec's envelope."
    ),
    args=ExecuteArgs,
    result=ExecEnvelope,
    read_only=False,
    destructive=True,
    render=render_envelope,
    capability="read_only",  # the pipeline applies the token's ceiling to what runs
)
async def reviews_execute(actor, args: ExecuteArgs, ctx) -> ExecEnvelope:
    session = await db(
        lambda: reviewed.review_execute(
            actor=actor, review_id=args.review_id, idempotency_key=args.idempotency_key
        )
    )()
    if not session.is_final:
        session, _ = await _wait(session.pk, args.timeout_seconds or settings.EXEC_HANDOFF_SECONDS, ctx)
    return envelope_of(session)


class AccessRequestArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)
    reason: str = Field(min_length=1, max_length=1000, description=None)
    duration_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = Field(
        None, description="Default 3600."
    )


@tool(
    "access_request",
    description=(
        "Ask for time-bound (JIT) access to a connection. Once approved (reviews_wait), exec there skips "
        "per-command review until it ends."
    ),
    args=AccessRequestArgs,
    result=ReviewOut,
    read_only=False,
    render=_render,
)
async def access_request(actor, args: AccessRequestArgs, ctx) -> ReviewOut:
    @db
    def run():
        review = services.access_request(
            actor=actor,
            connection_name=args.connection_name,
            duration_seconds=args.duration_seconds,
            reason=args.reason,
        )
        return services.review_to_dict(services.review_get(actor=actor, review_id=review.pk), actor=actor)

    return ReviewOut(**await run())


# --- access request rules (admin) ------------------------------------------------------------------

RULE_HELP = (
    "access_type: command (each exec waits for a review), jit (time-bound access) or jit_command (both). "
    "It applies to approval_required_groups (empty: all but skip_review_groups). Quorum: "
    "all_groups_must_approve or min_approvals."
)


class RuleOut(shapes.AccessRuleOut):
    model_config = shared("config_get")


class TimeWindow(Args):
    start_time: str = Field(pattern=r"^\d{2}:\d{2}$")
    end_time: str = Field(pattern=r"^\d{2}:\d{2}$")


GroupNames = list[Annotated[str, Field(min_length=1, max_length=100)]]


class RuleFields(Args):
    description: str | None = Field(None, max_length=500)
    enabled: bool | None = None
    connections: Names | None = None
    attributes: Names | None = Field(None, description=ATTRIBUTES_HELP)
    approval_required_groups: GroupNames | None = None
    skip_review_groups: GroupNames | None = None
    reviewer_groups: GroupNames | None = None
    force_approval_groups: GroupNames | None = None
    all_groups_must_approve: bool | None = None
    min_approvals: Annotated[int, Field(ge=1, le=100)] | None = None
    max_jit_duration_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = None
    time_window: TimeWindow | None = Field(None, description="Daily window (UTC) for reviewed work.")
    min_risk: Literal["low", "medium", "high", "critical"] | None = Field(
        None, description="Review only input rated at least this risky."
    )


class RuleCreate(RuleFields):
    name: str = Field(min_length=1, max_length=63)
    access_type: Literal["command", "jit", "jit_command"]
    reviewer_groups: GroupNames = Field(min_length=1)


class RuleUpdate(RuleFields):
    rule_name: RuleRef
    name: str | None = Field(None, min_length=1, max_length=63)
    access_type: Literal["command", "jit", "jit_command"] | None = None


rule_tools(
    "access_request_rules",
    "access_request_rule",
    "access request rule",
    services=RuleServices(
        to_dict=services.access_rule_to_dict,
        list=services.access_rule_list,
        get=services.access_rule_get,
        create=services.access_rule_create,
        update=services.access_rule_update,
        delete=services.access_rule_delete,
    ),
    out=RuleOut,
    create_args=RuleCreate,
    update_args=RuleUpdate,
    create_help="Create an access request rule. " + RULE_HELP,
)


class SettingsOut(shapes.ReviewSettingsOut):
    model_config = shared("reviews_settings_get")


class NoArgs(Args):
    pass


class SettingsArgs(Args):
    allow_self_approval: bool | None = None
    mcp_decisions_enabled: bool | None = None
    review_ttl_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = None


@tool(
    "reviews_settings_get",
    description="The org's review settings.",
    args=NoArgs,
    result=SettingsOut,
    role=ROLE_AUDITOR,
)
async def reviews_settings_get(actor, args, ctx) -> SettingsOut:
    return SettingsOut(**await db(lambda: services.review_settings_get(actor=actor))())


@tool(
    "reviews_settings_update",
    description="Change the org's review settings given.",
    args=SettingsArgs,
    result=SettingsOut,
    role=ROLE_ADMIN,
    read_only=False,
    idempotent=True,
)
async def reviews_settings_update(actor, args: SettingsArgs, ctx) -> SettingsOut:
    @db
    def run():
        current = services.review_settings_update(actor=actor, **args.model_dump())
        return services.review_settings_to_dict(current)

    return SettingsOut(**await run())
