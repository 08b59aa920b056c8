"""Each org's review settings: self-approval, decisions over MCP/API, how long a review waits."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from governance.errors import InvalidInput
from governance.policy import ROLE_ADMIN, ROLE_AUDITOR, Actor, require_role
from reviews.models import ReviewSettings
from reviews.services.common import MAX_JIT_SECONDS
from sessions.audit import audit_record, change_detail


def review_settings(org_id) -> ReviewSettings:
    return ReviewSettings.objects.get_or_create(org_id=org_id)[0]


def review_settings_update(
    *,
    actor: Actor,
    allow_self_approval: bool | None = None,
    mcp_decisions_enabled: bool | None = None,
    review_ttl_seconds: int | None = None,
) -> ReviewSettings:
    require_role(actor, ROLE_ADMIN)
    changed = {}
    with transaction.atomic():
        current = review_settings(actor.org_id)
        current = ReviewSettings.objects.select_for_update().get(pk=current.pk)
        before = review_settings_to_dict(current)
        for field, value in (
            ("allow_self_approval", allow_self_approval),
            ("mcp_decisions_enabled", mcp_decisions_enabled),
            ("review_ttl_seconds", review_ttl_seconds),
        ):
            if value is not None:
                if field == "review_ttl_seconds" and not 60 <= value <= MAX_JIT_SECONDS:
                    raise InvalidInput("review_ttl_seconds must be between 60 and 2592000 (30 days)")
                setattr(current, field, value)
                changed[field] = value
        current.save()
        audit_record(
            actor=actor,
            action="review.settings",
            target=current,
            detail={**changed, **change_detail(before, review_settings_to_dict(current))},
        )
    return current


def review_settings_to_dict(current: ReviewSettings) -> dict:
    return {
        "allow_self_approval": current.allow_self_approval,
        "mcp_decisions_enabled": current.mcp_decisions_enabled,
        "review_ttl_seconds": current.review_ttl_seconds,
    }


def review_settings_get(*, actor: Actor) -> dict:
    """The org's review settings (admins and auditors)."""
    require_role(actor, ROLE_AUDITOR)
    return review_settings_to_dict(review_settings(actor.org_id))


def review_expiry(org_id, now) -> datetime:
    """When a review opened (or approved) at `now` expires, by the org's `review_ttl_seconds`."""
    return now + timedelta(seconds=review_settings(org_id).review_ttl_seconds)
