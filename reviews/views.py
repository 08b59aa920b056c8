"""The reviewers' web pages: the inbox, one review (approve / reject / revoke), and a server-sent
event stream that tells an open review page when someone else decided.

Thin adapters over `reviews.services`: who may see or decide what is decided there, never here.
"""

from __future__ import annotations

import asyncio
import json

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import redirect

from gateway.web import web_actor, web_view
from governance.errors import InvalidInput, NotFound, PortcullisError
from governance.rules import bound_rules
from reviews import services
from reviews.models import Review, ReviewStatus, ReviewType
from sessions.views import HIGHLIGHT_CSS, _page, _query, highlight_input
from sessions.wakeup import wait_for_review

PAGE_SIZE = 25
TABS = ("inbox", "mine", "all")


@web_view
def review_list_view(request):
    """The inbox (pending reviews I may decide, with counts), my requests, and the history."""
    actor = web_actor(request)
    tab = request.GET.get("tab") or "inbox"
    if tab not in TABS:
        raise InvalidInput(f"unknown tab {tab!r}")
    status = request.GET.get("status") or None
    type_ = request.GET.get("type") or None
    connection = request.GET.get("connection") or None
    page = request.GET.get("page", "1")
    if not page.isdigit() or int(page) < 1:
        raise InvalidInput("page must be a positive whole number")
    offset = (int(page) - 1) * PAGE_SIZE
    filters = {"status": status, "type": type_, "connection": connection}
    if tab == "inbox":
        filters["status"] = None  # the inbox is what is pending for me
    reviews, total = services.review_list(
        actor=actor,
        waiting_for_me=tab == "inbox",
        mine=tab == "mine",
        limit=PAGE_SIZE,
        offset=offset,
        **filters,
    )
    counts = {
        "inbox": services.review_list(actor=actor, waiting_for_me=True, limit=1)[1],
        "mine": services.review_list(actor=actor, mine=True, status="PENDING", limit=1)[1],
    }
    # The statement, for those the service lets see it (requester, eligible reviewers, auditors).
    previews = {
        str(r.pk): " ".join(r.input.split())[:300]
        for r in reviews
        if r.input and services.can_see_input(actor, r)
    }
    context = {
        "tab": tab,
        "reviews": reviews,
        "previews": previews,
        "total": total,
        "counts": counts,
        "filters": filters,
        "statuses": ReviewStatus.values,
        "types": ReviewType.values,
        "page": int(page),
        "has_next": offset + len(reviews) < total,
        "query": _query({"tab": tab, **filters}),
    }
    return _page(request, "reviews/list.html", actor, "reviews", context)


@web_view
def review_detail_view(request, review_id):
    """Who asks, on which connection, the exact statement (highlighted), the rules that apply, the
    risk analysis, the decisions so far, and the buttons the viewer may use."""
    actor = web_actor(request)
    review = services.review_get(actor=actor, review_id=review_id)
    data = services.review_to_dict(review, actor=actor)
    rules = {}
    if review.connection is not None and data.get("input") is not None:
        bound = bound_rules(review.connection)
        rules = {"guardrails": [r.name for r in bound.guardrails], "masking": bound.masking_rules}
    context = {
        "review": review,
        "data": data,
        "input_html": highlight_input(data["input"], review.connection.kind if review.connection else "")
        if data.get("input")
        else "",
        "highlight_css": HIGHLIGHT_CSS,
        "rules": rules,
        "events_url": f"/reviews/{review.pk}/events",
    }
    return _page(request, "reviews/detail.html", actor, "reviews", context)


@web_view
def review_decide_view(request, review_id):
    """POST approve / reject / revoke; then back to the review with a message."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    actor = web_actor(request)
    decision = (request.POST.get("decision") or "").upper()
    reason = request.POST.get("reason", "")
    force = request.POST.get("force") == "1"
    try:
        review = services.review_decide(
            actor=actor, review_id=review_id, status=decision, reason=reason, force=force
        )
    except NotFound:
        raise
    except PortcullisError as exc:
        messages.error(request, exc.message)
        return redirect(f"/reviews/{review_id}/")
    verb = {"APPROVED": "approved", "REJECTED": "rejected", "REVOKED": "revoked"}.get(decision, decision)
    note = f"You {verb} this request."
    if decision == "APPROVED" and review.status == ReviewStatus.PENDING:
        note += " It needs more approvals before it can run."
    messages.success(request, note)
    return redirect(f"/reviews/{review.pk}/")


# --- live updates -----------------------------------------------------------------------------------

STREAM_SECONDS = 25  # one response per 25 s at most; EventSource reconnects by itself


async def review_events_view(request, review_id):
    """Server-sent events for an open review page: `changed` when the review's status differs
    from the one the page shows, else a comment every few seconds so proxies keep it open."""
    user = await request.auser()
    if not user.is_authenticated:
        raise Http404("review not found")
    known = request.GET.get("status", "")

    @sync_to_async
    def load_visible():
        actor = web_actor(request)
        actor_review = services.review_get(actor=actor, review_id=review_id)
        return actor_review.pk

    try:
        pk = await load_visible()
    except NotFound:
        raise Http404("review not found") from None

    @sync_to_async
    def load():
        return Review.objects.get(pk=pk)

    async def stream():
        yield "retry: 2000\n\n"
        review = await load()
        if review.status != known:
            yield _event("changed", review)
            return
        deadline = asyncio.get_running_loop().time() + STREAM_SECONDS
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            review, timed_out = await wait_for_review(load, pk, min(remaining, 10.0), status=known)
            if review.status != known:
                yield _event("changed", review)
                return
            yield ": keep-alive\n\n"

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-store"
    response["X-Accel-Buffering"] = "no"
    return response


def _event(name: str, review: Review) -> str:
    payload = json.dumps({"status": review.status, "url": f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"})
    return f"event: {name}\ndata: {payload}\n\n"
