"""The transitions of a review after it opened:

    PENDING ──(quorum met)──> APPROVED ──(reviews_execute, once)──> EXECUTED      one-time
       │                         │
       ├──(any reviewer)──> REJECTED            APPROVED ──(revoke)──> REVOKED    JIT
       └──(deadline)──> EXPIRED   <──(deadline)──┘

Each transition locks the review row, refuses a wrong state, writes the audit log in the same
transaction and, on commit, wakes `reviews_wait` in every process and queues the outbound
notifications. A review that will never run ends its pending session through the lifecycle.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.policy import Actor
from reviews.models import Review, ReviewDecision, ReviewStatus, ReviewType
from reviews.services.common import DEFAULT_JIT_SECONDS, NOT_FOUND, TOKEN_SURFACES, after_commit, window_dict
from reviews.services.org_settings import review_expiry, review_settings
from reviews.services.queries import may_revoke, parse_review_id, review_get, reviews_visible
from sessions import lifecycle
from sessions.audit import Outcome, audit_record
from sessions.models import SessionStatus


def _tally(review: Review) -> str:
    approvals = [d for d in review.decisions.all() if d.decision == ReviewDecision.Decision.APPROVED]
    if any(d.forced for d in approvals):
        return ReviewStatus.APPROVED
    if review.all_groups_must_approve:
        needed = {g["name"] for g in review.reviewer_groups}
        return ReviewStatus.APPROVED if needed <= {d.group_name for d in approvals} else ReviewStatus.PENDING
    approvers = {d.reviewer_id for d in approvals}
    return ReviewStatus.APPROVED if len(approvers) >= review.min_approvals else ReviewStatus.PENDING


def _locked(actor: Actor, review_id) -> Review:
    pk = parse_review_id(review_id)
    visible = reviews_visible(actor).filter(Q(pk=pk) | Q(session_id=pk)).values_list("pk", flat=True).first()
    if visible is None:
        raise NotFound(NOT_FOUND)
    return Review.objects.select_for_update(of=("self",)).select_related("requester").get(pk=visible)


def review_decide(*, actor: Actor, review_id, status: str, reason: str = "", force: bool = False) -> Review:
    """APPROVED or REJECTED for a pending review, REVOKED for an approved one."""
    status = (status or "").upper()
    if status not in (ReviewStatus.APPROVED, ReviewStatus.REJECTED, ReviewStatus.REVOKED):
        raise InvalidInput("status must be APPROVED, REJECTED or REVOKED")
    reason = (reason or "").strip()
    if len(reason) > 1000:
        raise InvalidInput("reason is longer than 1000 characters")
    org_settings = review_settings(actor.org_id)
    if actor.surface in TOKEN_SURFACES and not org_settings.mcp_decisions_enabled:
        raise PolicyDenied(
            f"review decisions over {'MCP' if actor.surface == 'mcp' else 'the API'} are turned off for this "
            "organization: decide in the web app (an admin can turn them on)"
        )
    if status == ReviewStatus.REVOKED:
        with transaction.atomic():
            return _revoke(actor, _locked(actor, review_id), reason)
    # Who may decide depends only on the review's snapshot of groups: check, and record a refusal,
    # before taking the lock.
    review = review_get(actor=actor, review_id=review_id)
    groups = [g for g in review.reviewer_groups if g["id"] in actor.group_ids]
    forced_groups = [g for g in review.force_approval_groups if g["id"] in actor.group_ids]
    refusal = None
    if force and not forced_groups:
        refusal = "not eligible for a forced review: you are in none of its force-approval groups"
    elif not groups and not forced_groups:
        refusal = "not eligible for review"
    elif review.requester_id == actor.user.pk and not org_settings.allow_self_approval:
        refusal = "unable to self approve review"
    if refusal:
        audit_record(
            actor=actor,
            action="review.approve" if status == ReviewStatus.APPROVED else "review.reject",
            outcome=Outcome.DENIED,
            target=review,
            detail={"reason": refusal},
        )
        raise PolicyDenied(refusal)
    if status == ReviewStatus.REJECTED and not reason:
        raise InvalidInput("a reason is required to reject")
    with transaction.atomic():
        review = _locked(actor, review.pk)
        if review.status != ReviewStatus.PENDING:
            raise Conflict(f"review is in wrong state: it is {review.status}")
        decided = set(review.decisions.filter(reviewer_id=actor.user.pk).values_list("group_name", flat=True))
        targets = [(g, True) for g in forced_groups[:1]] if force else [(g, False) for g in groups]
        if not force and not targets:  # only in force groups: an ordinary decision counts for those
            targets = [(g, False) for g in forced_groups]
        targets = [(g, forced) for g, forced in targets if g["name"] not in decided]
        if not targets:
            raise Conflict("you have already decided this review")
        now = timezone.now()
        ReviewDecision.objects.bulk_create(
            ReviewDecision(
                review=review,
                reviewer=actor.user,
                group_name=g["name"],
                decision=status,
                reason=reason,
                forced=forced,
                surface=actor.surface,
                created_at=now,
            )
            for g, forced in targets
        )
        new_status = ReviewStatus.REJECTED if status == ReviewStatus.REJECTED else _tally(review)
        audit_record(
            actor=actor,
            action="review.approve" if status == ReviewStatus.APPROVED else "review.reject",
            target=review,
            detail={
                "groups": [g["name"] for g, _ in targets],
                "forced": force,
                "review_status": new_status,
                **({"reason": reason} if reason else {}),
            },
        )
        if new_status != review.status:
            review.status = new_status
            review.decided_at = now
            fields = ["status", "decided_at", "updated_at"]
            if new_status == ReviewStatus.APPROVED:
                if review.type == ReviewType.JIT:
                    review.access_until = now + timedelta(
                        seconds=review.duration_seconds or DEFAULT_JIT_SECONDS
                    )
                    fields.append("access_until")
                else:  # the approved input may be run until this deadline
                    review.expires_at = review_expiry(review.org_id, now)
                    fields.append("expires_at")
            else:
                review.rejection_reason = reason
                fields.append("rejection_reason")
                review.status = new_status
                _end_session(review, SessionStatus.REJECTED, f"rejected by a reviewer: {reason}", actor=actor)
            review.save(update_fields=fields)
            after_commit(
                review, "review.approved" if new_status == ReviewStatus.APPROVED else "review.rejected"
            )
        else:
            after_commit(review, None)
    return review


def _revoke(actor: Actor, review: Review, reason: str) -> Review:
    if review.status != ReviewStatus.APPROVED:
        raise Conflict(f"review is in wrong state: it is {review.status}")
    if not may_revoke(actor, review):
        raise PolicyDenied("not eligible for review")
    now = timezone.now()
    review.status = ReviewStatus.REVOKED
    review.decided_at = now
    review.rejection_reason = reason
    if review.access_until and review.access_until > now:
        review.access_until = now
    review.save(update_fields=["status", "decided_at", "rejection_reason", "access_until", "updated_at"])
    ReviewDecision.objects.create(
        review=review,
        reviewer=actor.user,
        group_name=next((g["name"] for g in review.reviewer_groups if g["id"] in actor.group_ids), "admin"),
        decision=ReviewDecision.Decision.REVOKED,
        reason=reason,
        surface=actor.surface,
        created_at=now,
    )
    _end_session(review, SessionStatus.CANCELLED, "the approval was revoked before it ran", actor=actor)
    audit_record(
        actor=actor, action="review.revoke", target=review, detail={"reason": reason} if reason else {}
    )
    after_commit(review, "review.revoked")
    return review


def _end_session(review: Review, status: str, error: str, *, actor: Actor | None = None) -> None:
    """End the pending session of a review that will never run (rejected, revoked, expired), through
    the lifecycle: its audit event, its `session.*` events, the wake-up and the analysis."""
    if review.session_id is None:
        return

    lifecycle.transition(
        review.session_id,
        status,
        actor=actor,
        action="session.rejected" if status == SessionStatus.REJECTED else "session.cancelled",
        outcome=Outcome.BLOCKED if status == SessionStatus.REJECTED else Outcome.SUCCESS,
        detail={"review_id": str(review.pk), "review_status": review.status},
        fields={"error": error},
        expect=(SessionStatus.PENDING_REVIEW,),
    )


def _in_window(review: Review, now: datetime) -> bool:
    if review.window_start is None or review.window_end is None:
        return True
    current = now.astimezone(UTC).time()
    if review.window_start < review.window_end:
        return review.window_start <= current < review.window_end
    return current >= review.window_start or current < review.window_end  # spans midnight


def review_window_refusal(review: Review, now: datetime) -> str | None:
    """Why an approved review may not run at `now` (its time window), or None."""
    if review.status != ReviewStatus.APPROVED or _in_window(review, now):
        return None
    window = window_dict(review.window_start, review.window_end)
    return f"execution not allowed outside the time window {window['start_time']} to {window['end_time']} UTC"


def review_changed(review: Review, event: str | None) -> None:
    """After the caller's transaction commits: wake waiters, emit `event`, notify people."""
    after_commit(review, event)


