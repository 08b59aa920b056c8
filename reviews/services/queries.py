"""Who may see and decide a review, and reading and listing them (the policy scopes what is
visible: `governance.policy`)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q

from governance import crud
from governance.errors import InvalidInput, NotFound
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, has_role, in_groups, parse_id, scope
from reviews.models import Review, ReviewStatus, ReviewType
from reviews.services.common import NOT_FOUND, TOKEN_SURFACES, window_dict
from reviews.services.org_settings import review_settings


def _reviewer_ids(review: Review) -> set[int]:
    return {g["id"] for g in review.reviewer_groups}


def _force_ids(review: Review) -> set[int]:
    return {g["id"] for g in review.force_approval_groups}


def is_eligible_reviewer(actor: Actor, review: Review) -> bool:
    return in_groups(actor, _reviewer_ids(review) | _force_ids(review))


def reviews_visible(actor: Actor):
    """Reviews the actor may see (the policy decides: see `governance.policy._review_scope`)."""
    return scope(Review.objects.all(), actor, "view")


def parse_review_id(review_id):
    """A review id (or its session's id) as a UUID; a malformed one is NotFound("review not found")."""
    return parse_id(review_id, NOT_FOUND)


def review_get(*, actor: Actor, review_id) -> Review:
    """A review the actor may see, by review id or by its session's id; NotFound otherwise."""
    pk = parse_review_id(review_id)
    review = (
        reviews_visible(actor)
        .select_related("requester", "session")
        .filter(Q(pk=pk) | Q(session_id=pk))
        .first()
    )
    if review is None:
        raise NotFound(NOT_FOUND)
    return review


def review_reload(review: Review) -> Review:
    """A fresh copy of a review the caller already got through `review_get` (for waiting loops)."""
    return Review.objects.get(pk=review.pk)


def review_list(
    *,
    actor: Actor,
    status: str | None = None,
    type: str | None = None,
    connection: str | None = None,
    waiting_for_me: bool = False,
    mine: bool = False,
    limit: int = 20,
    offset: int = 0,
) -> tuple[list[Review], int]:
    if status and status.upper() not in ReviewStatus.values:
        raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(ReviewStatus.values)}")
    if type and type not in ReviewType.values:
        raise InvalidInput("type must be onetime or jit")
    qs = reviews_visible(actor).select_related("requester")
    if status:
        qs = qs.filter(status=status.upper())
    if type:
        qs = qs.filter(type=type)
    if connection:
        qs = qs.filter(connection_name=connection)
    if mine:
        qs = qs.filter(requester_id=actor.user.pk)
    if waiting_for_me:  # pending, for one of my groups, asked by someone else, not yet decided by me
        waiting = Review.objects.filter(
            org_id=actor.org_id, status=ReviewStatus.PENDING, eligible_groups__in=actor.group_ids
        ).exclude(requester_id=actor.user.pk)
        qs = qs.filter(pk__in=waiting.values("pk")).exclude(decisions__reviewer_id=actor.user.pk)
    return crud.page_of(qs.order_by("-created_at", "-pk"), limit, offset)


def can_see_input(actor: Actor, review: Review) -> bool:
    """The exact input is for the requester, the eligible reviewers, admins and auditors."""
    return (
        review.requester_id == actor.user.pk
        or is_eligible_reviewer(actor, review)
        or has_role(actor, ROLE_AUDITOR)
    )


def review_to_dict(review: Review, *, actor: Actor) -> dict:
    decisions = list(review.decisions.select_related("reviewer").all())
    data = {
        "id": str(review.pk),
        "session_id": str(review.session_id) if review.session_id else None,
        "type": review.type,
        "status": review.status,
        "connection_name": review.connection_name,
        "requester_email": review.requester.email,
        "reason": review.reason,
        "access_request_rule_name": review.rule_name or None,
        "reviewer_groups": [g["name"] for g in review.reviewer_groups],
        "force_approval_groups": [g["name"] for g in review.force_approval_groups],
        "quorum": (
            "all reviewer groups"
            if review.all_groups_must_approve
            else f"{review.min_approvals} distinct approver(s)"
        ),
        "min_approvals": None if review.all_groups_must_approve else review.min_approvals,
        "all_groups_must_approve": review.all_groups_must_approve,
        "decisions": [
            {
                "group": d.group_name,
                "decision": d.decision,
                "reviewer_email": d.reviewer.email,
                "reason": d.reason,
                "forced": d.forced,
                "decided_at": d.created_at.isoformat(),
            }
            for d in decisions
        ],
        "time_window": window_dict(review.window_start, review.window_end),
        "duration_seconds": review.duration_seconds,
        "access_until": review.access_until.isoformat() if review.access_until else None,
        "expires_at": review.expires_at.isoformat(),
        "created_at": review.created_at.isoformat(),
        "decided_at": review.decided_at.isoformat() if review.decided_at else None,
        "executed_at": review.executed_at.isoformat() if review.executed_at else None,
        "rejection_reason": review.rejection_reason or None,
        "review_url": review_url(review),
        "you_can_decide": review.status == ReviewStatus.PENDING and _may_decide(actor, review),
        "you_can_revoke": review.status == ReviewStatus.APPROVED
        and _surface_decides(actor)
        and may_revoke(actor, review),
    }
    if can_see_input(actor, review):
        data["input"] = review.input
        data["input_sha256"] = review.input_sha256 or None
        data["risk"] = review.risk or None
    return data


def review_url(review: Review) -> str:
    return f"{settings.PUBLIC_BASE_URL}/reviews/{review.pk}/"


def _surface_decides(actor: Actor) -> bool:
    """Whether the actor's surface may decide at all (review_decide refuses token surfaces unless the
    org turned MCP/API decisions on): flags must not promise what the next call refuses."""
    return actor.surface not in TOKEN_SURFACES or review_settings(actor.org_id).mcp_decisions_enabled


def _may_decide(actor: Actor, review: Review) -> bool:
    if not _surface_decides(actor) or not is_eligible_reviewer(actor, review):
        return False
    if review.requester_id == actor.user.pk and not review_settings(actor.org_id).allow_self_approval:
        return False
    return True


def may_revoke(actor: Actor, review: Review) -> bool:
    """An approval can be withdrawn by its reviewers, an admin, or the requester."""
    return (
        is_eligible_reviewer(actor, review)
        or has_role(actor, ROLE_ADMIN)
        or review.requester_id == actor.user.pk
    )
