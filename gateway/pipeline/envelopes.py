"""The agent-facing answers for a session (`exec_envelope`, `tool_envelope`): `status` is what the
agent branches on. Built from the session alone, never querying (they run in async code)."""

from __future__ import annotations

from django.conf import settings

from reviews.models import Review
from sessions.models import Analysis, Session, SessionStatus
from sessions.services import analysis_to_dict


def _loaded_analysis(session: Session) -> dict | None:
    """The session's analysis if it was loaded with it (select_related("analysis")), else None.
    Never queries: the envelope is built in async code, and the analysis usually comes later
    (sessions_get_analysis / sessions_wait_analysis)."""
    if not Session.analysis.is_cached(session):
        return None
    try:
        analysis = session.analysis
    except Analysis.DoesNotExist:
        return None
    data = analysis_to_dict(session.pk, analysis)
    return {k: data[k] for k in ("risk_level", "title", "explanation", "suggested_action", "analyzer")}


def _loaded_review_id(session: Session) -> str | None:
    """The review's id if it was loaded with the session (select_related("review")); never queries."""

    if not Session.review.is_cached(session):
        return None
    try:
        return str(session.review.pk)
    except Review.DoesNotExist:
        return None


def exec_envelope(session: Session) -> dict:
    """The agent-facing answer for a session; `status` is what the agent branches on."""
    envelope: dict = {"session_id": str(session.pk), "session_status": session.status}
    if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING):
        envelope.update(
            status="running",
            message="still running; the gateway keeps running it and records the result",
            next_step="call sessions_wait with session_id until it finishes, or exec_cancel to stop it",
        )
        return envelope
    if session.status == SessionStatus.PENDING_REVIEW:
        review = getattr(session, "pending_review", None)
        review_id = str(review.pk) if review is not None else _loaded_review_id(session)
        envelope.update(
            status="pending_approval",
            review_id=review_id,
            review_url=f"{settings.PUBLIC_BASE_URL}/reviews/{review_id}/" if review_id else None,
            message="approval required before this execution can run; nothing has run",
            next_step=(
                "call reviews_wait with review_id (long-polls until the reviewers decide); once its status "
                "is APPROVED call reviews_execute with review_id to run exactly this input"
            ),
        )
        return envelope
    if session.status == SessionStatus.BLOCKED:
        envelope.update(
            status="blocked",
            rule=session.guardrail_findings[0]["rule"] if session.guardrail_findings else None,
            message=session.error,
            exit_code=session.exit_code,
        )
        return envelope
    output = session.output
    if session.error:
        output = f"{output}\n{session.error}" if output else session.error
    completed = session.status == SessionStatus.DONE and session.exit_code == 0
    envelope.update(
        status="completed" if completed else "failed",
        output=output,
        exit_code=session.exit_code,
        row_count=session.row_count,
        truncated=session.truncated,
        execution_time_ms=session.execution_time_ms,
        analysis=_loaded_analysis(session),
    )
    if session.result:
        envelope["columns"] = session.result.get("columns")
        envelope["rows"] = session.result.get("rows")
    if session.masking:
        envelope["masking"] = session.masking.get("counts", {})
    return envelope


def tool_envelope(session: Session) -> dict:
    """The agent-facing answer for a tool session; `status` is what the agent branches on."""
    result = session.result if isinstance(session.result, dict) else {}
    if session.status == SessionStatus.PENDING_REVIEW:
        review = getattr(session, "pending_review", None)
        review_id = str(review.pk) if review is not None else _loaded_review_id(session)
        url = f"{settings.PUBLIC_BASE_URL}/reviews/{review_id}/"
        return {
            "status": "pending_approval",
            "session_id": str(session.pk),
            "session_status": session.status,
            "connection_name": session.connection_name,
            "tool": (session.metadata or {}).get("tool", ""),
            "content": [],
            "structured_content": None,
            "is_error": True,
            "message": (
                f"approval required before this call can run: review {review_id} is pending ({url}); "
                "nothing has run. Make the same call again (same tool, same arguments) to wait for the "
                "decision: once approved, that call runs it, once. Or call reviews_wait with the review_id, "
                "then reviews_execute"
            ),
            "review_id": review_id,
            "review_url": url,
            "execution_time_ms": None,
            "masking": None,
            "rule": None,
        }
    completed = session.status == SessionStatus.DONE and session.exit_code == 0
    status = (
        "blocked"
        if session.status in (SessionStatus.BLOCKED, SessionStatus.REJECTED)
        else "completed"
        if completed
        else "running"
        if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING)
        else "failed"
    )
    return {
        "status": status,
        "session_id": str(session.pk),
        "session_status": session.status,
        "connection_name": session.connection_name,
        "tool": (session.metadata or {}).get("tool", ""),
        "content": result.get("content") or [],
        "structured_content": result.get("structuredContent"),
        "is_error": bool(result.get("isError")) or status in ("failed", "blocked"),
        "message": session.error or None,
        "execution_time_ms": session.execution_time_ms,
        "masking": (session.masking or {}).get("counts") or None,
        "rule": session.guardrail_findings[0]["rule"] if session.guardrail_findings else None,
    }
