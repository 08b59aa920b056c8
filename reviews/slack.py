"""Approve or reject reviews from Slack: the buttons on the review message, and the endpoint that
Slack calls when someone clicks them (a Slack app's "Interactivity" request URL).

Flow (Slack's own protocol, nothing Portcullis-specific on the wire):

1. `message_blocks` adds Approve and Reject buttons to the "review requested" message that
   `reviews.notify` posts through the app's incoming webhook (when interactivity is configured).
2. A click makes Slack POST `payload=<block_actions JSON>` to `/slack/interactions`, signed with
   the app's signing secret: `X-Slack-Signature: v0=HMAC-SHA256(secret, "v0:<ts>:<raw body>")`
   and `X-Slack-Request-Timestamp`. `verify_signature` checks both (constant-time compare, at most
   five minutes old, so a captured request cannot be replayed later); anything else is a 401 and
   nothing is read from the body.
3. The clicking Slack user becomes a Portcullis user through their Slack profile e-mail
   (`users.info`, bot token with `users:read.email`), in the configured workspace only. No match,
   or an inactive user, and nothing is decided.
4. The decision is `reviews.services.review_decide` with that user as actor (surface `slack`), the
   same call the review page makes: eligibility, separation of duties, quorum and the audit event
   are the service's. Reject first opens a modal (`views.open`) for the reason, which the service
   requires; its submission is the second signed request.
5. The answer goes back through the click's `response_url`: the message is replaced with the
   outcome, or (refusals: not eligible, already decided, not linked) an ephemeral note to the
   clicker only. Slack wants the HTTP answer within 3 s, so those calls run after it, on a small
   thread pool.

Hand-written because the protocol is three small pieces (an HMAC, a form field of JSON, two Web
API calls); the official `slack_sdk` would add a dependency for `SignatureVerifier` and
`WebClient.users_info`, which are what the functions below do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import httpx2
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from governance.errors import PortcullisError
from governance.models import User
from governance.policy import Actor
from reviews.notify import APPROVE, REJECT, interactive, message_blocks  # noqa: F401  (message_blocks: the buttons)
from reviews.services import review_decide, review_get

logger = logging.getLogger("portcullis.reviews.slack")

MAX_AGE_SECONDS = 5 * 60  # Slack's own advice for replay protection
MAX_BODY_BYTES = 64 * 1024
REJECT_MODAL = "review_reject_reason"
_pool = ThreadPoolExecutor(2, thread_name_prefix="slack-reply")


# --- request verification -----------------------------------------------------------------------


def signature(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verify_signature(headers, body: bytes, *, now: float | None = None) -> bool:
    """Slack's v0 request signature, and a timestamp at most five minutes from now."""
    secret = settings.SLACK_SIGNING_SECRET
    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    given = headers.get("X-Slack-Signature", "")
    if not secret or not timestamp.isdigit() or not given.startswith("v0="):
        return False
    if abs((now or time.time()) - int(timestamp)) > MAX_AGE_SECONDS:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), given)


# --- Slack Web API --------------------------------------------------------------------------------


def _api(method: str, data: dict, *, form: bool = False) -> dict:
    """A Web API call with the bot token. Read methods (users.info) take form fields; write
    methods (views.open) take JSON, as Slack documents."""
    body = {"data": data} if form else {"json": data}
    response = httpx2.post(
        f"{settings.SLACK_API_URL.rstrip('/')}/{method}",
        headers={"Authorization": f"Bearer {settings.SLACK_BOT_TOKEN}"},
        timeout=5.0,
        **body,
    )
    response.raise_for_status()
    return response.json()


def slack_user(slack_user_id: str, team_id: str) -> User | None:
    """The active Portcullis user whose e-mail is this Slack member's profile e-mail, or None."""
    try:
        answer = _api("users.info", {"user": slack_user_id}, form=True)
    except (httpx2.HTTPError, ValueError) as exc:
        logger.warning("Slack users.info failed for %s: %r", slack_user_id, exc)
        return None
    member = answer.get("user") or {}
    if not answer.get("ok") or member.get("deleted") or member.get("is_bot"):
        return None
    if member.get("team_id") and member.get("team_id") != team_id:
        return None
    email = ((member.get("profile") or {}).get("email") or "").strip()
    if not email:
        return None
    return User.objects.filter(email__iexact=email, is_active=True).select_related("org").first()


def _reply(response_url: str, message: dict) -> None:
    """Post to a click's response_url (after the HTTP answer; failures are logged, not raised)."""

    def send():
        try:
            httpx2.post(response_url, json=message, timeout=5.0).raise_for_status()
        except httpx2.HTTPError as exc:
            logger.warning("Slack response_url post failed: %r", exc)

    if not response_url.startswith(("https://hooks.slack.com/", settings.SLACK_RESPONSE_URL_PREFIX or "\0")):
        logger.warning("ignoring a response_url outside Slack: %s", response_url[:80])
        return
    _pool.submit(send)


