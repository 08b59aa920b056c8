"""Connection services: create, read, update, delete and list, for every surface.

Secrets are write-only: they go in through `settings` and never come out; `connection_to_dict`
shows which secret keys are set, never a value.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from gateway import pipeline
from gateway.kinds import KINDS
from gateway.models import Connection
from governance.errors import Conflict, InvalidInput
from governance.models import Attribute, Organization
from governance.oauth import mcp_auth_get
from governance.policy import ROLE_ADMIN, Actor, get_scoped, not_found_message, require_role, scope
from governance.rules import check_attribute_name, selector_filter
from sessions import outbox
from sessions.audit import REDACTED, audit_record, change_detail, redact, snapshot

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


def gateway_version() -> str:
    try:
        return version("portcullis")
    except PackageNotFoundError:
        return "0.0.0+local"


def server_info(*, actor: Actor) -> dict:
    """Gateway facts for any caller (serverinfo_get, GET /api/v1/serverinfo/): version, URLs, how
    callers authenticate, the connection kinds enabled, limits; for admins the outbox backlog."""
    base = django_settings.PUBLIC_BASE_URL
    auth = mcp_auth_get()
    methods = (
        ["api_token"] if not auth.enabled else ["api_token", "oauth_external" if auth.issuer else "oauth"]
    )
    commands = django_settings.COMMAND_CONNECTIONS_ENABLED
    return {
        "name": "portcullis",
        "version": gateway_version(),
        "api_url": base,
        "mcp_url": f"{base}/api/mcp",
        "auth_methods": methods,
        "connection_kinds": [
            name
            for name in pipeline.connection_kinds()
            if not KINDS[name].enabled_setting or getattr(django_settings, KINDS[name].enabled_setting)
        ],
        "command_connections_enabled": commands,
        "exec_handoff_seconds": django_settings.EXEC_HANDOFF_SECONDS,
        "max_input_bytes": django_settings.MAX_INPUT_BYTES,
        "outbox_backlog": outbox.backlog() if actor.is_admin else None,
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
        "attributes": sorted(a.name for a in connection.attributes.all()),
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
    *,
    actor: Actor,
    search: str | None = None,
    kind: str | None = None,
    selector: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Connection], int]:
    """Connections the actor may see, by name. `selector` (env=prod,tier) keeps those whose
    attributes match every term (governance.rules.selector_filter). Returns (page, total)."""

    qs = scope(Connection.objects.all(), actor, "view")
    if kind:
        qs = qs.filter(kind=kind)
    if search:
        qs = qs.filter(Q(name__icontains=search) | Q(description__icontains=search))
    if selector:
        qs = qs.filter(selector_filter(selector))
    qs = qs.prefetch_related("access_groups", "attributes").order_by("name")
    total = qs.count()
    return list(qs[offset : offset + limit]), total


def connection_get(*, actor: Actor, name: str) -> Connection:
    return get_scoped(
        Connection.objects.prefetch_related("access_groups", "attributes"),
        actor,
        "view",
        not_found=not_found_message(name),
        name=name,
    )


def _create(*, org: Organization, name: str, kind: str, settings: dict, options: dict) -> Connection:
    config, secrets = pipeline.validate_connection_settings(kind, settings)
    connection = Connection(org=org, name=name, kind=kind, config=config)
    connection.set_secrets(secrets)
    _apply_options(connection, options)
    _full_clean(connection)
    # Names are unique regardless of case (a database constraint too): STG-PG-00 and stg-pg-00
    # would be two names for what people read as one.
    existing = Connection.objects.filter(org=org, name__iexact=name).values_list("name", flat=True).first()
    if existing is not None:
        raise Conflict(_exists("connection", name, existing))
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError:
        raise Conflict(f'connection "{name}" already exists') from None
    return connection


def _exists(what: str, name: str, existing: str) -> str:
    if existing == name:
        return f'{what} "{name}" already exists'
    return f'{what} "{name}" already exists as "{existing}" (names are unique regardless of case)'


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


def _audited(connection: Connection) -> dict:
    """A connection's audited state: its options and each non-secret setting by name (so a change
    says `host`, not `config`); `snapshot` leaves secrets out and redacts secret-looking keys."""
    state = snapshot(connection, skip=("id", "org", "created_at", "updated_at", "config"))
    return {**state, **redact(connection.config)}


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
            not_found=not_found_message(name),
            name=name,
        )
        before = _audited(connection)
        secrets_before = set(connection.secret_keys)
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
        if options:
            _apply_options(connection, options)
        _full_clean(connection)
        connection.save()
        detail = change_detail(before, _audited(connection))
        # Secrets: which keys were set, removed or replaced, never a value.
        touched = sorted((secrets_before | set(connection.secret_keys)) & set(settings or {}))
        for key in touched:
            label = f"secret:{key}"
            detail["changed"].append(label)
            detail["before"][label] = REDACTED if key in secrets_before else None
            detail["after"][label] = REDACTED if key in connection.secret_keys else None
        audit_record(actor=actor, action="connection.update", target=connection, detail=detail)
    return connection


def connection_delete(*, actor: Actor, name: str) -> None:
    """Delete a connection. Its sessions keep their record (name and kind are snapshotted)."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        connection = get_scoped(
            Connection.objects.all(), actor, "manage", not_found=not_found_message(name), name=name
        )
        audit_record(actor=actor, action="connection.delete", target=connection)
        connection.delete()


