"""Idempotency keys: a retry of a call that runs something, with the same key by the same user,
finds the session the first attempt made instead of running again (`exec`, `reviews_execute`,
`runbooks_run`, `upstream_call`, over MCP and REST)."""

from __future__ import annotations

import hashlib
import json

from django.db import IntegrityError, transaction

from governance.errors import InvalidInput
from sessions.models import IdempotencyKey, Session

MAX_KEY_LENGTH = 200


def request_hash(operation: str, request: dict) -> str:
    canonical = json.dumps({"op": operation, **request}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(
            f"idempotency_key must be a non-empty string of at most {MAX_KEY_LENGTH} characters"
        )
    return key


def find(*, user, key: str | None, operation: str, request: dict) -> Session | None:
    """The session an earlier call with this key made, or None. A key reused for a different
    request is refused: it would otherwise silently answer with the wrong result."""
    if key is None:
        return None
    row = IdempotencyKey.objects.filter(user=user, key=key).select_related("session__user").first()
    if row is None:
        return None
    if row.operation != operation or row.request_sha256 != request_hash(operation, request):
        raise InvalidInput(
            "idempotency_key was already used for a different request; use a new key for a new request"
        )
    return row.session


def remember(*, user, key: str | None, operation: str, request: dict, session: Session) -> None:
    """Bind the key to the session, in the caller's transaction. Raises IntegrityError when a
    concurrent call with the same key won (the caller rolls back and answers with `find`)."""
    if key is None:
        return
    with transaction.atomic():
        IdempotencyKey.objects.create(
            user=user,
            key=key,
            operation=operation,
            request_sha256=request_hash(operation, request),
            session=session,
        )


__all__ = ["IntegrityError", "check_key", "find", "remember", "request_hash"]
