"""AI risk analysis of sessions: sessions_get_analysis, which also waits for it (timeout_seconds;
it replaced sessions_wait_analysis, one tool less in every caller's tools/list)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AliasChoices, Field

from gateway import shapes, waits
from gateway.waits import MAX_WAIT
from mcpserver.registry import Args, tool

AnalysisOut = shapes.AnalysisOut


class AnalysisArgs(Args):
    session_id: str = Field(min_length=1, max_length=64, validation_alias=AliasChoices("session_id", "id"))
    timeout_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT)] = Field(0, description="Wait while pending.")


def render(r: AnalysisOut) -> str:
    if r.status == "pending":
        return f"analysis of session {r.session_id} is pending" + (
            " (timed out; call again)" if r.timed_out else ""
        )
    head = f"[{r.risk_level}] {r.title}"
    return f"{head}\n{r.explanation}\nSuggested action: {r.suggested_action}"


@tool(
    "sessions_get_analysis",
    description=("A session's risk analysis (level, explanation, suggested action), or status pending."),
    args=AnalysisArgs,
    result=AnalysisOut,
    render=render,
)
async def sessions_get_analysis(actor, args: AnalysisArgs, ctx) -> AnalysisOut:
    async def progress(elapsed, total):
        await ctx.progress(round(elapsed, 1), total, "analysis pending")

    return AnalysisOut(
        **await waits.analysis_wait(
            actor=actor, session_id=args.session_id, timeout=args.timeout_seconds, on_progress=progress
        )
    )
