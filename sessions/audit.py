"""Writing and verifying the audit log. Services call `audit_record` inside their transaction,
never signals.

The log is a hash chain per organization: each event stores the hash of the event before it
(`prev_hash`) and the SHA-256 of that hash and its own content (`hash`). Appending locks the
org's `AuditChainHead` row, so concurrent writers of one org are ordered and the chain never
forks; `audit_verify` recomputes every link and reports the first one that is broken.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from governance.policy import Actor
from sessions.models import AuditChainHead, AuditEvent

Outcome = AuditEvent.Outcome


REDACTED = "[redacted]"
_SECRET_WORDS = ("password", "secret", "token", "api_key", "apikey", "private_key", "bearer", "credential")


def redact(value, key: str = ""):
    """`value` with every secret-looking entry replaced by "[redacted]" (keys such as password,
    secret, token, headers and env of a connection): audit details never hold a secret."""
    if key and (any(w in key.lower() for w in _SECRET_WORDS) or key in ("headers", "env")):
        return REDACTED if value not in (None, "", [], {}) else value
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def snapshot(obj, *, skip=("id", "org", "created_at", "updated_at")) -> dict:
    """The audited state of a model row: its fields, and its many-to-many fields as sorted names.
    Secrets are redacted (`redact`); encrypted columns are never read."""
    data = {}
    for field in obj._meta.concrete_fields:
        if field.name in skip or "secret" in field.name or field.name.endswith("_encrypted"):
            continue
        value = getattr(obj, field.attname)
        data[field.name] = (
            value if isinstance(value, bool | int | float | str | dict | list | None) else str(value)
        )
    if obj.pk is not None:
        for field in obj._meta.many_to_many:
            data[field.name] = sorted(str(getattr(o, "name", o.pk)) for o in getattr(obj, field.name).all())
    return redact(data)


def change_detail(before: dict, after: dict) -> dict:
    """`{"changed": [...], "before": {...}, "after": {...}}` for the keys whose value changed."""
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return {
        "changed": changed,
        "before": {k: before.get(k) for k in changed},
        "after": {k: after.get(k) for k in changed},
    }


def event_digest(prev_hash: str, event: AuditEvent) -> str:
    """The hash of an event: what it says and when, chained to the one before. Every column that
    identifies the actor is covered: its user id (`actor_key`, the copy kept when the nullable
    foreign key is cleared), e-mail, surface and client. Events written before `actor_key` existed
    hash without it (their content is unchanged)."""
    return hashlib.sha256((prev_hash + _hashed_content(event)).encode()).hexdigest()


def _hashed_content(event: AuditEvent) -> str:
    """What follows the previous hash in the hashed text: a newline and the event's canonical JSON."""
    content = {
        "org": str(event.org_id),
        "actor_email": event.actor_email,
        "surface": event.surface,
        "client": event.client,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_repr": event.target_repr,
        "outcome": event.outcome,
        "detail": event.detail,
        "created_at": event.created_at.isoformat(),
    }
    if event.actor_key:
        content["actor_key"] = event.actor_key
    return "\n" + json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _locked_head(org_id) -> AuditChainHead:
    head = AuditChainHead.objects.select_for_update().filter(pk=org_id).first()
    if head is None:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(org_id=org_id)
        except IntegrityError:  # another writer created it first
            pass
        head = AuditChainHead.objects.select_for_update().get(pk=org_id)
    return head


