"""Access control: which user groups may use a connection, for every surface.

The rule (what `governance.policy` enforces, and what these services and their tools say):

* a connection with no access groups is usable by every member of its org;
* naming groups on a connection restricts that connection only: members of those groups (and
  admins) may use it. It never switches anything on for the org, so no other connection is
  hidden by it (hoop's first `access_control_set` silently hid every unbound connection);
* admins always pass; auditors see every connection but run only where their groups allow.

Changes are admin-only and audited in their transaction; reading the bindings is for admins and
auditors. Connections and groups are looked up in the actor's org only, and another org's
connection is "not found", like a missing one.
"""

from __future__ import annotations

import functools

from django.db import connection as db
from django.db import transaction

from gateway import hotsql
from gateway.models import Connection
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.models import Organization, UserGroup
from governance.policy import (
    ROLE_ADMIN,
    ROLE_AUDITOR,
    Actor,
    connection_scope_sql,
    get_scoped,
    not_found_message,
    require_role,
    scope,
)
from sessions.audit import Outcome, audit_record, change_detail

OPEN_NOTE = "no access groups: every member of the organization may use this connection"
RESTRICTED_NOTE = "only members of allowed_groups (and admins) may use this connection"
MAX_GROUPS = 100


def access_control_to_dict(connection: Connection) -> dict:
    groups = sorted(g.name for g in connection.access_groups.all())
    return {
        "connection_name": connection.name,
        "connection_id": str(connection.pk),
        "allowed_groups": groups,
        "restricted": bool(groups),
        "note": RESTRICTED_NOTE if groups else OPEN_NOTE,
    }


def _connection(actor: Actor, name: str, action: str, *, lock: bool = False) -> Connection:
    qs = Connection.objects.prefetch_related("access_groups")
    if lock:
        qs = Connection.objects.select_for_update(of=("self",))
    return get_scoped(qs, actor, action, not_found=not_found_message(name), name=name)


def access_control_get(*, actor: Actor, connection_name: str) -> dict:
    """One connection's access groups. Admins and auditors. Raises PolicyDenied, NotFound."""
    require_role(actor, ROLE_AUDITOR)
    return access_control_to_dict(_connection(actor, connection_name, "view"))


def access_control_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list[dict], int]:
    """The connections of the actor's org that have access groups, by name: (page, total).
    Connections not listed are open to every member. Admins and auditors."""
    require_role(actor, ROLE_AUDITOR)
    qs = (
        scope(Connection.objects.all(), actor, "view")
        .filter(access_groups__isnull=False)
        .distinct()
        .order_by("name")
    )
    total = qs.count()
    page = qs.prefetch_related("access_groups")[offset : offset + limit]
    return [access_control_to_dict(c) for c in page], total


def access_control_set(*, actor: Actor, connection_name: str, groups: list[str]) -> dict:
    """Replace the access groups of one connection (admins). Only that connection changes.

    Raises InvalidInput (no groups: use access_control_unset), NotFound (connection or group,
    looked up in the actor's org only), PolicyDenied.
    """
    require_role(actor, ROLE_ADMIN)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise InvalidInput("groups must be a list of group names")
    names = sorted({g.strip() for g in groups if g.strip()})
    if not names:
        raise InvalidInput(
            "groups must contain at least one user group; use access_control_unset to remove the binding"
        )
    if len(names) > MAX_GROUPS:
        raise InvalidInput(f"at most {MAX_GROUPS} groups")
    with transaction.atomic():
        connection = _connection(actor, connection_name, "manage", lock=True)
        found = list(UserGroup.objects.filter(org_id=actor.org_id, name__in=names))
        missing = sorted(set(names) - {g.name for g in found})
        if missing:
            raise NotFound(f'group "{missing[0]}" not found')
        previous = sorted(connection.access_groups.values_list("name", flat=True))
        connection.access_groups.set(found)
        audit_record(
            actor=actor,
            action="access_control.set",
            target=connection,
            detail={
                "groups": names,
                "previous": previous,
                **change_detail({"access_groups": previous}, {"access_groups": sorted(names)}),
            },
        )
    connection = _connection(actor, connection_name, "view")
    return access_control_to_dict(connection)


