"""The security team's web pages: session browser, session page, replay, dashboard.

Thin adapters: parse the query string (`sessions.forms`), call the services in
`sessions.services` with the viewer as `actor`, render. Who sees which session, its content and
its guardrail findings is decided by those services (through `governance.policy`), never here.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime
from urllib.parse import urlencode

from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils.html import format_html
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_by_name

from gateway.kinds import KINDS
from gateway.services import connection_list
from gateway.web import role_label, web_actor, web_view
from governance.errors import InvalidInput, NotFound
from reviews.services import review_get, review_to_dict
from sessions import charts
from sessions.forms import FILTER_PARAMS, PAGE_SIZE, DashboardRangeForm, SessionFilterForm
from sessions.services import (
    analysis_get,
    analysis_risk_levels,
    session_content,
    session_get,
    session_list,
    session_stats,
    session_timeline,
    session_to_dict,
)

OUTPUT_PAGE_BYTES = 64 * 1024
REPLAY_MAX_BYTES = 1024 * 1024
MAX_TABLE_ROWS = 500
MAX_HIGHLIGHT_CHARS = 100_000
LEXERS = {kind.name: type(get_lexer_by_name(kind.lexer)) for kind in KINDS.values()}  # gateway/kinds.py
_FORMATTER = HtmlFormatter(style="monokai", cssclass="highlight", wrapcode=True)
HIGHLIGHT_CSS = _FORMATTER.get_style_defs(".highlight")


def highlight_input(text: str, kind: str) -> str:
    """The input as syntax-highlighted HTML (Pygments escapes it), by the connection's kind. Inputs
    over MAX_HIGHLIGHT_CHARS are shown plain: a regex lexer over a megabyte would stall the page."""
    if len(text) > MAX_HIGHLIGHT_CHARS:
        return format_html('<div class="highlight"><pre><code>{}</code></pre></div>', text)
    return highlight(text, LEXERS.get(kind, TextLexer)(), _FORMATTER)


def _page(request, template: str, actor, active: str, context: dict, status: int = 200):
    context.update(active=active, viewer_role=role_label(actor))
    return render(request, template, context, status=status)


def _query(params: dict) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _connection_names(actor) -> list[str]:
    connections, _ = connection_list(actor=actor, limit=100)
    return [c.name for c in connections]


@web_view
def session_list_view(request):
    """The session browser: filters, one page of sessions, links to the downloads."""
    actor = web_actor(request)
    form = SessionFilterForm(request.GET)
    context = {"form": form, "sessions": [], "total": 0, "connections": _connection_names(actor)}
    if not form.is_valid():
        return _page(request, "sessions/list.html", actor, "sessions", context, status=400)
    page = form.page_number
    sessions, total = session_list(
        actor=actor, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE, **form.service_filters()
    )
    filters = {name: request.GET.get(name, "") for name in FILTER_PARAMS}
    last_page = max(1, -(-total // PAGE_SIZE))
    context.update(
        sessions=sessions,
        total=total,
        page=page,
        last_page=last_page,
        first_shown=(page - 1) * PAGE_SIZE + 1 if sessions else 0,
        last_shown=(page - 1) * PAGE_SIZE + len(sessions),
        prev_query=_query({**filters, "page": page - 1}) if page > 1 else None,
        next_query=_query({**filters, "page": page + 1}) if page < last_page else None,
        # The downloads (sessions/export_urls.py) take the service's filter names, dates in RFC 3339.
        export_query=_query(form.service_filters()),
        is_filtered=form.is_filtered,
        risks=analysis_risk_levels(actor=actor, sessions=sessions),
    )
    return _page(request, "sessions/list.html", actor, "sessions", context)


TIMELINE_LABELS = {
    "recorded": "Recorded",
    "queued_for_review": "Queued for review",
    "review_approved": "Approved by a reviewer",
    "review_rejected": "Rejected by a reviewer",
    "review_revoked": "Revoked by a reviewer",
    "approved": "Approved",
    "rejected": "Rejected",
    "expired": "Review expired",
    "revoked": "Approval revoked",
    "run_requested": "Run requested",
    "started": "Started",
    "finished": "Done",
    "analysed": "Analysed",
}
TIMELINE_TONES = {"finished": "ok", "approved": "ok", "blocked": "bad", "failed": "bad", "rejected": "bad"}


def _timeline(session, content_visible: bool) -> list[dict]:
    """What happened to the session, in order (`session_timeline`: its own timestamps and its
    review's decisions), each with the time since the one before. The analysis' verdict is content:
    viewers who may not read it see only that it was analysed."""
    timeline, previous = [], None
    for event in session_timeline(session):
        when = datetime.fromisoformat(event["at"])
        name = event["event"]
        note = event["detail"] if content_visible or name != "analysed" else ""
        delta_ms = round((when - previous).total_seconds() * 1000) if previous else None
        timeline.append(
            {
                "label": TIMELINE_LABELS.get(name, name.replace("_", " ").capitalize()),
                "when": when,
                "note": note,
                "tone": TIMELINE_TONES.get(name, ""),
                "delta_ms": delta_ms,
            }
        )
        previous = when
    return timeline


def _review(actor, session) -> dict | None:
    """The session's review as the viewer may see it (None without one, or if they may not)."""

    try:
        review = review_get(actor=actor, review_id=session.pk)
    except NotFound:
        return None
    return {**review_to_dict(review, actor=actor), "template": "reviews/_session_review.html"}


def _offset(request) -> int:
    raw = request.GET.get("offset", "0") or "0"
    if not raw.isdigit():
        raise InvalidInput("offset must be a whole number of bytes")
    return int(raw)


@web_view
def session_detail_view(request, session_id):
    """One session: metadata for whoever may see it; input, output, analysis for those who may
    read its content (as `session_content` decides)."""
    actor = web_actor(request)
    session = session_get(actor=actor, session_id=session_id)
    meta = session_to_dict(session, actor=actor)
    content, analysis, content_hidden = None, None, False
    try:
        content = session_content(
            actor=actor, session_id=session.pk, offset=_offset(request), max_bytes=OUTPUT_PAGE_BYTES
        )
        _, analysis = analysis_get(actor=actor, session_id=session.pk)
    except NotFound:
        content_hidden = True  # the viewer may see the record but not what it ran or returned
    rows = (content or {}).get("rows") or []
    context = {
        "session": session,
        "meta": meta,
        "content": content,
        "content_hidden": content_hidden,
        "analysis": analysis,
        "input_html": highlight_input(content["input"], session.connection_kind) if content else "",
        "highlight_css": HIGHLIGHT_CSS,
        "rows": rows[:MAX_TABLE_ROWS],
        "rows_cut": max(0, len(rows) - MAX_TABLE_ROWS),
        "timeline": _timeline(session, content is not None),
        "replayable": session.connection_kind == "command" and content is not None,
        "review": _review(actor, session),
    }
    return _page(request, "sessions/detail.html", actor, "sessions", context)


@web_view
def session_replay_view(request, session_id):
    """A command session's output, revealed progressively by a small inline player."""
    actor = web_actor(request)
    session = session_get(actor=actor, session_id=session_id)
    if session.connection_kind != "command":
        messages.info(request, "Replay is for command sessions; this one ran on a database.")
        return redirect("session-detail", session_id=session.pk)
    content = session_content(actor=actor, session_id=session.pk, max_bytes=REPLAY_MAX_BYTES)
    context = {
        "session": session,
        "meta": session_to_dict(session, actor=actor),
        "content": content,
    }
    return _page(request, "sessions/replay.html", actor, "sessions", context)


@web_view
def dashboard_view(request):
    """Charts over a date range, from `session_stats` (same visibility as the session browser)."""
    actor = web_actor(request)
    form = DashboardRangeForm(request.GET)
    context = {"form": form, "connections": _connection_names(actor)}
    if not form.is_valid():
        return _page(request, "sessions/dashboard.html", actor, "dashboard", context, status=400)
    scope = form.service_range()
    by_day = session_stats(actor=actor, group_by=["day", "status"], **scope)["groups"]
    by_user = session_stats(actor=actor, group_by=["user", "status"], **scope)["groups"]
    by_risk = session_stats(actor=actor, group_by=["risk_level"], **scope)["groups"]
    by_conn = session_stats(actor=actor, group_by=["connection", "status"], **scope)["groups"]

    days = form.days()
    per_day: dict[date, dict[str, int]] = defaultdict(dict)
    for g in by_day:
        per_day[date.fromisoformat(g["day"])][g["status"]] = g["count"]
    statuses = defaultdict(int)
    for g in by_day:
        statuses[g["status"]] += g["count"]
    total = sum(statuses.values())

    users = _stacked(by_user, "user", limit=12)
    # "Blocked and reviewed": the per-user bars show only what needed attention.
    attention = [
        (name, {k: v for k, v in counts.items() if k in ("blocked", "pending_review")})
        for name, counts in users
    ]
    attention = sorted([row for row in attention if row[1]], key=lambda r: -sum(r[1].values()))[:12]
    connections = _stacked(by_conn, "connection", limit=10)
    risk_counts = {g["risk_level"]: g["count"] for g in by_risk}
    risk_parts = [
        ((level or "pending"), risk_counts.get(level, 0), charts.RISK_COLORS[level])
        for level in charts.RISK_ORDER
    ]
    high_risk = risk_counts.get("high", 0) + risk_counts.get("critical", 0)
    context.update(
        total=total,
        kpis=[
            ("Sessions", total, ""),
            ("Blocked", statuses.get("blocked", 0), "bad"),
            ("Failed", statuses.get("failed", 0), "hot"),
            ("High or critical risk", high_risk, "crit"),
        ],
        range_label=f"{days[0]:%b %d, %Y} – {days[-1]:%b %d, %Y}",
        per_day_chart=charts.stacked_columns(days, per_day),
        status_legend=charts.legend(
            [(s.replace("_", " "), charts.STATUS_COLORS[s]) for s in charts.STATUS_ORDER if statuses.get(s)]
        ),
        attention_chart=charts.stacked_bars(
            attention, order=["blocked", "pending_review"], label="Blocked and reviewed per user"
        ),
        attention_legend=charts.legend(
            [
                ("blocked", charts.STATUS_COLORS["blocked"]),
                ("pending review", charts.STATUS_COLORS["pending_review"]),
            ]
        ),
        users_chart=charts.stacked_bars(users, label="Sessions per user"),
        risk_chart=charts.donut(risk_parts),
        risk_rows=[
            (name, count, color, round(100 * count / total) if total else 0)
            for name, count, color in risk_parts
        ],
        connections_chart=charts.stacked_bars(connections, label="Top connections"),
        start_value=days[0].isoformat(),
        end_value=days[-1].isoformat(),
        sessions_query=_query({"start_date": days[0].isoformat(), "end_date": days[-1].isoformat()}),
    )
    return _page(request, "sessions/dashboard.html", actor, "dashboard", context)


def _stacked(groups: list[dict], key: str, *, limit: int) -> list[tuple[str, dict[str, int]]]:
    """[{key: k, status: s, count: n}] -> the `limit` biggest k as (k, {status: n})."""
    rows: dict[str, dict[str, int]] = defaultdict(dict)
    for g in groups:
        rows[g[key] or "—"][g["status"]] = g["count"]
    return sorted(rows.items(), key=lambda item: (-sum(item[1].values()), item[0]))[:limit]