def audit_record(
    *,
    actor: Actor | None,
    action: str,
    outcome: str = Outcome.SUCCESS,
    target=None,
    target_type: str = "",
    target_id: str = "",
    target_repr: str = "",
    detail: dict | None = None,
    org_id=None,
    surface: str = "cli",
) -> AuditEvent:
    """Append one event to the org's chain. `actor=None` is the system (CLI, tasks): then `org_id`
    is required and `surface` says where it acted from."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
        target_repr = target_repr or str(target)
    org_id = actor.org_id if actor else org_id
    event = AuditEvent(
        org_id=org_id,
        actor=actor.user if actor else None,
        actor_email=actor.user.email if actor else "",
        actor_key=str(actor.user.pk) if actor else "",
        surface=actor.surface if actor else surface,
        client=actor.client if actor else "",
        action=action,
        target_type=target_type,
        target_id=str(target_id)[:64],
        target_repr=target_repr[:200],
        outcome=outcome,
        # Round-trip through JSON now, so the hash covers exactly what the database will return.
        detail=json.loads(json.dumps(detail or {}, default=str)),
        created_at=timezone.now(),
    )
    with transaction.atomic(savepoint=False):  # part of the caller's transaction, or one of its own
        if connection.vendor == "postgresql":
            _append_postgresql(event)
            return event
        head = _locked_head(org_id)
        event.prev_hash = head.last_hash
        event.hash = event_digest(head.last_hash, event)
        event.save()
        AuditChainHead.objects.filter(pk=org_id).update(
            last_id=event.pk, last_hash=event.hash, count=F("count") + 1
        )
    return event


# The append on PostgreSQL in one statement (the ORM path above takes five): lock the head and read
# its hash, insert the event hashed on it, move the head. The database computes the SHA-256 of the
# previous hash and `_hashed_content` (the same text `event_digest` hashes), so the head's hash
# never makes a round trip. Every exec appends, so this is on the hot path; the columns are the
# model's, so a renamed field fails here loudly.
_EVENT_FIELDS = (
    "org", "actor", "actor_email", "actor_key", "surface", "client", "action",
    "target_type", "target_id", "target_repr", "outcome", "detail", "created_at",
)  # fmt: skip
_APPEND_SQL = (
    "WITH h AS (SELECT last_hash FROM {head} WHERE org_id = %s FOR UPDATE), "
    "e AS (INSERT INTO {events} ({columns}, prev_hash, hash) SELECT {values}, h.last_hash, "
    "encode(sha256(convert_to(h.last_hash, 'UTF8') || %s::bytea), 'hex') FROM h "
    "RETURNING id, prev_hash, hash) "
    "UPDATE {head} SET last_id = e.id, last_hash = e.hash, count = count + 1 FROM e "
    "WHERE org_id = %s RETURNING e.id, e.prev_hash, e.hash"
)


@functools.cache
def _event_columns() -> list[tuple[str, str | None]]:
    """(attribute, column) of each of _EVENT_FIELDS."""
    by_name = {f.name: f.get_attname_column() for f in AuditEvent._meta.concrete_fields}
    return [by_name[name] for name in _EVENT_FIELDS]


@functools.cache
def _sql(template: str) -> str:
    qn = connection.ops.quote_name
    columns = [column for _, column in _event_columns()]
    values = ["%s::jsonb" if name == "detail" else "%s" for name in _EVENT_FIELDS]
    return template.format(
        head=qn(AuditChainHead._meta.db_table),
        events=qn(AuditEvent._meta.db_table),
        columns=", ".join(qn(str(c)) for c in columns),
        values=", ".join(values),
    )


def _append_postgresql(event: AuditEvent) -> None:
    params = [getattr(event, attname) for attname, _ in _event_columns()]
    params[_EVENT_FIELDS.index("detail")] = json.dumps(event.detail)
    params = [event.org_id, *params, _hashed_content(event).encode(), event.org_id]
    with connection.cursor() as cursor:
        cursor.execute(_sql(_APPEND_SQL), params)
        row = cursor.fetchone()
        if row is None:  # the org's first event: no head yet
            _locked_head(event.org_id)
            cursor.execute(_sql(_APPEND_SQL), params)
            row = cursor.fetchone()
    event.pk, event.prev_hash, event.hash = row
    event._state.adding = False
    event._state.db = connection.alias


@dataclass
class ChainReport:
    org_id: str
    events: int
    problem: str = ""  # empty when the chain is whole

    @property
    def ok(self) -> bool:
        return not self.problem


def audit_verify(org_id) -> ChainReport:
    """Walk one org's chain in order and report the first broken link (constant memory).

    One snapshot for the events and the head, so writers during the walk are not mistaken for
    removed events (REPEATABLE READ on PostgreSQL; a SQLite transaction is a snapshot already).
    """
    outermost = not connection.in_atomic_block
    with transaction.atomic():
        if connection.vendor == "postgresql" and outermost:  # only the first statement may set it
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        return _walk(org_id)


def _walk(org_id) -> ChainReport:
    prev_hash, last_id, count = "", None, 0
    events = AuditEvent.objects.filter(org_id=org_id).order_by("id")
    for event in events.iterator(chunk_size=2000):
        if event.prev_hash != prev_hash:
            where = f"after event #{last_id}" if last_id else "at the start of the chain"
            return ChainReport(
                str(org_id),
                count,
                f"event #{event.pk} does not follow the event before it ({where}): "
                "an event was removed, inserted or changed there",
            )
        if event_digest(prev_hash, event) != event.hash:
            return ChainReport(str(org_id), count, f"event #{event.pk} was changed after it was written")
        if event.actor_id is not None and (
            str(event.actor_id) != event.actor_key if event.actor_key else event.actor_email == ""
        ):
            # The foreign key may only be cleared (user deleted), never pointed at someone else.
            return ChainReport(
                str(org_id), count, f"event #{event.pk} names another actor than it was written with"
            )
        prev_hash, last_id, count = event.hash, event.pk, count + 1
    head = AuditChainHead.objects.filter(pk=org_id).first()
    if head is None and count:
        return ChainReport(
            str(org_id),
            count,
            "the chain's head record is missing: the chain cannot be checked for removed events",
        )
    if head is not None and (head.last_hash != prev_hash or head.count != count or head.last_id != last_id):
        return ChainReport(
            str(org_id),
            count,
            f"the chain ends at event #{last_id} but {head.count} events were written (last #{head.last_id}): "
            "the newest events were removed",
        )
    return ChainReport(str(org_id), count)
