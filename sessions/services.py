"""Reading session records, their risk analyses, and the sweepers that end orphans and catch
analyses that were lost on the way."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from celery import shared_task
from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import Q
from django.utils import timezone

from governance import rules
from governance.errors import InvalidInput
from governance.guardrails import find_secrets
from governance.policy import ROLE_AUDITOR, Actor, get_scoped, has_role, parse_id, require_role, scope
from reviews.models import Review, ReviewStatus
from sessions import analysis as analyzer
from sessions import lifecycle, outbox
from sessions.models import (
    FINAL_STATUSES,
    Analysis,
    AuditEvent,
    RiskLevel,
    Runner,
    Session,
    SessionStatus,
)
from sessions.outbox import outbox_put
from sessions.wakeup import notify_analysis_ready

logger = logging.getLogger("portcullis.sessions")

MAX_LIMIT = 100
MAX_OFFSET = 10_000


def _parse_time(value: str | datetime | None, field: str) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"invalid {field} format, expected RFC 3339 (e.g. 2026-01-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone (e.g. a trailing Z)")
    return parsed


def _visible_sessions(
    actor: Actor | None,
    *,
    org_id=None,
    user_email=None,
    connection=None,
    status=None,
    verb=None,
    surface=None,
    risk_level=None,
    review_status=None,
    start_date=None,
    end_date=None,
    rule=None,
    text=None,
):
    """The sessions `actor` may see, filtered: the one filter path of sessions_list, sessions_stats
    and exports. `actor=None` is the system (CLI): every session of `org_id`.

    Every filter but `rule`, `text` and `review_status` is a column of the session (risk_level is
    the session's copy of its analysis'), each with an index that ends in created_at (see
    Session.Meta): no join, pages read in order. `rule` (a guardrail rule named in the session's
    findings) and `text` (a case-insensitive substring of the input) narrow what those give; bound
    them with a connection or dates on a large org.
    """
    if status and status not in SessionStatus.values:
        raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(SessionStatus.values)}")
    if risk_level and risk_level not in RiskLevel.values:
        raise InvalidInput(f"unknown risk level {risk_level!r}; use one of: {', '.join(RiskLevel.values)}")
    if review_status:
        review_status = review_status.upper()
        if review_status not in ReviewStatus.values:
            raise InvalidInput(
                f"unknown review status {review_status!r}; use one of: {', '.join(ReviewStatus.values)}"
            )
    start, end = _parse_time(start_date, "start_date"), _parse_time(end_date, "end_date")
    filters = {
        "review__status": review_status,
        "user__email": user_email.lower() if user_email else None,
        "connection_name": connection,
        "status": status,
        "verb": verb,
        "surface": surface,
        "risk_level": risk_level,
        "created_at__gte": start,
        "created_at__lt": end,
    }
    base = (
        scope(Session.objects.all(), actor, "view")
        if actor is not None
        else Session.objects.filter(org_id=org_id)
    )
    qs = base.filter(**{k: v for k, v in filters.items() if v})
    if rule:
        qs = qs.filter(_rule_filter(str(rule)[:100]))
    if text:
        qs = qs.filter(input__icontains=str(text)[:200])
    return qs


def _rule_filter(rule: str) -> Q:
    """Sessions whose guardrail findings name `rule` (any statement, any condition)."""
    if connections["default"].vendor == "postgresql":
        return Q(guardrail_findings__contains=[{"rule": rule}])
    # SQLite has no JSON containment; the stored JSON text (json.dumps) has the pair verbatim.
    import json

    return Q(guardrail_findings__contains=json.dumps({"rule": rule})[1:-1])


SESSION_STATUSES = tuple(SessionStatus.values)
_PREVIEW_CHARS = 200
# A quoted literal ('...' with '' escapes, or $$...$$): what a preview never shows.
_LITERAL = re.compile(r"'(?:[^']|'')*'?|\$\$.*?(?:\$\$|$)", re.S)
_LONG_NUMBER = re.compile(r"\b\d{6,}\b")


def input_preview(text: str) -> str:
    """The shape of an input for lists and reports: whitespace collapsed, every quoted literal and
    every long number (card, phone, account numbers) replaced by `?`, secrets never shown, cut at
    200 characters. Statement keywords, tables and columns stay: that is what a report asks."""

    if find_secrets(text):
        return "[input holds a secret; open the session to read it]"
    masked = _LONG_NUMBER.sub("?", _LITERAL.sub("?", text))
    flat = " ".join(masked.split())
    return flat if len(flat) <= _PREVIEW_CHARS else flat[: _PREVIEW_CHARS - 1] + "…"


def session_list(
    *,
    actor: Actor,
    user_email: str | None = None,
    connection: str | None = None,
    status: str | None = None,
    verb: str | None = None,
    surface: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    risk_level: str | None = None,
    review_status: str | None = None,
    rule: str | None = None,
    text: str | None = None,
    limit: int = 20,
    offset: int = 0,
    cursor: str | None = None,
) -> tuple[list[Session], int]:
    """Sessions the actor may see (own; all in the org for admins and auditors), newest first, and
    how many match the filters. Pages by `offset` (up to MAX_OFFSET) or by `cursor`, the
    `session_cursor` of the last session of the previous page, which reads any depth at the cost
    of the first page. Raises InvalidInput for a bad filter, limit, offset or cursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}; use the cursor or narrow the filters")
    if cursor and offset:
        raise InvalidInput("give either cursor or offset, not both")
    qs = _visible_sessions(
        actor,
        user_email=user_email,
        connection=connection,
        status=status,
        verb=verb,
        surface=surface,
        risk_level=risk_level,
        review_status=review_status,
        start_date=start_date,
        end_date=end_date,
        rule=rule,
        text=text,
    )
    total = qs.count()
    if cursor:
        qs = _after_cursor(qs, cursor)
    qs = qs.select_related("user", "review").order_by("-created_at", "-pk")
    return list(qs[offset : offset + limit]), total


