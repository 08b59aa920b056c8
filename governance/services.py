"""Identity services: organizations, users, groups, API tokens.

Headless setup (management commands) acts as the system, before any admin exists: those
functions take no actor and are only reachable from the CLI. Everything an admin or agent can
reach takes `actor=` and checks it through the policy module.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.errors import Conflict, InvalidInput, NotFound
from governance.models import RESERVED_GROUPS, ApiToken, Organization, User, UserGroup, token_digest


def _audit_system(org_id, action: str, target, detail: dict | None = None) -> None:
    """These services run from the CLI (headless setup) as the system; surfaces with an actor
    will pass one when they are built."""
    from sessions.audit import audit_record

    audit_record(actor=None, org_id=org_id, action=action, target=target, detail=detail)


def org_create(*, name: str) -> Organization:
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise InvalidInput("organization name must be 1-100 characters")
    with transaction.atomic():
        org = (
            Organization.objects.create(name=name)
            if not Organization.objects.filter(name=name).exists()
            else None
        )
        if org is None:
            raise Conflict(f'organization "{name}" already exists')
        for group in RESERVED_GROUPS:
            UserGroup.objects.create(org=org, name=group)
        _audit_system(org.pk, "org.create", org)
    return org


def org_get(*, name: str) -> Organization:
    org = Organization.objects.filter(name=name).first()
    if org is None:
        raise NotFound(f'organization "{name}" not found')
    return org


def user_create(
    *, org: Organization, email: str, name: str = "", groups: list[str] = (), password: str | None = None
) -> User:
    """Create a user in `org`, adding them to `groups` (created in the org if missing)."""
    email = (email or "").strip().lower()
    try:
        validate_email(email)
    except ValidationError:
        raise InvalidInput(f"{email!r} is not a valid email address") from None
    for group in groups:
        if not group or len(group) > 100:
            raise InvalidInput("group names must be 1-100 characters")
    try:
        with transaction.atomic():
            user = User.objects.create_user(email, password, org=org, name=name)
            for group in groups:
                user_group, _ = UserGroup.objects.get_or_create(org=org, name=group)
                user_group.members.add(user)
            _audit_system(org.pk, "user.create", user, {"groups": sorted(groups)})
    except IntegrityError:
        raise Conflict(f"a user with email {email} already exists") from None
    return user


def token_issue(
    *, user: User, name: str = "default", expires_days: int | None = None
) -> tuple[ApiToken, str]:
    """Issue an API token. Returns (token row, raw value); the raw value is never stored or shown again."""
    if expires_days is not None and not 1 <= expires_days <= 3650:
        raise InvalidInput("expires-days must be between 1 and 3650")
    if not name or len(name) > 100:
        raise InvalidInput("token name must be 1-100 characters")
    raw = ApiToken.PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user,
        name=name,
        prefix=raw[:12],
        digest=token_digest(raw),
        expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
    )
    _audit_system(
        user.org_id, "token.issue", token, {"user": user.email, "expires_at": str(token.expires_at)}
    )
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    _audit_system(token.user.org_id, "token.revoke", token)


def token_authenticate(raw: str) -> tuple[User, ApiToken] | None:
    """The active user behind a raw API token, or None. One indexed query; revocation is immediate.

    `last_used_at` is written at most once a minute, so a busy agent does not turn every call
    into a write.
    """
    if not raw or not raw.startswith(ApiToken.PREFIX) or len(raw) > 200:
        return None
    token = ApiToken.objects.select_related("user", "user__org").filter(digest=token_digest(raw)).first()
    now = timezone.now()
    if token is None or not token.is_usable(now) or not token.user.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token