# --- bulk import ---------------------------------------------------------------------------------

IMPORT_MAX_ROWS = 500
# CSV cells are text: these settings and options are numbers or booleans in a connection.
_CSV_INTS = {"port", "max_rows", "max_output_bytes", "timeout_seconds"}
_CSV_BOOLS = {"exec_enabled", "schema_enabled", "runbooks_enabled", "allow_private_network"}
_ROW_KEYS = {"name", "kind", "settings", "attributes"}


def import_rows_from_csv(text: str) -> list[dict]:
    """CSV (a header row, then one connection per row) -> the rows `connection_import` takes.

    Columns: name, kind, attributes (`env=prod;tier=db`), the options (description, max_rows, ...),
    and any other column is a setting of the kind (host, port, database, user, password, path, ...).
    An empty cell is left out."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in reader.fieldnames or "kind" not in reader.fieldnames:
        raise InvalidInput("csv: the header row needs at least the columns name and kind")
    rows = []
    for record in reader:
        row: dict = {"settings": {}}
        for key, value in record.items():
            if key is None:
                raise InvalidInput(f"csv: line {reader.line_num} has more cells than the header")
            key, value = key.strip(), (value or "").strip()
            if value == "":
                continue
            if key in _CSV_INTS:
                value = int(value) if value.lstrip("-").isdigit() else value
            elif key in _CSV_BOOLS:
                value = {"true": True, "false": False}.get(value.lower(), value)
            if key in ("name", "kind"):
                row[key] = value
            elif key == "attributes":
                row[key] = [a.strip() for a in value.split(";") if a.strip()]
            elif key in OPTION_FIELDS:
                row[key] = value
            else:
                row["settings"][key] = value
        rows.append(row)
    return rows


def connection_import(*, actor: Actor, rows: list[dict], dry_run: bool = False) -> dict:
    """Create many connections; every row is checked and answered on its own.

    Each row is {name, kind, settings, attributes?, <options>?}; `attributes` are created when
    missing (key=value or tags) and tagged onto the connection. A row that fails (bad settings, a
    name taken in any case, a repeated name) is reported and skipped; the others are created, each
    with its own `connection.create` audit event, and the import itself is audited once. With
    `dry_run` every row goes through the same checks and nothing is kept. Admins only."""

    require_role(actor, ROLE_ADMIN)
    if not isinstance(rows, list) or not rows:
        raise InvalidInput("rows: give at least one row")
    if len(rows) > IMPORT_MAX_ROWS:
        raise InvalidInput(f"at most {IMPORT_MAX_ROWS} rows per import")

    class _DryRun(Exception):
        pass

    results = []
    seen: set[str] = set()
    try:
        with transaction.atomic():
            for index, row in enumerate(rows, start=1):
                name = str(row.get("name", "")) if isinstance(row, dict) else ""
                try:
                    if not isinstance(row, dict):
                        raise InvalidInput("a row must be an object")
                    unknown = sorted(set(row) - _ROW_KEYS - set(OPTION_FIELDS))
                    if unknown:
                        raise InvalidInput(f"unknown field {unknown[0]!r}")
                    if name.lower() in seen:
                        raise Conflict(f'connection "{name}" appears twice in this import')
                    settings = row.get("settings") or {}
                    if not isinstance(settings, dict):
                        raise InvalidInput("settings must be an object")
                    attributes = [check_attribute_name(a) for a in row.get("attributes") or []]
                    with transaction.atomic():  # a savepoint: a failing row leaves nothing behind
                        connection = _create(
                            org=actor.user.org,
                            name=name,
                            kind=str(row.get("kind", "")),
                            settings=settings,
                            options={k: row[k] for k in OPTION_FIELDS if k in row},
                        )
                        for attribute_name in attributes:
                            attribute = Attribute.objects.filter(
                                org_id=actor.org_id, name__iexact=attribute_name
                            ).first() or Attribute.objects.create(org_id=actor.org_id, name=attribute_name)
                            attribute.connections.add(connection)
                        audit_record(
                            actor=actor,
                            action="connection.create",
                            target=connection,
                            detail={
                                "secret_keys": connection.secret_keys,
                                "import": True,
                                "attributes": attributes,
                            },
                        )
                    seen.add(name.lower())
                    results.append(
                        {"row": index, "name": name, "status": "would_create" if dry_run else "created"}
                    )
                except (InvalidInput, Conflict) as exc:
                    results.append({"row": index, "name": name, "status": "error", "error": exc.message})
            created = sum(1 for r in results if r["status"] != "error")
            summary = {
                "rows": len(rows),
                "created": created,
                "errors": len(rows) - created,
                "dry_run": dry_run,
            }
            if created and any(r.get("attributes") for r in rows if isinstance(r, dict)):
                # New bindings through attributes: rules bound to them apply from now on, in every
                # process (the binding cache is keyed by this version; see CONTRIBUTING.md).
                Organization.rules_changed(actor.org_id)
            audit_record(actor=actor, action="connection.import", target_type="connection", detail=summary)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    return {**summary, "results": results}