def session_cursor(session: Session) -> str:
    """The opaque cursor of the page that follows `session` in session_list's order (newest first)."""
    raw = f"{session.created_at.isoformat()}|{session.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _after_cursor(qs, cursor: str):
    """The sessions after the cursor's one: keyset pagination on (created_at, id), both descending."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when_text, pk_text = raw.split("|")
        when, pk = datetime.fromisoformat(when_text), uuid.UUID(pk_text)
        if when.tzinfo is None:
            raise ValueError("naive time")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("invalid cursor; pass next_cursor from the previous page unchanged") from None
    # created_at <= when bounds the index range; the OR breaks ties between equal times by id.
    return qs.filter(created_at__lte=when).filter(Q(created_at__lt=when) | Q(created_at=when, pk__lt=pk))


def session_get(*, actor: Actor, session_id, action: str = "view") -> Session:
    """One session the actor may see, or NotFound("session not found") for missing and forbidden alike."""
    pk = parse_id(session_id, "session not found")
    return get_scoped(
        Session.objects.select_related("user", "review"), actor, action, not_found="session not found", pk=pk
    )


def session_to_dict(session: Session, *, actor: Actor) -> dict:
    """Metadata of a session, without its content, as `actor` may see it: guardrail findings (which
    rule, which statement, what matched) are for admins and auditors; everyone sees the rules' names."""

    privileged = has_role(actor, ROLE_AUDITOR)
    findings = session.guardrail_findings or []
    # The preview follows who may read the content (owner, admins, auditors); a reviewer who sees
    # the row through a review reads the input in reviews_get instead.
    readable = privileged or session.user_id == actor.user.pk
    review = _review_of(session)
    return {
        "input_preview": input_preview(session.input) if readable else None,
        "review_status": review.status if review is not None else None,
        "review_id": str(review.pk) if review is not None else None,
        "risk_level": session.risk_level,
        "guardrails": sorted({f["rule"] for f in findings}),
        "guardrail_findings": findings if privileged else [],
        "masking": (session.masking or {}).get("counts", {}),
        "id": str(session.pk),
        "connection": session.connection_name,
        "connection_kind": session.connection_kind,
        "user_email": session.user.email,
        "surface": session.surface,
        "client": session.client,
        "verb": session.verb,
        "status": session.status,
        "exit_code": session.exit_code,
        "row_count": session.row_count,
        "truncated": session.truncated,
        "input_bytes": session.input_bytes,
        "input_sha256": session.input_sha256,
        "error": session.error,
        "metadata": session.metadata,
        "created_at": session.created_at.isoformat(),
        "started_at": session.started_at.isoformat() if session.started_at else None,
        "ended_at": session.ended_at.isoformat() if session.ended_at else None,
        "execution_time_ms": session.execution_time_ms,
    }


