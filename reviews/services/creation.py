"""Opening reviews: the one-time review of a held-back input (`review_open`, inside the caller's
transaction), the identical earlier request a retry joins, and a JIT access request."""

from __future__ import annotations

import hashlib

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway.models import Connection
from governance.access import authorize
from governance.errors import Conflict, InvalidInput
from governance.policy import Actor, in_groups
from reviews.models import AccessRequestRule, AccessType, Review, ReviewStatus, ReviewType
from reviews.services.common import DEFAULT_JIT_SECONDS, MAX_JIT_SECONDS, after_commit
from reviews.services.org_settings import review_expiry
from reviews.services.rules import access_rules_for
from sessions.audit import audit_record
from sessions.models import Session, SessionStatus


def _applies_to(actor: Actor, rule: AccessRequestRule) -> bool:
    required = {g.pk for g in rule.approval_required_groups.all()}
    if required:
        return in_groups(actor, required)
    return not in_groups(actor, (g.pk for g in rule.skip_review_groups.all()))


def _group_snapshot(groups) -> list[dict]:
    return [{"id": g.pk, "name": g.name} for g in sorted(groups, key=lambda g: g.name)]


def review_open(
    *,
    actor: Actor,
    session: Session,
    connection: Connection,
    rule: AccessRequestRule | None = None,
    reviewer_groups=None,
    min_approvals: int = 1,
    all_groups_must_approve: bool = False,
    force_approval_groups=(),
    risk: dict | None = None,
    input: str | None = None,
) -> Review:
    """Open a one-time review for `session`, which the caller has just recorded as pending_review
    (inside the caller's transaction). Reviewers and quorum come from `rule`, or are given directly
    (per-tool approval of upstream MCP tools). `input` is the exact input to approve when the
    session stores it masked (tool calls); it must hash to the session's `input_sha256`."""
    now = timezone.now()
    input = session.input if input is None else input
    if hashlib.sha256(input.encode()).hexdigest() != session.input_sha256:
        raise InvalidInput("the input to review is not the session's input")
    if rule is not None:
        reviewer_groups = list(rule.reviewer_groups.all())
        force_approval_groups = list(rule.force_approval_groups.all())
        min_approvals, all_groups_must_approve = rule.min_approvals, rule.all_groups_must_approve
    if not reviewer_groups:
        raise InvalidInput("a review needs at least one reviewer group")
    review = Review.objects.create(
        org_id=actor.org_id,
        type=ReviewType.ONETIME,
        session=session,
        requester=actor.user,
        connection=connection,
        connection_name=connection.name,
        input=input,
        input_sha256=session.input_sha256,
        rule=rule,
        rule_name=rule.name if rule else "",
        reviewer_groups=_group_snapshot(reviewer_groups),
        force_approval_groups=_group_snapshot(force_approval_groups),
        min_approvals=min_approvals,
        all_groups_must_approve=all_groups_must_approve,
        window_start=rule.window_start if rule else None,
        window_end=rule.window_end if rule else None,
        risk=risk or {},
        expires_at=review_expiry(actor.org_id, now),
        created_at=now,
    )
    review.eligible_groups.set([*reviewer_groups, *force_approval_groups])
    audit_record(
        actor=actor,
        action="review.create",
        target=review,
        detail={"session_id": str(session.pk), "rule": review.rule_name, "input_sha256": review.input_sha256},
    )
    after_commit(review, "review.created")
    return review


def review_find_identical(*, actor: Actor, connection: Connection, input_sha256: str) -> Review | None:
    """The newest one-time review of `actor`'s own identical request (same connection, same exact
    input) that may still lead to a run: pending, approved and not expired, or executed with its
    session not yet finished. What a retry of an upstream tool call joins (`pipeline`)."""
    now = timezone.now()
    return (
        Review.objects.filter(
            org_id=actor.org_id,
            requester_id=actor.user.pk,
            connection=connection,
            type=ReviewType.ONETIME,
            input_sha256=input_sha256,
        )
        .filter(
            Q(status__in=(ReviewStatus.PENDING, ReviewStatus.APPROVED), expires_at__gt=now)
            | Q(status=ReviewStatus.EXECUTED, session__status__in=(SessionStatus.OPEN, SessionStatus.RUNNING))
        )
        .select_related("session__user")
        .order_by("-created_at")
        .first()
    )


def access_request(
    *, actor: Actor, connection_name: str, duration_seconds: int | None, reason: str
) -> Review:
    """Ask for JIT access to a connection: a review that, once approved, lets `exec` skip
    per-command review on it until the grant expires or is revoked."""
    reason = (reason or "").strip()
    if not reason:
        raise InvalidInput("reason is required: say why you need access")
    if len(reason) > 1000:
        raise InvalidInput("reason is longer than 1000 characters")
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    rules = [
        r
        for r in access_rules_for(connection, (AccessType.JIT, AccessType.JIT_COMMAND))
        if _applies_to(actor, r)
    ]
    if not rules:
        raise InvalidInput(
            f'no access request rule asks for JIT access to "{connection.name}" for you: '
            "exec on it needs no JIT grant"
        )
    rule = rules[0]
    limit = rule.max_jit_duration_seconds or MAX_JIT_SECONDS
    duration = duration_seconds or min(DEFAULT_JIT_SECONDS, limit)
    if not 60 <= duration <= limit:
        raise InvalidInput(f"duration_seconds must be between 60 and {limit} for this connection")
    now = timezone.now()
    with transaction.atomic():
        existing = Review.objects.filter(
            requester=actor.user,
            connection=connection,
            type=ReviewType.JIT,
            status=ReviewStatus.PENDING,
        ).first()
        if existing is not None:
            raise Conflict(f"you already have a pending access request for this connection: {existing.pk}")
        review = Review.objects.create(
            org_id=actor.org_id,
            type=ReviewType.JIT,
            requester=actor.user,
            connection=connection,
            connection_name=connection.name,
            reason=reason,
            rule=rule,
            rule_name=rule.name,
            reviewer_groups=_group_snapshot(rule.reviewer_groups.all()),
            force_approval_groups=_group_snapshot(rule.force_approval_groups.all()),
            min_approvals=rule.min_approvals,
            all_groups_must_approve=rule.all_groups_must_approve,
            duration_seconds=duration,
            expires_at=review_expiry(actor.org_id, now),
            created_at=now,
        )
        review.eligible_groups.set([*rule.reviewer_groups.all(), *rule.force_approval_groups.all()])
        audit_record(
            actor=actor,
            action="review.create",
            target=review,
            detail={"type": "jit", "duration_seconds": duration, "rule": rule.name},
        )
        after_commit(review, "review.created")
    return review
