"""Running things: exec, sessions_wait, exec_cancel."""

from __future__ import annotations

from typing import Annotated, Any

from channels.db import database_sync_to_async as db
from django.conf import settings
from pydantic import Field

from gateway import pipeline, shapes
from mcpserver.registry import Args, Result, shared, tool
from sessions.services import session_get
from sessions.wakeup import wait_for_final

DEFAULT_WAIT = 45.0
MAX_WAIT = 300.0


def idempotency_key_field(description: str | None = None):
    """`idempotency_key`, described once (on exec): the other tools that run something take the same."""
    return Field(None, min_length=1, max_length=200, description=description)


class ExecArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)
    input: str = Field(min_length=1, description="SQL, or stdin for a command connection.")
    max_rows: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        None, description="Within the connection's limit."
    )
    metadata: dict[str, Any] | None = Field(None, description="Kept with the session.")
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] | None = Field(
        None,
        description="Seconds before answering `running` (default 50).",
    )
    idempotency_key: str | None = idempotency_key_field("Retry with the same key: never runs twice.")


class ExecEnvelope(shapes.ExecOut):
    model_config = shared("exec")


TEXT_PREVIEW_BYTES = 64 * 1024


def text_preview(output: str) -> str:
    """`output` up to TEXT_PREVIEW_BYTES, cut at a line end, saying how much was left out."""
    if len(output) <= TEXT_PREVIEW_BYTES // 4 or len(output.encode()) <= TEXT_PREVIEW_BYTES:
        return output
    cut = output.encode()[:TEXT_PREVIEW_BYTES].decode(errors="ignore")
    cut = cut[: cut.rfind("\n") + 1 or len(cut)]
    return cut + (
        f"[… {len(output.encode()) - len(cut.encode())} more bytes: the whole result is in the structured "
        "content (rows), and sessions_get with content=true pages through it]"
    )


def envelope_of(session, **extra) -> ExecEnvelope:
    """The envelope of a session, built without re-validating what the pipeline built: a large
    result's rows are checked once (by the connector), not again row by row here. With rows, the
    text rendering of the same rows is a preview: a large result travels once."""
    fields = {**pipeline.exec_envelope(session), **extra}
    if fields.get("rows") is not None and fields.get("output"):
        fields["output"] = text_preview(fields["output"])
    return ExecEnvelope.model_construct(**fields)


def render_envelope(r: ExecEnvelope) -> str:
    """The short text rendering beside the structured envelope. A large result is previewed: its
    rows are in the structured content once, not a second time here."""
    if r.status in ("completed", "failed"):
        head = f"[{r.status}] session {r.session_id}"
        if r.row_count is not None:
            head += f", {r.row_count} row(s)" + (" (truncated)" if r.truncated else "")
        if r.exit_code not in (None, 0):
            head += f", exit code {r.exit_code}"
        return f"{head}\n{text_preview(r.output or '')}".rstrip()
    review = f" (review {r.review_id}: {r.review_url})" if r.review_id else ""
    return f"[{r.status}] session {r.session_id}{review}: {r.message or ''} {r.next_step or ''}".strip()


async def _wait(session_id, timeout: float, ctx):
    async def progress(elapsed, total):
        await ctx.progress(round(elapsed, 1), total, "still running")

    return await wait_for_final(
        session_id, timeout, on_progress=progress, progress_every=settings.PROGRESS_INTERVAL_SECONDS
    )


@tool(
    "exec",
    description=(
        "Run SQL or a command on a connection (policy, review, masking, audit apply). Branch on `status`: "
        "completed | failed | blocked | pending_approval (reviews_wait review_id, then reviews_execute) | running "
        "(sessions_wait)."
    ),
    args=ExecArgs,
    result=ExecEnvelope,
    read_only=False,
    destructive=True,
    render=render_envelope,
    capability="read_only",  # the pipeline applies the token's ceiling itself
)
async def exec_tool(actor, args: ExecArgs, ctx) -> ExecEnvelope:
    session = await db(
        lambda: pipeline.exec_start(
            actor=actor,
            connection_name=args.connection_name,
            input=args.input,
            max_rows=args.max_rows,
            metadata=args.metadata,
            idempotency_key=args.idempotency_key,
        )
    )()
    if not session.is_final and session.status != "pending_review":
        handoff = args.timeout_seconds or settings.EXEC_HANDOFF_SECONDS
        session, _ = await _wait(session.pk, handoff, ctx)
    return envelope_of(session)


class WaitArgs(Args):
    session_id: str = Field(min_length=1, max_length=64)
    timeout_seconds: Annotated[float, Field(ge=1, le=MAX_WAIT)] = Field(
        DEFAULT_WAIT,
        description="Default 45.",
    )


@tool(
    "sessions_wait",
    description=("Wait for a running session to end; exec's envelope, or timed_out=true (call again)."),
    args=WaitArgs,
    result=ExecEnvelope,
    render=render_envelope,
)
async def sessions_wait(actor, args: WaitArgs, ctx) -> ExecEnvelope:

    session = await db(lambda: session_get(actor=actor, session_id=args.session_id, action="view_content"))()
    session, timed_out = await _wait(session.pk, args.timeout_seconds, ctx)
    return envelope_of(session, timed_out=timed_out)


class CancelArgs(Args):
    session_id: str = Field(min_length=1, max_length=64)


class CancelResult(Result):
    session_id: str
    status: str
    cancel_requested: bool
    message: str


@tool(
    "exec_cancel",
    description="Stop a queued or running session of yours (admins: any).",
    args=CancelArgs,
    result=CancelResult,
    read_only=False,
    destructive=True,
    render=lambda r: r.message,
    capability="read_only",  # stopping one's own session changes no data
)
async def exec_cancel(actor, args: CancelArgs, ctx) -> CancelResult:
    session = await db(lambda: pipeline.exec_cancel(actor=actor, session_id=args.session_id))()
    message = (
        "cancelled before it ran"
        if session.status == "cancelled"
        else "cancel requested; the session stops within a second (see sessions_wait)"
    )
    return CancelResult(
        session_id=str(session.pk), status=session.status, cancel_requested=True, message=message
    )


class ExplainArgs(Args):
    connection_name: str = Field(min_length=1, max_length=63)
    input: str = Field(min_length=1)


class ExplainFinding(shapes.ExplainFinding):
    model_config = shared("exec_explain")  # guardrails_test's findings too


class ExplainResult(shapes.ExplainOut):
    findings: list[ExplainFinding]  # the shared record (described once, by exec_explain)


@tool(
    "exec_explain",
    description=("Dry run of exec: blocking guardrails, read-only or not, masking, review needed."),
    args=ExplainArgs,
    result=ExplainResult,
    render=lambda r: (
        ("would run" if r.would_run else "would be BLOCKED by " + ", ".join(r.blocked_by))
        + (" (read-only)" if r.read_only else "")
    ),
)
async def exec_explain(actor, args: ExplainArgs, ctx) -> ExplainResult:
    return ExplainResult(
        **await db(
            lambda: pipeline.exec_explain(actor=actor, connection_name=args.connection_name, input=args.input)
        )()
    )
