"""Virtual MCP servers: several upstream mcp connections (and optionally Portcullis's own tools)
published as one MCP endpoint, `/api/mcp/v/<name>` (mcpserver/virtual.py), so an agent configures
one URL.

Tool names are namespaced: `<connection>__<tool>` for an upstream tool, `portcullis__<tool>` for a
gateway tool. A name is resolved to the member connection whose name is its longest prefix
followed by `__` (connection names are 1-63 letters, digits, `-`, `_`, `.`). Nothing is decided
here about the tools themselves: a listing and a call go to `pipeline.upstream_tools_list` and
`upstream_hold.tool_call_held` for the member connection, with its tool policy, approval hold,
guardrails, masking, pinned contracts and recorded sessions. The only policy of its own: a
member connection the caller may not use (access groups, disabled exec) is left out entirely,
and a tool of a connection that is not a member is "not found", like a denied one.
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from gateway.models import NAME_VALIDATOR, Connection, ConnectionKind, VirtualServer
from governance.errors import Conflict, InvalidInput, NotFound
from governance.policy import ROLE_ADMIN, Actor, get_scoped, require_role, scope
from sessions.audit import audit_record

SEPARATOR = "__"
PORTCULLIS_PREFIX = "portcullis"
MAX_MEMBERS = 50


def not_found_message(name: str) -> str:
    return f'virtual server "{name}" not found or not accessible'


def tool_not_found_message(tool: str, server: str) -> str:
    return f'tool "{tool}" not found or not accessible on virtual server "{server}"'


def namespaced(connection_name: str, tool: str) -> str:
    return f"{connection_name}{SEPARATOR}{tool}"


def resolve(tool: str, members: list[str], *, portcullis: bool) -> tuple[str | None, str] | None:
    """(member connection name, upstream tool) for a namespaced tool name; (None, tool) for a
    Portcullis tool; None when no member (or the Portcullis namespace, if published) matches."""
    candidates = [
        m for m in members if tool.startswith(m + SEPARATOR) and len(tool) > len(m) + len(SEPARATOR)
    ]
    if candidates:
        member = max(candidates, key=len)
        return member, tool[len(member) + len(SEPARATOR) :]
    prefix = PORTCULLIS_PREFIX + SEPARATOR
    if portcullis and tool.startswith(prefix) and len(tool) > len(prefix):
        return None, tool[len(prefix) :]
    return None


def server_for(*, actor: Actor, name: str) -> tuple[VirtualServer, list[str]]:
    """The virtual server `name` of the actor's org and the member connections the actor may use
    now (kind mcp, exec enabled, allowed by their access groups), by name. NotFound otherwise."""
    server = get_scoped(
        VirtualServer.objects.all(), actor, "use", not_found=not_found_message(name), name=name
    )
    usable = scope(
        Connection.objects.filter(virtual_servers=server, kind=ConnectionKind.MCP, exec_enabled=True),
        actor,
        "exec",
    )
    return server, sorted(usable.values_list("name", flat=True).distinct())


# --- admin ---------------------------------------------------------------------------------------


def _members(actor: Actor, names) -> list[Connection]:
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
        raise InvalidInput("connections must be a list of connection names")
    if len(names) > MAX_MEMBERS:
        raise InvalidInput(f"connections: at most {MAX_MEMBERS} connections per virtual server")
    members = []
    for name in dict.fromkeys(names):
        connection = Connection.objects.filter(org_id=actor.org_id, name=name).first()
        if connection is None:
            raise NotFound(f'connections: connection "{name}" not found')
        if connection.kind != ConnectionKind.MCP:
            raise InvalidInput(f'connections: connection "{name}" is not an mcp connection')
        if name == PORTCULLIS_PREFIX:
            raise InvalidInput(
                f'connections: "{PORTCULLIS_PREFIX}" is the namespace of the gateway\'s own tools'
            )
        members.append(connection)
    names_ = [c.name for c in members]
    for a in names_:
        for b in names_:
            if a != b and b.startswith(a + SEPARATOR):
                raise InvalidInput(
                    f'connections: "{b}" starts with "{a}{SEPARATOR}", so tool names of the two would be ambiguous'
                )
    return members


def _validate_name(name) -> str:
    if not isinstance(name, str):
        raise InvalidInput("name: must be a string")
    try:
        NAME_VALIDATOR(name)
    except ValidationError:
        raise InvalidInput(f"name: {NAME_VALIDATOR.message}") from None
    return name


def _state(server: VirtualServer) -> dict:
    return {
        "name": server.name,
        "description": server.description,
        "connections": sorted(server.connections.values_list("name", flat=True)),
        "include_portcullis_tools": server.include_portcullis_tools,
    }


def virtual_server_to_dict(server: VirtualServer) -> dict:
    return {"id": str(server.pk), **_state(server), "path": f"/api/mcp/v/{server.name}"}


def virtual_server_create(
    *,
    actor: Actor,
    name: str,
    connections: list[str],
    description: str = "",
    include_portcullis_tools: bool = False,
) -> VirtualServer:
    """Publish member mcp connections as one endpoint. Admins only; audited."""
    require_role(actor, ROLE_ADMIN)
    _validate_name(name)
    if len(description or "") > 500:
        raise InvalidInput("description: at most 500 characters")
    with transaction.atomic():
        members = _members(actor, connections)
        existing = VirtualServer.objects.filter(org_id=actor.org_id, name__iexact=name).values_list(
            "name", flat=True
        )
        if existing:
            raise Conflict(f'virtual server "{name}" already exists as "{existing[0]}"')
        try:
            with transaction.atomic():
                server = VirtualServer.objects.create(
                    org_id=actor.org_id,
                    name=name,
                    description=description or "",
                    include_portcullis_tools=bool(include_portcullis_tools),
                )
        except IntegrityError:
            raise Conflict(f'virtual server "{name}" already exists') from None
        server.connections.set(members)
        audit_record(actor=actor, action="virtual_server.create", target=server, detail=_state(server))
    return server


def _ref(ref) -> str:
    try:
        return str(uuid.UUID(str(ref)))
    except ValueError:
        raise NotFound(not_found_message(str(ref)[:100])) from None


def virtual_server_update(
    *,
    actor: Actor,
    ref: str,
    name: str | None = None,
    connections: list[str] | None = None,
    description: str | None = None,
    include_portcullis_tools: bool | None = None,
) -> VirtualServer:
    """Change a virtual server (by id). Admins only; audited with the before and after."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        server = get_scoped(
            VirtualServer.objects.select_for_update(),
            actor,
            "manage",
            not_found=not_found_message(ref),
            pk=_ref(ref),
        )
        before = _state(server)
        if name is not None and name != server.name:
            _validate_name(name)
            clash = VirtualServer.objects.filter(org_id=actor.org_id, name__iexact=name).exclude(pk=server.pk)
            if clash.exists():
                raise Conflict(f'virtual server "{name}" already exists')
            server.name = name
        if description is not None:
            if len(description) > 500:
                raise InvalidInput("description: at most 500 characters")
            server.description = description
        if include_portcullis_tools is not None:
            server.include_portcullis_tools = bool(include_portcullis_tools)
        server.save()
        if connections is not None:
            server.connections.set(_members(actor, connections))
        audit_record(
            actor=actor,
            action="virtual_server.update",
            target=server,
            detail={"before": before, "after": _state(server)},
        )
    return server


def virtual_server_delete(*, actor: Actor, ref: str) -> None:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        server = get_scoped(
            VirtualServer.objects.all(), actor, "manage", not_found=not_found_message(ref), pk=_ref(ref)
        )
        audit_record(actor=actor, action="virtual_server.delete", target=server, detail=_state(server))
        server.delete()
