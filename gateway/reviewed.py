"""Running an approved review: the use case that joins the review (`reviews.services`: who may run
it, its window, the APPROVED -> EXECUTED claim) and the exec engine (`gateway.pipeline`, which runs
exactly the stored input). Every surface calls `review_execute` here."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from gateway import pipeline
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.policy import Actor
from reviews import services as reviews
from reviews.models import Review, ReviewStatus, ReviewType
from sessions import idempotency
from sessions.audit import Outcome, audit_record
from sessions.models import Session


def review_execute(*, actor: Actor, review_id, idempotency_key: str | None = None) -> Session:
    """Run the approved input of a one-time review, exactly once; returns its session (running or final).

    Only the requester may run it. The review moves APPROVED -> EXECUTED in one conditional
    UPDATE, so of two concurrent calls (on any replicas) exactly one proceeds; in the same
    transaction the session becomes open with a dispatch lease, so if this process dies before
    running it, another one does. With an `idempotency_key`, a retry by the requester (after a
    lost answer) returns the same session instead of "already executed".
    """
    request = {"review_id": str(review_id)}
    key = idempotency.check_key(idempotency_key)
    replay = idempotency.find(user=actor.user, key=key, operation="reviews_execute", request=request)
    if replay is not None:
        return replay
    review = reviews.review_get(actor=actor, review_id=review_id)
    if review.type != ReviewType.ONETIME:
        raise InvalidInput("review is not a one-time review")
    if review.requester_id != actor.user.pk:
        raise PolicyDenied("only the requester can execute a reviewed request")
    now = timezone.now()
    outside = reviews.review_window_refusal(review, now)
    if outside:
        raise PolicyDenied(outside)
    refusal = None
    try:
        with transaction.atomic():
            claimed = Review.objects.filter(
                pk=review.pk, status=ReviewStatus.APPROVED, expires_at__gt=now
            ).update(status=ReviewStatus.EXECUTED, executed_at=now, updated_at=now)
            if not claimed:
                raise Conflict("review not approved or already executed")
            review.status = ReviewStatus.EXECUTED
            audit_record(
                actor=actor,
                action="review.execute",
                target=review,
                detail={"session_id": str(review.session_id)},
            )
            session = pipeline.exec_reviewed(actor=actor, review=review)
            idempotency.remember(
                user=actor.user, key=key, operation="reviews_execute", request=request, session=session
            )
            reviews.review_changed(review, "review.executed")
    except idempotency.IntegrityError:  # a concurrent retry with the same key won; answer with its session
        winner = idempotency.find(user=actor.user, key=key, operation="reviews_execute", request=request)
        if winner is None:
            raise
        return winner
    except (Conflict, NotFound, PolicyDenied) as exc:
        refusal = exc
    if refusal is not None:  # rolled back: the review is as it was; record the attempt on its own
        review.refresh_from_db()
        audit_record(
            actor=actor,
            action="review.execute",
            outcome=Outcome.DENIED,
            target=review,
            detail={"reason": refusal.message},
        )
        raise refusal
    return session
