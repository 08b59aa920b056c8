"""AI risk analysis of sessions: sessions_get_analysis, sessions_wait_analysis."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from channels.db import database_sync_to_async as db
from django.conf import settings
from pydantic import AliasChoices, Field

from mcpserver.registry import Args, Result, shared, tool
from sessions import services
from sessions.wakeup import wait_for_analysis

DEFAULT_WAIT = 45.0
MAX_WAIT = 300.0


class AnalysisArgs(Args):
    session_id: str = Field(min_length=1, max_length=64, validation_alias=AliasChoices("session_id", "id"))


class AnalysisOut(Result):
    # sessions_wait_analysis answers the same record, plus timed_out and waited_seconds.
    model_config = shared("sessions_get_analysis")

    session_id: str
    status: Literal["ready", "pending"] = Field(
        description="pending until the analysis is stored (shortly after the session ends)."
    )
    risk_level: Literal["low", "medium", "high", "critical"] | None
    title: str | None
    explanation: str | None
    suggested_action: str | None
    analyzer: str | None = Field(description='"builtin" or "llm:<model>".')
    fallback_reason: str | None = Field(
        description="Why the built-in analyzer answered although an LLM analyzer is configured."
    )
    reasons: list[str] = Field(description='Machine-readable reasons, e.g. "ddl.drop", "write.no_where".')
    created_at: str | None


class WaitAnalysisArgs(AnalysisArgs):
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] = Field(
        DEFAULT_WAIT,
        description="Seconds (default 45); on expiry timed_out=true: call again.",
    )


class WaitAnalysisOut(AnalysisOut):
    timed_out: bool
    waited_seconds: float


def render(r: AnalysisOut) -> str:
    if r.status == "pending":
        return f"analysis of session {r.session_id} is pending" + (
            " (timed out; call again)" if getattr(r, "timed_out", False) else ""
        )
    head = f"[{r.risk_level}] {r.title}"
    return f"{head}\n{r.explanation}\nSuggested action: {r.suggested_action}"


@tool(
    "sessions_get_analysis",
    description=(
        "A session's risk analysis (level, title, explanation, suggested action) or status pending. Owner, "
        "admins, auditors."
    ),
    args=AnalysisArgs,
    result=AnalysisOut,
    render=render,
)
async def sessions_get_analysis(actor, args: AnalysisArgs, ctx) -> AnalysisOut:
    session, analysis = await db(lambda: services.analysis_get(actor=actor, session_id=args.session_id))()
    return AnalysisOut(**services.analysis_to_dict(session.pk, analysis))


@tool(
    "sessions_wait_analysis",
    description=(
        "Wait for a session's risk analysis: sessions_get_analysis's record, plus timed_out (true: call "
        "again) and waited_seconds."
    ),
    args=WaitAnalysisArgs,
    result=WaitAnalysisOut,
    render=render,
)
async def sessions_wait_analysis(actor, args: WaitAnalysisArgs, ctx) -> WaitAnalysisOut:
    started = time.monotonic()
    session, analysis = await db(lambda: services.analysis_get(actor=actor, session_id=args.session_id))()
    timed_out = False
    if analysis is None:

        async def progress(elapsed, total):
            await ctx.progress(round(elapsed, 1), total, "analysis pending")

        analysis, timed_out = await wait_for_analysis(
            session.pk,
            args.timeout_seconds,
            on_progress=progress,
            progress_every=settings.PROGRESS_INTERVAL_SECONDS,
        )
    return WaitAnalysisOut(
        **services.analysis_to_dict(session.pk, analysis),
        timed_out=timed_out,
        waited_seconds=round(time.monotonic() - started, 3),
    )
