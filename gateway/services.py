"""Connection services: create, read, update, delete and list, for every surface.

Secrets are write-only: they go in through `settings` and never come out; `connection_to_dict`
shows which secret keys are set, never a value.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from gateway import pipeline
from gateway.models import Connection
from governance.errors import Conflict, InvalidInput
from governance.models import Organization
from governance.policy import ROLE_ADMIN, Actor, get_scoped, require_role, scope
from sessions.audit import audit_record

OPTION_FIELDS = (
    "description",
    "max_rows",
    "max_output_bytes",
    "timeout_seconds",
    "exec_enabled",
    "schema_enabled",
    "runbooks_enabled",
    "agent_queue",
)
_OPTION_TYPES = {
    "description": str,
    "agent_queue": str,
    "max_rows": int,
    "max_output_bytes": int,
    "timeout_seconds": int,
    "exec_enabled": bool,
    "schema_enabled": bool,
    "runbooks_enabled": bool,
}


def split_options(values: dict) -> tuple[dict, dict]:
    """Split one flat object (as `connection_create --config-stdin` takes it) into (settings, options)."""
    options = {k: values[k] for k in OPTION_FIELDS if k in values}
    settings = {k: v for k, v in values.items() if k not in OPTION_FIELDS}
    return settings, options


def _apply_options(connection: Connection, options: dict) -> None:
    for key, value in options.items():
        expected = _OPTION_TYPES[key]
        if value is None:
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise InvalidInput(
                f"{key} must be {'an integer' if expected is int else 'a ' + expected.__name__}"
            )
        setattr(connection, key, value)


def _full_clean(connection: Connection) -> None:
    try:
        connection.full_clean(exclude=["org", "access_groups"], validate_unique=False)
    except ValidationError as exc:
        field, messages = next(iter(exc.message_dict.items()))
        raise InvalidInput(f"{field}: {messages[0]}") from None


def connection_to_dict(connection: Connection) -> dict:
    """The public shape of a connection. Never contains a secret value."""
    return {
        "id": str(connection.pk),
        "name": connection.name,
        "kind": connection.kind,
        "description": connection.description,
        "config": connection.config,
        "secret_keys": list(connection.secret_keys),
        "access_groups": sorted(g.name for g in connection.access_groups.all()),
        "max_rows": connection.max_rows,
        "max_output_bytes": connection.max_output_bytes,
        "timeout_seconds": connection.timeout_seconds,
        "exec_enabled": connection.exec_enabled,
        "schema_enabled": connection.schema_enabled,
        "runbooks_enabled": connection.runbooks_enabled,
        "agent_queue": connection.agent_queue,
        "created_at": connection.created_at.isoformat(),
        "updated_at": connection.updated_at.isoformat(),
    }


def connection_list(
    *, actor: Actor, search: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[Connection], int]:
    """Connections the actor may see, by name. Returns (page, total)."""
    qs = scope(Connection.objects.all(), actor, "view")
    if kind:
        qs = qs.filter(kind=kind)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search))
    qs = qs.prefetch_related("access_groups").order_by("name")
    total = qs.count()
    return list(qs[offset : offset + limit]), total


def connection_get(*, actor: Actor, name: str) -> Connection:
    return get_scoped(
        Connection.objects.prefetch_related("access_groups"),
        actor,
        "view",
        not_found=pipeline.not_found_message(name),
        name=name,
    )


def _create(*, org: Organization, name: str, kind: str, settings: dict, options: dict) -> Connection:
    config, secrets = pipeline.validate_connection_settings(kind, settings)
    connection = Connection(org=org, name=name, kind=kind, config=config)
    connection.set_secrets(secrets)
    _apply_options(connection, options)
    _full_clean(connection)
    if Connection.objects.filter(org=org, name=name).exists():
        raise Conflict(f'connection "{name}" already exists')
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError:
        raise Conflict(f'connection "{name}" already exists') from None
    return connection


def connection_create(
    *, actor: Actor, name: str, kind: str, settings: dict, options: dict | None = None
) -> Connection:
    """Create a connection in the actor's org. Admins only. Raises InvalidInput, Conflict, PolicyDenied."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        connection = _create(
            org=actor.user.org, name=name, kind=kind, settings=settings, options=options or {}
        )
        audit_record(
            actor=actor,
            action="connection.create",
            target=connection,
            detail={"secret_keys": connection.secret_keys},
        )
    return connection


def connection_create_headless(
    *, org: Organization, name: str, kind: str, settings: dict, options: dict
) -> Connection:
    """The CLI's create, for setup before any admin exists. Audited as the system."""
    with transaction.atomic():
        connection = _create(org=org, name=name, kind=kind, settings=settings, options=options)
        audit_record(
            actor=None,
            org_id=org.pk,
            action="connection.create",
            target=connection,
            detail={"secret_keys": connection.secret_keys},
        )
    return connection


def connection_update(
    *, actor: Actor, name: str, settings: dict | None = None, options: dict | None = None
) -> Connection:
    """Change a connection. `settings` merges into the current ones: a key set to null removes it;
    a secret key given replaces that secret only. Admins only."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        connection = get_scoped(
            Connection.objects.select_for_update(of=("self",)),
            actor,
            "manage",
            not_found=pipeline.not_found_message(name),
            name=name,
        )
        changed = []
        if settings:
            merged = dict(connection.config)
            merged.update(connection.get_secrets())
            for key, value in settings.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            config, secrets = pipeline.validate_connection_settings(connection.kind, merged)
            connection.config = config
            connection.set_secrets(secrets)
            changed += sorted(settings)
        if options:
            _apply_options(connection, options)
            changed += sorted(options)
        _full_clean(connection)
        connection.save()
        audit_record(actor=actor, action="connection.update", target=connection, detail={"changed": changed})
    return connection


def connection_delete(*, actor: Actor, name: str) -> None:
    """Delete a connection. Its sessions keep their record (name and kind are snapshotted)."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        connection = get_scoped(
            Connection.objects.all(), actor, "manage", not_found=pipeline.not_found_message(name), name=name
        )
        audit_record(actor=actor, action="connection.delete", target=connection)
        connection.delete()