def _review_of(session: Session):
    from django.core.exceptions import ObjectDoesNotExist

    try:
        return session.review
    except ObjectDoesNotExist:
        return None


def session_content(*, actor: Actor, session_id, offset: int = 0, max_bytes: int = 64 * 1024) -> dict:
    """Input and output of a session as its caller saw it, the output paged by byte ranges."""
    if offset < 0:
        raise InvalidInput("offset must not be negative")
    if not 1 <= max_bytes <= 1024 * 1024:
        raise InvalidInput("max_bytes must be between 1 and 1048576")
    session = session_get(actor=actor, session_id=session_id, action="view_content")
    data = session.output.encode()
    chunk = data[offset : offset + max_bytes]
    next_offset = offset + len(chunk) if offset + len(chunk) < len(data) else None
    return {
        "id": str(session.pk),
        "connection": session.connection_name,
        "status": session.status,
        "verb": session.verb,
        "input": session.input,
        "input_truncated": session.input_truncated,
        "output": chunk.decode(errors="ignore"),
        "output_offset": offset,
        "output_total_bytes": len(data),
        "next_offset": next_offset,
        "columns": (session.result or {}).get("columns"),
        "rows": (session.result or {}).get("rows") if offset == 0 else None,
        "exit_code": session.exit_code,
        "error": session.error,
        "timeline": session_timeline(session),
    }


def session_timeline(session: Session) -> list[dict]:
    """What happened to a session, in order: recorded, queued for review, each decision, approved
    or rejected, run requested, started, finished, analysed. Two queries at most."""

    events = [("recorded", session.created_at, f"via {session.surface}")]
    review = Review.objects.filter(session_id=session.pk).first()
    if review is not None:
        events.append(("queued_for_review", review.created_at, f"review {review.pk}"))
        for decision in review.decisions.select_related("reviewer"):
            note = f"{decision.reviewer.email} for {decision.group_name}" + (
                f": {decision.reason}" if decision.reason else ""
            )
            events.append((f"review_{decision.decision.lower()}", decision.created_at, note))
        if review.decided_at and review.status != "PENDING":
            outcome = (
                "approved" if review.executed_at or review.status == "APPROVED" else review.status.lower()
            )
            events.append(
                (outcome, review.decided_at, "the review's quorum was met" if outcome == "approved" else "")
            )
        if review.executed_at:
            events.append(("run_requested", review.executed_at, "reviews_execute"))
    if session.started_at:
        events.append(("started", session.started_at, ""))
    if session.ended_at:
        note = f"exit code {session.exit_code}" if session.exit_code is not None else session.error[:200]
        events.append((session.status if session.status != "done" else "finished", session.ended_at, note))
    analysis = Analysis.objects.filter(session_id=session.pk).values_list("created_at", "risk_level").first()
    if analysis:
        events.append(("analysed", analysis[0], f"risk {analysis[1]}"))
    events.sort(key=lambda e: e[1])
    return [{"event": name, "at": at.isoformat(), "detail": detail} for name, at, detail in events]


def sessions_sweep_orphans(*, now=None) -> int:
    """End every running session whose run lease lapsed (its runner stopped renewing it: the process
    died, lost the database, or hangs): failed, outcome unknown. Safe to run anywhere and often.
    Open sessions whose dispatch lease lapsed are picked up by `gateway.maintenance`, which can
    run them; this is the part that needs no connector."""

    running, _ = lifecycle.lapsed()
    # Exactly-once runs (approved executions) are resolved by asking their target (gateway.maintenance).
    specs = Session.objects.filter(pk__in=running).values_list("pk", "run_spec")
    unknowable = [pk for pk, spec in specs if not ((spec or {}).get("limits") or {}).get("exactly_once")]
    swept = sum(1 for pk in unknowable if lifecycle.end_lapsed_run(pk) is not None)
    if swept:
        logger.warning("ended %d session(s) whose run lease lapsed", swept)
    Runner.objects.filter(last_seen_at__lt=(now or timezone.now()) - timedelta(days=1)).delete()
    return swept