def reviews_expire(*, now=None, limit: int = 500) -> int:
    """EXPIRED: pending reviews past their deadline, approved one-time reviews never run in time,
    and JIT grants past their end. Run by Celery beat (and the embedded sweeper)."""
    now = now or timezone.now()
    due = Review.objects.filter(
        Q(status=ReviewStatus.PENDING, expires_at__lte=now)
        | Q(status=ReviewStatus.APPROVED, type=ReviewType.ONETIME, expires_at__lte=now)
        | Q(status=ReviewStatus.APPROVED, type=ReviewType.JIT, access_until__lte=now)
    ).values_list("pk", flat=True)[:limit]
    count = 0
    for pk in list(due):
        with transaction.atomic():
            review = Review.objects.select_for_update(of=("self",)).get(pk=pk)
            if review.status not in (ReviewStatus.PENDING, ReviewStatus.APPROVED):
                continue
            previous = review.status
            review.status = ReviewStatus.EXPIRED
            review.save(update_fields=["status", "updated_at"])
            _end_session(review, SessionStatus.CANCELLED, "the review expired before it ran")
            audit_record(
                actor=None,
                org_id=review.org_id,
                surface="task",
                action="review.expire",
                target=review,
                detail={"was": previous},
            )
            after_commit(review, "review.expired")
            count += 1
    return count
