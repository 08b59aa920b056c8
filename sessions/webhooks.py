"""Services for webhook endpoints and their deliveries: admins of an org configure them; every
change is audited in its transaction. The HMAC secret is write-only: it goes in, never out."""

from __future__ import annotations

import functools
import re
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from governance.crud import RuleKind, register
from governance.errors import InvalidInput
from governance.policy import ROLE_ADMIN, Actor, require_role, scope
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


UPDATABLE = {"name", "url", "event_types", "enabled", "allow_private_network"}


def _apply(endpoint: WebhookEndpoint, actor: Actor, fields: dict) -> None:
    """Fields: name, url, event_types, enabled, allow_private_network, secret (None or empty
    keeps the current one on an update; a new endpoint needs one)."""
    unknown = set(fields) - UPDATABLE - {"secret"}
    if unknown:
        raise InvalidInput(f"unknown field {sorted(unknown)[0]!r}")
    secret = fields.get("secret") or None
    if endpoint._state.adding and not secret:
        raise InvalidInput("secret is required: receivers verify the signature with it")
    values = _clean(
        name=fields.get("name"), url=fields.get("url"), event_types=fields.get("event_types"), secret=secret
    )
    for field in ("enabled", "allow_private_network"):
        if field in fields:
            values[field] = bool(fields[field])
    for field, value in values.items():
        setattr(endpoint, field, value)
    if secret:
        endpoint.set_secret(secret)


def _updated(before: dict, endpoint: WebhookEndpoint, fields: dict) -> dict:
    diff = change_detail(before, _state(endpoint))
    if fields.get("secret"):  # said, never shown: the secret is write-only
        diff["changed"].append("secret")
        diff["before"]["secret"] = diff["after"]["secret"] = REDACTED
    return {**_detail(endpoint), **diff}


def _detail(endpoint: WebhookEndpoint) -> dict:
    """What the audit log keeps about an endpoint: never the secret."""
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
        "allow_private_network": endpoint.allow_private_network,
    }


def _state(endpoint: WebhookEndpoint) -> dict:
    return _detail(endpoint) | {"name": endpoint.name}


# Admins only, reading included; no rule binds through an endpoint, so no rules version to bump.
WEBHOOKS = register(
    RuleKind(
        name="webhook",
        model=WebhookEndpoint,
        what="webhook endpoint",
        apply=_apply,
        to_dict=webhook_endpoint_to_dict,
        bindings=False,
        related=(),
        read_role=ROLE_ADMIN,
        bumps_rules_version=False,
        state=_state,
        created_detail=lambda endpoint, fields: _detail(endpoint),
        updated_detail=_updated,
        deleted_detail=_detail,
        not_found="webhook endpoint not found",
        taken='a webhook endpoint named "{name}" exists already{case}',
    )
)
webhook_endpoint_list = WEBHOOKS.list


def webhook_endpoint_get(*, actor: Actor, endpoint_id) -> WebhookEndpoint:
    return WEBHOOKS.get(actor=actor, ref=endpoint_id)


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
    return WEBHOOKS.create(
        actor=actor,
        name=name,
        url=url,
        secret=secret,
        event_types=event_types or [],
        enabled=enabled,
        allow_private_network=allow_private_network,
    )


def webhook_endpoint_update(
    *, actor: Actor, endpoint_id, secret: str | None = None, **changes
) -> WebhookEndpoint:
    """Change an endpoint (admins). `secret` None or empty keeps the current one. Changes may be
    name, url, event_types, enabled, allow_private_network."""
    return WEBHOOKS.update(actor=actor, ref=endpoint_id, secret=secret, **changes)


def webhook_endpoint_delete(*, actor: Actor, endpoint_id) -> None:
    """Remove an endpoint and its delivery records (admins)."""
    WEBHOOKS.delete(actor=actor, ref=endpoint_id)


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
        qs = qs.filter(endpoint=webhook_endpoint_get(actor=actor, endpoint_id=endpoint_id))
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
            transaction.on_commit(functools.partial(delivery._schedule, pk, 0))
    return len(ids)