def audit_event_list(
    *,
    actor: Actor,
    actor_email: str | None = None,
    action: str | None = None,
    surface: str | None = None,
    outcome: str | None = None,
    start_date: str | None = None,
    end_date: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEvent], int]:
    """Audit events of the actor's org, newest first (admins and auditors)."""
    qs = _visible_audit_events(
        actor,
        actor_email=actor_email,
        action=action,
        surface=surface,
        outcome=outcome,
        start_date=start_date,
        end_date=end_date,
    )
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET}; narrow the filters instead")
    qs = qs.order_by("-id")
    return list(qs[offset : offset + limit]), qs.count()


def _visible_audit_events(
    actor: Actor | None,
    *,
    org_id=None,
    actor_email=None,
    action=None,
    surface=None,
    outcome=None,
    start_date=None,
    end_date=None,
):
    """The audit events `actor` may read (admins and auditors: their org's), filtered: the one
    filter path of audit_events_list and exports. `actor=None` is the system (CLI): `org_id`'s."""

    if actor is not None:
        require_role(actor, ROLE_AUDITOR)
        org_id = actor.org_id
    qs = AuditEvent.objects.filter(org_id=org_id)
    if actor_email:
        qs = qs.filter(actor_email=actor_email.lower())
    if action:
        qs = qs.filter(action__startswith=action) if action.endswith(".") else qs.filter(action=action)
    if surface:
        qs = qs.filter(surface=surface)
    if outcome:
        qs = qs.filter(outcome=outcome)
    start, end = _parse_time(start_date, "start_date"), _parse_time(end_date, "end_date")
    if start:
        qs = qs.filter(created_at__gte=start)
    if end:
        qs = qs.filter(created_at__lt=end)
    return qs


def audit_event_to_dict(event: AuditEvent) -> dict:
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "actor_email": event.actor_email,
        "surface": event.surface,
        "client": event.client,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target": event.target_repr,
        "outcome": event.outcome,
        "detail": event.detail,
        "hash": event.hash,
    }


# --- AI risk analysis ------------------------------------------------------------------------------

ANALYSIS_SWEEP_GRACE_SECONDS = 120  # the task had this long to run before the sweep steps in
ANALYSIS_SWEEP_WINDOW = timedelta(days=1)
_analysis_pool: ThreadPoolExecutor | None = None
_analysis_pool_lock = threading.Lock()
_analysis_pending = 0


def analysis_enqueue(*, session_id) -> None:
    """Have the session analysed once the current transaction commits: an outbox row (the
    lifecycle writes it where a session becomes final), claimed by the Celery worker
    (sessions.analysis_drain) — or, in embedded mode, delivered by the relay to a small background
    thread of this process, so neither a slow LLM nor an analyzer bug can delay the exec that
    finished."""

    outbox_put("analysis", {"session_id": str(session_id)})


@outbox.handler("analysis")
def _analysis_start(payload: dict) -> None:
    """The relay's delivery of an analysis request in embedded mode: a background thread. With a
    broker the Celery worker claims these rows itself (sessions.analysis_drain); the relay skips them."""
    global _analysis_pending
    with _analysis_pool_lock:
        _analysis_pending += 1
    _analysis_executor().submit(_analysis_in_background, payload["session_id"])


def _analysis_executor() -> ThreadPoolExecutor:
    global _analysis_pool
    with _analysis_pool_lock:
        if _analysis_pool is None:
            _analysis_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="portcullis-analysis")
        return _analysis_pool


def _analysis_in_background(session_id: str) -> None:
    global _analysis_pending
    try:
        session_analyze.apply(args=[session_id], throw=True)
    except Exception:
        logger.exception("analysis of session %s failed; the sweep will retry it", session_id)
    finally:
        connections.close_all()
        with _analysis_pool_lock:
            _analysis_pending -= 1


