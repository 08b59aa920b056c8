"""Services for webhook endpoints and their deliveries: admins of an org configure them; every
change is audited in its transaction. The HMAC secret is write-only: it goes in, never out."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

from django.db import IntegrityError, transaction
from django.utils import timezone

from governance.errors import Conflict, InvalidInput
from governance.policy import ROLE_ADMIN, Actor, get_scoped, require_role, scope
from sessions import delivery, webhook_signing
from sessions.audit import REDACTED, audit_record, change_detail
from sessions.events import EVENT_TYPES
from sessions.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MIN_SECRET_CHARS = 16


def _clean(*, name=None, url=None, event_types=None, secret=None) -> dict:
    values = {}
    if name is not None:
        if not NAME_RE.match(name):
            raise InvalidInput(
                "name: use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit"
            )
        values["name"] = name
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("url must be an http:// or https:// URL with a host")
        if parts.username or parts.password:
            raise InvalidInput("url must not carry credentials; the HMAC signature authenticates the gateway")
        if len(url) > 2000:
            raise InvalidInput("url is longer than 2000 characters")
        values["url"] = url
    if event_types is not None:
        if not isinstance(event_types, list | tuple) or not all(isinstance(t, str) for t in event_types):
            raise InvalidInput("event_types must be a list of event type names")
        unknown = [t for t in event_types if t not in EVENT_TYPES]
        if unknown:
            raise InvalidInput(f"unknown event type {unknown[0]!r}; use any of: {', '.join(EVENT_TYPES)}")
        values["event_types"] = sorted(set(event_types))
    if secret is not None and len(secret) < MIN_SECRET_CHARS:
        raise InvalidInput(f"secret must be at least {MIN_SECRET_CHARS} characters")
    if secret is not None:
        try:
            webhook_signing.signing_key(secret)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return values


def _get(actor: Actor, endpoint_id, *, lock: bool = False) -> WebhookEndpoint:
    """An endpoint the actor may manage, by id or name, or NotFound for missing and forbidden alike."""
    qs = WebhookEndpoint.objects.select_for_update() if lock else WebhookEndpoint.objects.all()
    try:
        lookup = {"pk": uuid.UUID(str(endpoint_id))}
    except ValueError:
        lookup = {"name": str(endpoint_id)}
    return get_scoped(qs, actor, "manage", not_found="webhook endpoint not found", **lookup)


def _refuse_taken_name(actor: Actor, name: str | None, *, exclude=None) -> None:
    """Names are unique in an org regardless of case (a database constraint too)."""
    if name is None:
        return
    taken = (
        WebhookEndpoint.objects.filter(org_id=actor.org_id, name__iexact=name)
        .exclude(pk=exclude)
        .values_list("name", flat=True)
        .first()
    )
    if taken is not None:
        suffix = "" if taken == name else f' as "{taken}" (names are unique regardless of case)'
        raise Conflict(f'a webhook endpoint named "{name}" exists already{suffix}')


def webhook_endpoint_to_dict(endpoint: WebhookEndpoint) -> dict:
    """The public shape of an endpoint: whether a secret is set, never the secret."""
    return {
        "id": str(endpoint.pk),
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "allow_private_network": endpoint.allow_private_network,
        "has_secret": bool(endpoint.secret_encrypted),
        "created_at": endpoint.created_at.isoformat(),
        "updated_at": endpoint.updated_at.isoformat(),
    }


def webhook_endpoint_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list, int]:
    """The org's endpoints, by name (admins)."""
    require_role(actor, ROLE_ADMIN)
    if not 1 <= limit <= 100 or offset < 0:
        raise InvalidInput("limit must be between 1 and 100 and offset not negative")
    qs = scope(WebhookEndpoint.objects.all(), actor, "manage").order_by("name")
    return list(qs[offset : offset + limit]), qs.count()


def webhook_endpoint_get(*, actor: Actor, endpoint_id) -> WebhookEndpoint:
    require_role(actor, ROLE_ADMIN)
    return _get(actor, endpoint_id)


def webhook_endpoint_create(
    *,
    actor: Actor,
    name: str,
    url: str,
    secret: str,
    event_types: list[str] | None = None,
    enabled: bool = True,
    allow_private_network: bool = False,
) -> WebhookEndpoint:
    """Add an endpoint to the actor's org (admins). Raises PolicyDenied, InvalidInput, Conflict."""
    require_role(actor, ROLE_ADMIN)
    if not secret:
        raise InvalidInput("secret is required: receivers verify the signature with it")
    values = _clean(name=name, url=url, event_types=event_types or [], secret=secret)
    endpoint = WebhookEndpoint(
        org_id=actor.org_id, enabled=enabled, allow_private_network=allow_private_network, **values
    )
    endpoint.set_secret(secret)
    _refuse_taken_name(actor, values["name"])
    try:
        with transaction.atomic():
            endpoint.save()
            audit_record(actor=actor, action="webhook.create", target=endpoint, detail=_detail(endpoint))
    except IntegrityError:
        raise Conflict(f'a webhook endpoint named "{name}" exists already') from None
    return endpoint