def access_control_unset(*, actor: Actor, connection_name: str) -> dict:
    """Remove every access group of one connection (admins): it becomes open to the whole org.

    Raises Conflict when it has none, NotFound, PolicyDenied."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        connection = _connection(actor, connection_name, "manage", lock=True)
        previous = sorted(connection.access_groups.values_list("name", flat=True))
        if not previous:
            raise Conflict(f'connection "{connection.name}" has no access groups')
        connection.access_groups.clear()
        audit_record(
            actor=actor,
            action="access_control.unset",
            target=connection,
            detail={
                "previous": previous,
                **change_detail({"access_groups": previous}, {"access_groups": []}),
            },
        )
    return access_control_to_dict(_connection(actor, connection_name, "view"))


def authorize(*, actor: Actor, connection_name: str, mode: str) -> Connection:
    """The connection `actor` may use for `mode` ("exec", "schema" or "runbooks"), or a recorded denial."""
    try:
        connection, runnable = _connection_to_use(actor, connection_name)
        if not runnable:
            raise PolicyDenied(f'you may not run anything on connection "{connection_name}"')
        enabled = {
            "exec": connection.exec_enabled,
            "schema": connection.schema_enabled,
            "runbooks": connection.runbooks_enabled,
        }[mode]
        if not enabled:
            raise PolicyDenied(f"{mode} is disabled for this connection")
    except (NotFound, PolicyDenied) as exc:
        audit_record(
            actor=actor,
            action=f"{mode}.request",
            outcome=Outcome.DENIED,
            target_type="gateway.connection",
            target_repr=connection_name[:200],
            detail={"reason": exc.message},
        )
        raise
    return connection


def _connection_to_use(actor: Actor, name: str) -> tuple[Connection, bool]:
    """The connection called `name` that `actor` may view, with its org (as `select_related`
    loads it), and whether they may also run on it. Raises NotFound.

    Every exec and upstream tool call asks, and compiling the scoped query was a tenth of an
    exec's CPU (docs/durability.md): on PostgreSQL it is one statement, written once from the
    policy's SQL form of the scope (`policy.connection_scope_sql`)."""
    if db.vendor != "postgresql":
        return _connection_to_use_by_orm(actor, name)
    view, view_params = connection_scope_sql(actor, "view", "c")
    run, run_params = connection_scope_sql(actor, "exec", "c")
    with db.cursor() as cursor:
        cursor.execute(_to_use_sql(view, run), [*run_params, *view_params, name])
        row = cursor.fetchone()
    if row is None:
        raise NotFound(not_found_message(name))
    connection, org = hotsql.load(row[:-1], Connection, Organization)
    connection.org = org
    return connection, row[-1]


def _connection_to_use_by_orm(actor: Actor, name: str) -> tuple[Connection, bool]:
    """`_connection_to_use` through the ORM: SQLite, and the reference the statement is tested against."""
    connection = get_scoped(
        Connection.objects.select_related("org"), actor, "view", not_found=not_found_message(name), name=name
    )
    # View and exec scopes differ only for auditors (who see every connection): ask again then.
    if actor.is_auditor and not actor.is_admin:
        return connection, scope(Connection.objects.filter(pk=connection.pk), actor, "exec").exists()
    return connection, True


@functools.cache
def _to_use_sql(view: str, run: str) -> str:
    """The lookup for one shape of scope (`view`, `run`: `connection_scope_sql` conditions)."""
    return (
        f"SELECT {hotsql.columns('c', Connection)}, {hotsql.columns('o', Organization)}, ({run}) "
        f"FROM {hotsql.table(Connection)} c JOIN {hotsql.table(Organization)} o ON o.id = c.org_id "
        f"WHERE ({view}) AND c.name = %s"
    )