def analyses_in_background() -> int:
    """How many embedded-mode analyses are queued or running in this process (tests wait for 0)."""
    with _analysis_pool_lock:
        return _analysis_pending


def analysis_run(*, session_id) -> Analysis | None:
    """Analyse a finished session and store the verdict, once. Idempotent: an existing analysis is
    returned as is, and the OneToOne constraint settles a race between two workers (the loser
    returns the winner's row). Returns None for a session that is gone or not finished yet.

    A system action (no actor): called by the Celery task and the sweep, never by a surface.
    """
    # One query: the session, its connection and any analysis already stored (the stored rows,
    # `result`, are not read: the analyzer looks at the output text and the row count).
    session = (
        Session.objects.select_related("connection__org", "analysis")
        .defer("result")
        .filter(pk=session_id)
        .first()
    )
    if session is None:
        logger.info("session %s is gone; nothing to analyse", session_id)
        return None
    existing = getattr(session, "analysis", None)  # loaded with the session (None: not yet)
    if existing is not None:
        return existing
    if not session.is_final:
        logger.warning("session %s is %s, not finished; not analysed yet", session_id, session.status)
        return None
    verdict = analyzer.analyze(
        session, mask=_input_masker(session)
    )  # outside any transaction: an LLM may take seconds
    analysis = _analysis_of(session, verdict)
    try:
        with transaction.atomic():
            analysis.save(force_insert=True)
            transaction.on_commit(lambda: notify_analysis_ready(session.pk))
    except IntegrityError:  # another worker stored it between our check and our insert
        analysis = Analysis.objects.get(session_id=session.pk)
    return analysis


def _analysis_of(session: Session, verdict) -> Analysis:
    """The (unsaved) analysis row of an analyzer's verdict, its texts cut to their columns."""
    return Analysis(
        session=session,
        risk_level=verdict.risk_level,
        title=verdict.title[:200],
        explanation=verdict.explanation,
        suggested_action=verdict.suggested_action,
        analyzer=verdict.analyzer[:120],
        fallback_reason=verdict.fallback_reason[:300],
        reasons=verdict.reasons,
    )


def analyses_make(*, session_ids: list[str]) -> tuple[list[Analysis], dict[str, str]]:
    """Verdicts for a batch of finished sessions (the worker's drain), unsaved: (the new analyses,
    {session id: error} for the sessions whose analyzer raised). Sessions that are gone, not
    finished or already analysed get neither. One query loads the batch; the analyzer's own
    queries run per session, outside any transaction (an LLM may take seconds: with one configured,
    up to ANALYSIS_LLM_CONCURRENCY sessions are asked at once).

    A system action (no actor), like `analysis_run`; `analyses_store` writes the result."""
    sessions = [
        s
        for s in Session.objects.select_related("connection__org", "analysis")
        .defer("result")
        .filter(pk__in=session_ids)
        if getattr(s, "analysis", None) is None and s.is_final
    ]
    failed: dict[str, str] = {}

    def verdict(session: Session):
        try:
            return analyzer.analyze(session, mask=_input_masker(session))
        except Exception as exc:  # one broken session must not cost the batch its analyses
            logger.exception("analysis of session %s failed; it will be retried", session.pk)
            failed[str(session.pk)] = f"{type(exc).__name__}: {exc}"
            return None

    if analyzer.llm_configured() and len(sessions) > 1:
        verdicts = list(_llm_executor().map(verdict, sessions))
    else:
        verdicts = [verdict(session) for session in sessions]
    made = [_analysis_of(session, v) for session, v in zip(sessions, verdicts, strict=True) if v is not None]
    return made, failed


_llm_pool: ThreadPoolExecutor | None = None


def _llm_executor() -> ThreadPoolExecutor:
    global _llm_pool
    with _analysis_pool_lock:
        if _llm_pool is None:
            _llm_pool = ThreadPoolExecutor(
                max_workers=settings.ANALYSIS_LLM_CONCURRENCY, thread_name_prefix="portcullis-llm"
            )
        return _llm_pool


