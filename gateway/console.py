"""The web console: a person runs SQL or a command on a connection from the browser.

A thin adapter over the same services the MCP `exec`, `sessions_wait`, `exec_cancel` and
`reviews_execute` tools call (`pipeline.exec_start`, `wait_for_final`, `pipeline.exec_cancel`,
`gateway.reviewed.review_execute`), with the viewer as actor of surface `web`. So the console is
no new path to a target: the same access control, guardrails, review gate, masking and audit
apply, and the page renders the same envelope the agent gets (`pipeline.exec_envelope`):
blocked with the rule's message, pending approval with a link to the review, a result table with
masked cells marked, and Cancel while it runs.
"""

from __future__ import annotations

import re

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect

from gateway import pipeline
from gateway.reviewed import review_execute
from gateway.services import connection_list
from gateway.web import web_actor, web_view
from governance.errors import InvalidInput, NotFound, PolicyDenied, PortcullisError
from sessions.models import Session
from sessions.services import session_get
from sessions.views import _page
from sessions.wakeup import wait_for_final

WAIT_SECONDS = 20  # one long-poll; the page asks again until the session ends
MAX_SHOWN_ROWS = 500
_STATUS = {NotFound: 404, PolicyDenied: 403, InvalidInput: 400}
# How masked values look (see governance.masking): <LABEL> and <LABEL:pseudonym>, or stars.
_TOKEN = re.compile(r"<([A-Z][A-Z0-9_]*)(?::[0-9a-f]{10})?>")
_STARS = re.compile(r"\*{3,}")


def _runnable_connections(actor) -> list[str]:
    connections, _ = connection_list(actor=actor, limit=200)
    return [c.name for c in connections if c.exec_enabled]


def _marked(envelope: dict) -> list[list[dict]]:
    """The result rows as cells, each marked when it holds a masked value. Only the stored masked
    output is shown; the mark comes from the labels the masking counted for this result."""
    labels = set(envelope.get("masking") or {})
    out = []
    for row in (envelope.get("rows") or [])[:MAX_SHOWN_ROWS]:
        cells = []
        for value in row:
            text = "NULL" if value is None else str(value)
            found = {m.group(1) for m in _TOKEN.finditer(text)} & labels if labels else set()
            starred = bool(labels) and not found and bool(_STARS.search(text))
            cells.append(
                {
                    "text": text,
                    "null": value is None,
                    "masked": bool(found) or starred,
                    "labels": ", ".join(sorted(found)) if found else ("partial" if starred else ""),
                }
            )
        out.append(cells)
    return out


def _envelope_context(actor, session_id: str) -> dict:
    session = session_get(actor=actor, session_id=session_id, action="view_content")
    # The envelope reads the review's id only when it was loaded with the session.
    session = Session.objects.select_related("review").get(pk=session.pk)
    envelope = pipeline.exec_envelope(session)
    if envelope.get("review_id"):
        envelope["review_path"] = f"/reviews/{envelope['review_id']}/"
    return {
        "session": session,
        "envelope": envelope,
        "cells": _marked(envelope),
        "shown_rows": min(len(envelope.get("rows") or []), MAX_SHOWN_ROWS),
    }


@web_view
def console_view(request):
    """GET: the console (and the envelope of `?session=`); POST: run the input, then show it."""
    actor = web_actor(request)
    context = {
        "connections": _runnable_connections(actor),
        "selected": request.GET.get("connection", ""),
        "input": "",
        "error": "",
    }
    status = 200
    if request.method == "POST":
        name = (request.POST.get("connection") or "").strip()
        text = request.POST.get("input") or ""
        context.update(selected=name, input=text)
        try:
            if not name:
                raise InvalidInput("choose a connection")
            session = pipeline.exec_start(actor=actor, connection_name=name, input=text)
        except PortcullisError as exc:
            context["error"] = exc.message
            status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 400)
        else:
            return redirect(f"/console/?session={session.pk}")
    elif request.GET.get("session"):
        context.update(_envelope_context(actor, request.GET["session"]))
        context["selected"] = context["session"].connection_name
        context["input"] = context["session"].input
    return _page(request, "console/console.html", actor, "console", context, status=status)


async def console_wait_view(request, session_id):
    """Long-poll until the session ends (or waits for a review): {"final": bool, "status": ...}."""
    user = await request.auser()
    if not user.is_authenticated:
        raise Http404("session not found")

    @sync_to_async
    def visible():
        return session_get(actor=web_actor(request), session_id=session_id, action="view_content").pk

    try:
        pk = await visible()
    except NotFound:
        raise Http404("session not found") from None
    session, timed_out = await wait_for_final(pk, WAIT_SECONDS)
    done = session.is_final or session.status == "pending_review"
    response = JsonResponse({"final": done, "status": session.status, "timed_out": timed_out})
    response["Cache-Control"] = "no-store"
    return response


@web_view
def console_cancel_view(request, session_id):
    """POST: stop a running session (`exec_cancel`, as the MCP tool)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    try:
        pipeline.exec_cancel(actor=web_actor(request), session_id=session_id)
    except NotFound:
        raise
    except PortcullisError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, "Cancel requested: the gateway stops the run and records it as cancelled.")
    return redirect(f"/console/?session={session_id}")


@web_view
def review_run_view(request, review_id):
    """POST "Run it" on an approved review: `review_execute`, exactly the approved input, once."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])

    try:
        session = review_execute(actor=web_actor(request), review_id=review_id)
    except NotFound:
        raise
    except PortcullisError as exc:
        messages.error(request, exc.message)
        return redirect(f"/reviews/{review_id}/")
    return redirect(f"/console/?session={session.pk}")