def _ephemeral(text: str) -> dict:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def _outcome_message(review, actor_email: str) -> dict:
    verb = {"APPROVED": "Approved", "REJECTED": "Rejected"}.get(review.status, "Decided")
    url = f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"
    if review.status == "PENDING":  # an approval that needs more approvals
        text = f"{actor_email} approved; more approvals are needed. {url}"
    else:
        text = (
            f"{verb} by {actor_email}: {review.connection_name}, requested by {review.requester.email}. {url}"
        )
    return {
        "replace_original": review.status != "PENDING",
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


# --- the endpoint -----------------------------------------------------------------------------------


def _actor_for(payload: dict) -> tuple[Actor | None, str]:
    team = (payload.get("team") or {}).get("id") or (payload.get("user") or {}).get("team_id") or ""
    slack_id = (payload.get("user") or {}).get("id") or ""
    if settings.SLACK_TEAM_ID and team != settings.SLACK_TEAM_ID:
        return None, "This Slack workspace is not connected to Portcullis."
    user = slack_user(slack_id, team) if slack_id else None
    if user is None:
        return None, (
            "Your Slack account is not linked to a Portcullis user (no active user has your Slack e-mail), "
            "so you cannot decide reviews from Slack."
        )
    actor = Actor.for_user(user, surface="slack", client=f"slack; team {team}; user {slack_id}")
    return actor, ""


def _decide(actor: Actor, review_id: str, status: str, reason: str = ""):

    return review_decide(actor=actor, review_id=review_id, status=status, reason=reason)


def _reject_modal(review_id: str, response_url: str) -> dict:
    return {
        "type": "modal",
        "callback_id": REJECT_MODAL,
        "private_metadata": json.dumps({"review_id": review_id, "response_url": response_url}),
        "title": {"type": "plain_text", "text": "Reject the request"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Why? The requester sees this."},
                "element": {
                    "type": "plain_text_input",
                    "action_id": "reason",
                    "multiline": True,
                    "max_length": 1000,
                },
            }
        ],
    }


def _block_actions(payload: dict) -> HttpResponse:
    action = (payload.get("actions") or [{}])[0]
    action_id, review_id = action.get("action_id"), str(action.get("value") or "")
    response_url = payload.get("response_url") or ""
    if action_id not in (APPROVE, REJECT) or not review_id:
        return HttpResponse(status=200)  # another app's button; nothing to do
    actor, problem = _actor_for(payload)
    if actor is None:
        _reply(response_url, _ephemeral(problem))
        return HttpResponse(status=200)
    if action_id == REJECT:
        try:  # only someone who may see the review gets the form (the service decides again)
            review_get(actor=actor, review_id=review_id)
            _api(
                "views.open",
                {"trigger_id": payload.get("trigger_id"), "view": _reject_modal(review_id, response_url)},
            )
        except PortcullisError as exc:
            _reply(response_url, _ephemeral(f"You cannot decide this review: {exc.message}"))
        except (httpx2.HTTPError, ValueError) as exc:
            logger.warning("Slack views.open failed: %r", exc)
            _reply(response_url, _ephemeral("Could not open the reject form; reject on the review page."))
        return HttpResponse(status=200)
    try:
        review = _decide(actor, review_id, "APPROVED")
    except PortcullisError as exc:
        _reply(response_url, _ephemeral(f"You cannot decide this review: {exc.message}"))
    else:
        _reply(response_url, _outcome_message(review, actor.user.email))
    return HttpResponse(status=200)


def _view_submission(payload: dict) -> HttpResponse:
    view = payload.get("view") or {}
    if view.get("callback_id") != REJECT_MODAL:
        return HttpResponse(status=200)
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        meta = {}
    review_id, response_url = str(meta.get("review_id") or ""), meta.get("response_url") or ""
    values = (view.get("state") or {}).get("values") or {}
    reason = ((values.get("reason") or {}).get("reason") or {}).get("value") or ""
    actor, problem = _actor_for(payload)
    if actor is None:
        return JsonResponse({"response_action": "errors", "errors": {"reason": problem[:150]}})
    try:
        review = _decide(actor, review_id, "REJECTED", reason)
    except PortcullisError as exc:  # shown under the field; the modal stays open
        return JsonResponse({"response_action": "errors", "errors": {"reason": exc.message[:150]}})
    if response_url:
        _reply(response_url, _outcome_message(review, actor.user.email))
    return HttpResponse(status=200)  # closes the modal


@csrf_exempt  # Slack cannot send a CSRF token; the request signature authenticates it instead
def slack_interactions_view(request):
    """Slack's interactivity request URL: verify, then act on block_actions / view_submission."""
    if request.method != "POST":
        return HttpResponse("POST only", status=405, content_type="text/plain")
    if not interactive():
        return HttpResponse("Slack interactivity is not configured", status=404, content_type="text/plain")
    body = request.body
    if len(body) > MAX_BODY_BYTES or not verify_signature(request.headers, body):
        logger.warning("refused a Slack request with a missing, stale or wrong signature")
        return HttpResponse("invalid signature", status=401, content_type="text/plain")
    try:
        payload = json.loads(parse_qs(body.decode())["payload"][0])
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        return HttpResponse("expected payload=<JSON>", status=400, content_type="text/plain")
    if not isinstance(payload, dict):
        return HttpResponse("expected payload=<JSON object>", status=400, content_type="text/plain")
    kind = payload.get("type")
    if kind == "block_actions":
        return _block_actions(payload)
    if kind == "view_submission":
        return _view_submission(payload)
    return HttpResponse(status=200)