# PostgreSQL: a batch of analyses and the sessions' copies of their risk levels in one statement.
# A session analysed meanwhile by someone else (the sweep) keeps that analysis (one per session).
_STORE_SQL = (
    "WITH new AS (INSERT INTO {analysis} (session_id, risk_level, title, explanation, suggested_action, "
    "analyzer, fallback_reason, reasons, created_at) "
    "SELECT a.*, now() FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
    "%s::text[], %s::jsonb[]) AS a "
    "ON CONFLICT (session_id) DO NOTHING RETURNING session_id, risk_level) "
    "UPDATE {session} s SET risk_level = new.risk_level FROM new WHERE s.id = new.session_id RETURNING s.id"
)


def analyses_store(analyses: list[Analysis]) -> int:
    """Store a batch of new analyses (from `analyses_make`) in the caller's transaction, skipping
    sessions analysed meanwhile; waiters are woken on commit. Returns how many were stored."""
    if not analyses:
        return 0
    db = connections["default"]
    if db.vendor == "postgresql":
        columns = [
            [str(a.session_id) for a in analyses],
            [a.risk_level for a in analyses],
            [a.title for a in analyses],
            [a.explanation for a in analyses],
            [a.suggested_action for a in analyses],
            [a.analyzer for a in analyses],
            [a.fallback_reason for a in analyses],
            [json.dumps(a.reasons) for a in analyses],
        ]
        sql = _STORE_SQL.format(
            analysis=db.ops.quote_name(Analysis._meta.db_table),
            session=db.ops.quote_name(Session._meta.db_table),
        )
        with db.cursor() as cursor:
            cursor.execute(sql, columns)
            stored = [row[0] for row in cursor.fetchall()]
    else:
        stored = []
        for analysis in analyses:
            try:
                with transaction.atomic():
                    analysis.save(force_insert=True)
                stored.append(analysis.session_id)
            except IntegrityError:
                pass
    transaction.on_commit(lambda: [notify_analysis_ready(pk) for pk in stored])
    return len(stored)


def analysis_get(*, actor: Actor, session_id) -> tuple[Session, Analysis | None]:
    """A session the actor may read the content of (its owner, admins and auditors) and its
    analysis, None while pending. Raises NotFound("session not found") for everyone else."""
    session = session_get(actor=actor, session_id=session_id, action="view_content")
    return session, Analysis.objects.filter(session_id=session.pk).first()


def analysis_to_dict(session_id, analysis: Analysis | None) -> dict:
    """The agent-facing shape of an analysis (`status` "ready" or "pending")."""
    if analysis is None:
        return {
            "session_id": str(session_id),
            "status": "pending",
            "risk_level": None,
            "title": None,
            "explanation": None,
            "suggested_action": None,
            "analyzer": None,
            "fallback_reason": None,
            "reasons": [],
            "created_at": None,
        }
    return {
        "session_id": str(session_id),
        "status": "ready",
        "risk_level": analysis.risk_level,
        "title": analysis.title,
        "explanation": analysis.explanation,
        "suggested_action": analysis.suggested_action,
        "analyzer": analysis.analyzer,
        "fallback_reason": analysis.fallback_reason,
        "reasons": list(analysis.reasons or []),
        "created_at": analysis.created_at.isoformat(),
    }


def analysis_risk_levels(*, actor: Actor, sessions: list[Session]) -> dict[str, str]:
    """Risk level per session id for a page of sessions a list gave the actor (one query). Only the
    sessions whose analysis the actor may read (`view_content`, as `analysis_get`) are answered."""
    visible = scope(Session.objects.filter(pk__in=[s.pk for s in sessions]), actor, "view_content")
    rows = Analysis.objects.filter(session__in=visible).values_list("session_id", "risk_level")
    return {str(pk): level for pk, level in rows}