def webhook_endpoint_update(
    *, actor: Actor, endpoint_id, secret: str | None = None, **changes
) -> WebhookEndpoint:
    """Change an endpoint (admins). `secret` None or empty keeps the current one. Changes may be
    name, url, event_types, enabled, allow_private_network."""
    require_role(actor, ROLE_ADMIN)
    allowed = {"name", "url", "event_types", "enabled", "allow_private_network"}
    if set(changes) - allowed:
        raise InvalidInput(f"unknown field {sorted(set(changes) - allowed)[0]!r}")
    values = _clean(
        name=changes.get("name"),
        url=changes.get("url"),
        event_types=changes.get("event_types"),
        secret=secret or None,
    )
    try:
        with transaction.atomic():
            endpoint = _get(actor, endpoint_id, lock=True)
            _refuse_taken_name(actor, values.get("name"), exclude=endpoint.pk)
            before = _detail(endpoint) | {"name": endpoint.name}
            for field in ("enabled", "allow_private_network"):
                if field in changes:
                    values[field] = bool(changes[field])
            for field, value in values.items():
                setattr(endpoint, field, value)
            if secret:
                endpoint.set_secret(secret)
            endpoint.save()
            diff = change_detail(before, _detail(endpoint) | {"name": endpoint.name})
            if secret:  # said, never shown: the secret is write-only
                diff["changed"].append("secret")
                diff["before"]["secret"] = diff["after"]["secret"] = REDACTED
            detail = {**_detail(endpoint), **diff}
            audit_record(actor=actor, action="webhook.update", target=endpoint, detail=detail)
    except IntegrityError:
        raise Conflict(f'a webhook endpoint named "{changes.get("name")}" exists already') from None
    return endpoint


def webhook_endpoint_delete(*, actor: Actor, endpoint_id) -> None:
    """Remove an endpoint and its delivery records (admins)."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        endpoint = _get(actor, endpoint_id, lock=True)
        audit_record(actor=actor, action="webhook.delete", target=endpoint, detail=_detail(endpoint))
        endpoint.delete()


def webhook_delivery_to_dict(delivery: WebhookDelivery) -> dict:
    """A delivery as admins see it: the event it carries and how sending it went (not the payload)."""
    return {
        "id": delivery.pk,
        "webhook_name": delivery.endpoint.name,
        "event_id": str(delivery.event_id),
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "response_code": delivery.response_code,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at.isoformat(),
        "last_attempt_at": delivery.last_attempt_at.isoformat() if delivery.last_attempt_at else None,
        "next_attempt_at": delivery.next_attempt_at.isoformat(),
        "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
    }


def webhook_delivery_list(
    *, actor: Actor, endpoint_id=None, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[WebhookDelivery], int]:
    """The org's deliveries, newest first, of one endpoint (id or name) and/or in one status (admins)."""
    require_role(actor, ROLE_ADMIN)
    if not 1 <= limit <= 100 or offset < 0:
        raise InvalidInput("limit must be between 1 and 100 and offset not negative")
    if status is not None and status not in DeliveryStatus.values:
        raise InvalidInput(f"status must be one of: {', '.join(DeliveryStatus.values)}")
    qs = scope(WebhookDelivery.objects.select_related("endpoint"), actor, "manage")
    if endpoint_id is not None:
        qs = qs.filter(endpoint=_get(actor, endpoint_id))
    if status is not None:
        qs = qs.filter(status=status)
    qs = qs.order_by("-id")
    return list(qs[offset : offset + limit]), qs.count()


def webhook_delivery_retry(*, actor: Actor, delivery_ids) -> int:
    """Send failed or dead deliveries of the actor's org again, with a fresh set of attempts
    (admins). Deliveries of other orgs are ignored as if missing. Returns how many were queued."""

    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        ids = list(
            scope(WebhookDelivery.objects.select_for_update(), actor, "manage")
            .filter(pk__in=list(delivery_ids), status__in=(DeliveryStatus.FAILED, DeliveryStatus.DEAD))
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        WebhookDelivery.objects.filter(pk__in=ids).update(
            status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now()
        )
        audit_record(
            actor=actor,
            action="webhook.retry",
            target_type="records.webhookdelivery",
            target_repr=f"{len(ids)} deliveries",
            detail={"deliveries": ids},
        )
        for pk in ids:
            transaction.on_commit(lambda pk=pk: delivery._schedule(pk, 0))
    return len(ids)


def _detail(endpoint: WebhookEndpoint) -> dict:
    """What the audit log keeps about an endpoint: never the secret."""
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "allow_private_network": endpoint.allow_private_network,
    }