def analysis_sweep_missing(*, now=None, limit: int = 200) -> int:
    """Analyse finished sessions of the last day that have none yet and ended more than
    ANALYSIS_SWEEP_GRACE_SECONDS ago (their task was lost: broker down, worker killed). Runs from
    Celery beat every minute, and from the web process in embedded mode. Returns how many it made."""
    now = now or timezone.now()
    pending = (
        Session.objects.filter(
            status__in=FINAL_STATUSES,
            created_at__gte=now - ANALYSIS_SWEEP_WINDOW,
            ended_at__lt=now - timedelta(seconds=ANALYSIS_SWEEP_GRACE_SECONDS),
            analysis__isnull=True,
        )
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    made = 0
    for pk in list(pending):
        try:
            if analysis_run(session_id=pk) is not None:
                made += 1
        except Exception:
            logger.exception("the sweep could not analyse session %s", pk)
    if made:
        logger.warning("analysed %d session(s) whose analysis task was lost", made)
    return made


STATS_GROUPS = (
    "user",
    "connection",
    "status",
    "verb",
    "surface",
    "risk_level",
    "review_status",
    "rule",
    "attribute",
    "day",
    "hour",
    "weekday",
)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Counting scans every session of the range (an index-only scan of Session's "stats" index): the
# range is bounded so that one call stays fast at millions of sessions (bench/sessions_scale.py).
STATS_DEFAULT_DAYS = 30  # without start_date: the last 30 days (up to end_date, or now)
STATS_MAX_DAYS = 120  # four months (the dashboard's widest range); longer ranges are refused


def session_stats(
    *,
    actor: Actor,
    group_by: list[str],
    start_date: str | None = None,
    end_date: str | None = None,
    connection: str | None = None,
    status: str | None = None,
    review_status: str | None = None,
    rule: str | None = None,
    risk_level: str | None = None,
    user_email: str | None = None,
) -> dict:
    """Counts of the sessions the actor may see, grouped by any of STATS_GROUPS (UTC for day, hour
    and weekday), over a date range of at most STATS_MAX_DAYS (the last STATS_DEFAULT_DAYS when no
    start_date is given; `start_date` and `end_date` in the answer say which). One aggregate query.

    `review_status` is the session's review's (null: no review), `rule` each guardrail rule named
    in its findings (null: none), `attribute` each attribute of its connection (null: none); a
    session with two rules or attributes counts in both groups, so `total` counts sessions.
    Raises InvalidInput for a bad group, date or range."""
    from django.db.models import Count
    from django.db.models.functions import ExtractHour, ExtractIsoWeekDay, TruncDate

    if not group_by or len(group_by) > 3 or len(set(group_by)) != len(group_by):
        raise InvalidInput("group_by takes one to three different groups")
    unknown = [g for g in group_by if g not in STATS_GROUPS]
    if unknown:
        raise InvalidInput(f"unknown group {unknown[0]!r}; use any of: {', '.join(STATS_GROUPS)}")
    start, end = _stats_range(start_date, end_date)
    qs = _visible_sessions(
        actor,
        connection=connection,
        status=status,
        start_date=start,
        end_date=end,
        review_status=review_status,
        rule=rule,
        risk_level=risk_level,
        user_email=user_email,
    )
    total = qs.count()
    if "rule" in group_by:
        return _stats_by_rule(qs, group_by, start, end, total)
    columns = {
        "review_status": "review__status",
        "attribute": "connection__attributes__name",
        "user": "user__email",
        "connection": "connection_name",
        "status": "status",
        "verb": "verb",
        "surface": "surface",
        "risk_level": "risk_level",
    }
    computed = {
        "day": TruncDate("created_at"),
        "hour": ExtractHour("created_at"),
        "weekday": ExtractIsoWeekDay("created_at"),
    }
    qs = qs.annotate(**{f"g_{g}": computed[g] for g in group_by if g in computed})
    fields = [columns.get(g, f"g_{g}") for g in group_by]
    rows = (
        # count(*), not count(DISTINCT id): every join here is to one row (the user), so no row
        # repeats, and count(*) needs no column outside the "stats" index (an index-only scan).
        qs.order_by().values(*fields).annotate(count=Count("*")).order_by("-count", *fields)
    )
    groups = []
    for row in rows[:1000]:
        key = {name: _group_value(name, row[field]) for name, field in zip(group_by, fields, strict=True)}
        groups.append({**key, "count": row["count"]})
    return _stats_answer(group_by, start, end, total, groups)


def _group_value(name: str, value):
    if name == "day" and value is not None:
        return value.isoformat()
    if name == "weekday" and value is not None:
        return WEEKDAYS[value - 1]
    return value


def _stats_answer(group_by, start, end, total, groups) -> dict:
    return {
        "group_by": group_by,
        "start_date": start.isoformat().replace("+00:00", "Z"),
        "end_date": end.isoformat().replace("+00:00", "Z"),
        "total": total,
        "groups": groups,
    }


def _stats_by_rule(qs, group_by, start, end, total) -> dict:
    """Grouping by guardrail rule: the rules are inside each session's findings (a JSON list), so
    sessions with findings are read (few: blocked and withheld ones) and counted here, and those
    without are counted by the database under rule null."""
    from collections import Counter

    from django.db.models import Count
    from django.db.models.functions import ExtractHour, ExtractIsoWeekDay, TruncDate

    columns = {
        "user": "user__email",
        "connection": "connection_name",
        "status": "status",
        "verb": "verb",
        "surface": "surface",
        "risk_level": "risk_level",
        "review_status": "review__status",
        "attribute": "connection__attributes__name",
    }
    computed = {
        "day": TruncDate("created_at"),
        "hour": ExtractHour("created_at"),
        "weekday": ExtractIsoWeekDay("created_at"),
    }
    others = [g for g in group_by if g != "rule"]
    qs = qs.annotate(**{f"g_{g}": computed[g] for g in others if g in computed})
    fields = [columns.get(g, f"g_{g}") for g in others]
    counts: Counter = Counter()
    with_findings = qs.exclude(guardrail_findings=[]).values_list("guardrail_findings", *fields)
    for findings, *values in with_findings.iterator(chunk_size=2000):
        key = tuple(_group_value(g, v) for g, v in zip(others, values, strict=True))
        for rule in sorted({f.get("rule") for f in findings or [] if isinstance(f, dict)}):
            counts[(rule, *key)] += 1
    without = qs.filter(guardrail_findings=[]).order_by().values(*fields).annotate(count=Count("*"))
    for row in without:
        counts[(None, *(_group_value(g, row[f]) for g, f in zip(others, fields, strict=True)))] += row[
            "count"
        ]
    groups = []
    for (rule, *values), count in counts.most_common(1000):
        key = dict(zip(others, values, strict=True))
        groups.append({**{g: (rule if g == "rule" else key[g]) for g in group_by}, "count": count})
    return _stats_answer(group_by, start, end, total, groups)


def _stats_range(start_date: str | None, end_date: str | None) -> tuple[datetime, datetime]:
    """The [start, end) range of a sessions_stats call: the last STATS_DEFAULT_DAYS up to `end_date`
    (or now) without `start_date`, and never longer than STATS_MAX_DAYS."""
    end = _parse_time(end_date, "end_date") or timezone.now()
    start = _parse_time(start_date, "start_date") or end - timedelta(days=STATS_DEFAULT_DAYS)
    if end <= start:
        raise InvalidInput("end_date must be after start_date")
    if end - start > timedelta(days=STATS_MAX_DAYS):
        raise InvalidInput(
            f"the date range is longer than {STATS_MAX_DAYS} days; ask for at most {STATS_MAX_DAYS} days "
            "at a time (start_date and end_date)"
        )
    return start.astimezone(UTC), end.astimezone(UTC)


@shared_task(name="sessions.tasks.session_analyze", ignore_result=True)
def session_analyze(session_id: str) -> None:
    """Analyse one finished session (enqueued on commit when it ends); idempotent. The task lives
    beside the service it runs (sessions/tasks.py lists it for Celery)."""
    analysis_run(session_id=session_id)


def _input_masker(session: Session):
    """The connection's masking rules, as a function of the text: the analyzer applies it to the
    input it sends to an LLM (None: no connection any more, the text goes as it is)."""
    connection = session.connection
    if connection is None:
        return None

    def mask(text: str) -> str:
        masker, _ = rules.masker_for(connection)
        return masker.mask_text(text)[0] if masker.active else text

    return mask
