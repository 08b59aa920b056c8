"""Runbooks: parameterized, pre-approved scripts per connection, and the rules of who may run them.

A runbook's template holds `{{ name }}` placeholders; each is declared with a type:

    string   text (max_length, default 1000; optional regex `pattern`; never a NUL byte)
    integer  a whole number (optional min/max)
    number   a finite number (optional min/max)
    boolean  true or false
    enum     one of `choices` (strings)
    identifier  a table or column name, quoted as an identifier (SQL connections only); limited to
                the names its `allowed` globs match (e.g. ["public.*", "orders"]), and never a
                system catalog (pg_catalog, information_schema, mysql, performance_schema, sys,
                sqlite_*) unless a glob names it

Values are validated against the declaration, then rendered quoted for the target: SQL literals
and identifiers in the connection's dialect (by sqlglot's generator, which escapes per dialect, e.g.
MySQL's backslashes), shell words (`shlex.quote`) for command connections. After rendering, an SQL
script must still parse into as many statements as the template did, so no value can add or
remove a statement even if quoting were wrong. The rendered text then takes the one exec path
(`gateway.pipeline.exec_start` with verb `runbook`): guardrails, review, masking and audit apply.

Who may run what: an enabled `RunbookRule` binds connections (directly or via attributes), names
runbooks (names or globs) and groups; a member of one of its groups may run a matching runbook on
a bound connection. Admins may run any runbook; everyone else needs a rule.
"""

from __future__ import annotations

import fnmatch
import math
import re
import shlex

from django.db import transaction

from gateway import pipeline
from gateway.kinds import SQL_DIALECTS
from gateway.models import Connection, Runbook, RunbookRule
from governance import crud
from governance.errors import InvalidInput, NotFound
from governance.models import UserGroup
from governance.policy import (
    ROLE_ADMIN,
    Actor,
    get_scoped,
    has_role,
    in_groups,
    require_role,
    scope,
)
from governance.rules import bound_queryset
from sessions.audit import audit_record, change_detail, snapshot

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]{0,62})\s*\}\}")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
TYPES = ("string", "integer", "number", "boolean", "enum", "identifier")
SPEC_KEYS = {
    "name",
    "type",
    "description",
    "required",
    "default",
    "choices",
    "pattern",
    "max_length",
    "min",
    "max",
    "allowed",
}
# Schemas and names an identifier parameter may not reach unless its `allowed` globs name them.
SYSTEM_NAMES = (
    "pg_catalog.*",
    "pg_*",
    "information_schema.*",
    "mysql.*",
    "performance_schema.*",
    "sys.*",
    "sqlite_*",
)
MAX_TEMPLATE_BYTES = 64 * 1024
MAX_PARAMETERS = 50


# --- parameters and rendering ------------------------------------------------------------------------


def validate_parameters(specs) -> list[dict]:
    """Normalize a list of parameter declarations; InvalidInput says what is wrong."""
    if specs is None:
        return []
    if not isinstance(specs, list) or len(specs) > MAX_PARAMETERS:
        raise InvalidInput(f"parameters must be a list of at most {MAX_PARAMETERS} objects")
    out, seen = [], set()
    for i, spec in enumerate(specs):
        where = f"parameters[{i}]"
        if not isinstance(spec, dict):
            raise InvalidInput(f"{where} must be an object")
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise InvalidInput(
                f"{where}: unknown key {sorted(unknown)[0]!r}; use: {', '.join(sorted(SPEC_KEYS))}"
            )
        name = spec.get("name")
        if not isinstance(name, str) or not PARAM_NAME.match(name):
            raise InvalidInput(f"{where}.name must be a letter or _ followed by letters, digits or _")
        if name in seen:
            raise InvalidInput(f"parameter {name!r} is declared twice")
        seen.add(name)
        kind = spec.get("type", "string")
        if kind not in TYPES:
            raise InvalidInput(f"parameter {name!r}: type must be one of {', '.join(TYPES)}")
        clean = {"name": name, "type": kind, "required": bool(spec.get("required", True))}
        if spec.get("description"):
            clean["description"] = str(spec["description"])[:500]
        if spec.get("allowed") is not None:
            allowed = spec["allowed"]
            if kind != "identifier" or not isinstance(allowed, list) or not allowed:
                raise InvalidInput(
                    f"parameter {name!r}: allowed is a non-empty list of name globs, for identifiers"
                )
            if not all(isinstance(g, str) and re.fullmatch(r"[A-Za-z0-9_$*?.]{1,130}", g) for g in allowed):
                raise InvalidInput(
                    f"parameter {name!r}: allowed globs are names with * and ? (like public.*)"
                )
            clean["allowed"] = [g.lower() for g in dict.fromkeys(allowed)]
        if kind == "enum":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
                raise InvalidInput(f"parameter {name!r}: an enum needs a non-empty list of string choices")
            clean["choices"] = list(dict.fromkeys(choices))
        if kind == "string":
            max_length = spec.get("max_length", 1000)
            if not isinstance(max_length, int) or not 1 <= max_length <= 100_000:
                raise InvalidInput(f"parameter {name!r}: max_length must be 1-100000")
            clean["max_length"] = max_length
            if spec.get("pattern") is not None:
                try:
                    re.compile(spec["pattern"])
                except (re.error, TypeError):
                    raise InvalidInput(
                        f"parameter {name!r}: pattern is not a valid regular expression"
                    ) from None
                clean["pattern"] = spec["pattern"]
        if kind in ("integer", "number"):
            for bound in ("min", "max"):
                if spec.get(bound) is not None:
                    if isinstance(spec[bound], bool) or not isinstance(spec[bound], int | float):
                        raise InvalidInput(f"parameter {name!r}: {bound} must be a number")
                    clean[bound] = spec[bound]
        if "default" in spec and spec["default"] is not None:
            clean["default"] = _check_value(clean, spec["default"])
        out.append(clean)
    return out


def _check_value(spec: dict, value):
    name, kind = spec["name"], spec["type"]
    if kind in ("string", "identifier", "enum"):
        if not isinstance(value, str):
            raise InvalidInput(f"parameter {name!r} must be a string")
        if "\x00" in value:
            raise InvalidInput(f"parameter {name!r} must not contain a NUL byte")
    if kind == "string":
        if len(value) > spec.get("max_length", 1000):
            raise InvalidInput(f"parameter {name!r} is longer than {spec.get('max_length', 1000)} characters")
        if spec.get("pattern") and not re.fullmatch(spec["pattern"], value):
            raise InvalidInput(f"parameter {name!r} does not match its pattern")
    elif kind == "identifier":
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?", value):
            raise InvalidInput(f"parameter {name!r} must be a name like orders or public.orders")
        low = value.lower()
        allowed = spec.get("allowed")
        if allowed is not None and not any(fnmatch.fnmatchcase(low, g) for g in allowed):
            raise InvalidInput(f"parameter {name!r} must be one of the names this runbook allows")
        if any(fnmatch.fnmatchcase(low, g) for g in SYSTEM_NAMES) and not (
            allowed and any(fnmatch.fnmatchcase(low, g) and g not in ("*", "*.*") for g in allowed)
        ):
            raise InvalidInput(f"parameter {name!r} may not name a system catalog")
    elif kind == "enum":
        if value not in spec["choices"]:
            raise InvalidInput(f"parameter {name!r} must be one of: {', '.join(spec['choices'])}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise InvalidInput(f"parameter {name!r} must be true or false")
    elif kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"parameter {name!r} must be a number")
        if kind == "integer" and not (isinstance(value, int) or float(value).is_integer()):
            raise InvalidInput(f"parameter {name!r} must be a whole number")
        if not math.isfinite(value):
            raise InvalidInput(f"parameter {name!r} must be finite")
        value = int(value) if kind == "integer" else value
        if spec.get("min") is not None and value < spec["min"]:
            raise InvalidInput(f"parameter {name!r} must be at least {spec['min']}")
        if spec.get("max") is not None and value > spec["max"]:
            raise InvalidInput(f"parameter {name!r} must be at most {spec['max']}")
    return value


def _values(specs: list[dict], given: dict | None) -> dict:
    given = dict(given or {})
    if not isinstance(given, dict):
        raise InvalidInput("parameters must be an object")
    declared = {s["name"] for s in specs}
    unknown = sorted(set(given) - declared)
    if unknown:
        raise InvalidInput(
            f"unknown parameter {unknown[0]!r}; this runbook takes: {', '.join(sorted(declared)) or 'none'}"
        )
    values = {}
    for spec in specs:
        if spec["name"] in given and given[spec["name"]] is not None:
            values[spec["name"]] = _check_value(spec, given[spec["name"]])
        elif "default" in spec:
            values[spec["name"]] = spec["default"]
        elif spec["required"]:
            raise InvalidInput(f"parameter {spec['name']!r} is required")
        else:
            values[spec["name"]] = None
    return values


def _literal(spec: dict, value, kind: str) -> str:
    """`value` as text the target reads as one datum: a quoted SQL literal or identifier, or a shell word."""
    dialect = SQL_DIALECTS.get(kind)
    if dialect is None:  # command connections: one shell word
        if isinstance(value, bool):
            return "true" if value else "false"
        return shlex.quote("" if value is None else str(value))
    from sqlglot import exp

    if value is None:
        return "NULL"
    if spec["type"] == "identifier":
        return ".".join(
            exp.to_identifier(part, quoted=True).sql(dialect=dialect) for part in value.split(".")
        )
    if isinstance(value, bool):
        return ("1" if value else "0") if dialect == "sqlite" else ("TRUE" if value else "FALSE")
    if isinstance(value, int | float):
        return repr(value)
    return exp.Literal.string(value).sql(dialect=dialect)


def _dummy(spec: dict):
    return {"string": "x", "integer": 1, "number": 1.5, "boolean": True, "identifier": "x"}.get(
        spec["type"], (spec.get("choices") or ["x"])[0]
    )


def _statement_count(text: str, kind: str) -> int:
    import sqlglot

    try:
        return len([e for e in sqlglot.parse(text, read=SQL_DIALECTS[kind]) if e is not None])
    except Exception:
        raise InvalidInput("the script does not parse as SQL for this connection") from None


def render(template: str, specs: list[dict], values: dict, kind: str) -> str:
    by_name = {s["name"]: s for s in specs}
    return PLACEHOLDER.sub(lambda m: _literal(by_name[m.group(1)], values[m.group(1)], kind), template)


def check_template(template: str, specs: list[dict], kind: str) -> None:
    """Every placeholder declared and every declaration used; an SQL template must parse."""
    if not isinstance(template, str) or not template.strip():
        raise InvalidInput("template is required")
    if len(template.encode()) > MAX_TEMPLATE_BYTES:
        raise InvalidInput(f"template is larger than {MAX_TEMPLATE_BYTES} bytes")
    used = set(PLACEHOLDER.findall(template))
    declared = {s["name"] for s in specs}
    if used - declared:
        raise InvalidInput(f"placeholder {{{{ {sorted(used - declared)[0]} }}}} has no parameter declared")
    if declared - used:
        raise InvalidInput(f"parameter {sorted(declared - used)[0]!r} is not used in the template")
    if kind in SQL_DIALECTS:
        _statement_count(render(template, specs, {s["name"]: _dummy(s) for s in specs}, kind), kind)
    elif any(s["type"] == "identifier" for s in specs):
        raise InvalidInput("identifier parameters are for SQL connections only")


def render_checked(runbook: Runbook, given: dict | None) -> tuple[str, dict]:
    """The runbook's script with `given` values, and the values used. InvalidInput for bad values."""
    kind = runbook.connection.kind
    values = _values(runbook.parameters, given)
    text = render(runbook.template, runbook.parameters, values, kind)
    if kind in SQL_DIALECTS:
        expected = _statement_count(
            render(
                runbook.template, runbook.parameters, {s["name"]: _dummy(s) for s in runbook.parameters}, kind
            ),
            kind,
        )
        if _statement_count(text, kind) != expected:  # quoting is the defence; this is the backstop
            raise InvalidInput("the parameters changed the script's structure; nothing ran")
    return text, values


# --- runbooks (admins manage them; the Django admin is their editor) --------------------------------


def runbook_to_dict(runbook: Runbook) -> dict:
    return {
        "id": str(runbook.pk),
        "name": runbook.name,
        "connection_name": runbook.connection.name,
        "description": runbook.description,
        "parameters": runbook.parameters,
        "template": runbook.template,
        "enabled": runbook.enabled,
        "updated_at": runbook.updated_at.isoformat(),
    }


def _connection(actor: Actor, name: str) -> Connection:
    return get_scoped(
        Connection.objects.all(),
        actor,
        "view",
        not_found=f'connection "{name}" not found or not accessible',
        name=name,
    )


def runbook_create(
    *,
    actor: Actor,
    connection_name: str,
    name: str,
    template: str,
    parameters=None,
    description: str = "",
    enabled=True,
) -> Runbook:
    require_role(actor, ROLE_ADMIN)
    connection = _connection(actor, connection_name)
    if connection.kind not in (*SQL_DIALECTS, "command"):
        raise InvalidInput(f"runbooks run on database and command connections, not {connection.kind}")
    specs = validate_parameters(parameters)
    check_template(template, specs, connection.kind)
    with transaction.atomic():
        runbook = Runbook(
            org_id=actor.org_id,
            connection=connection,
            name=crud.check_name(name, "runbook"),
            description=description or "",
            template=template,
            parameters=specs,
            enabled=bool(enabled),
        )
        crud.save_unique(runbook, "runbook")
        audit_record(
            actor=actor, action="runbook.create", target=runbook, detail={"connection": connection.name}
        )
    return runbook


def _runbook(actor: Actor, connection_name: str, name: str) -> Runbook:
    runbook = (
        Runbook.objects.select_related("connection")
        .filter(org_id=actor.org_id, connection__name=connection_name, name=name)
        .first()
    )
    if runbook is None:
        raise NotFound(f'runbook "{name}" not found on connection "{connection_name}"')
    return runbook


def runbook_update(*, actor: Actor, connection_name: str, name: str, **fields) -> Runbook:
    """Fields: new_name, description, template, parameters, enabled."""
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        runbook = _runbook(actor, connection_name, name)
        before = snapshot(runbook)
        if fields.get("new_name"):
            runbook.name = crud.check_name(fields["new_name"], "runbook")
        for key in ("description", "enabled"):
            if fields.get(key) is not None:
                setattr(runbook, key, fields[key])
        if fields.get("parameters") is not None:
            runbook.parameters = validate_parameters(fields["parameters"])
        if fields.get("template") is not None:
            runbook.template = fields["template"]
        check_template(runbook.template, runbook.parameters, runbook.connection.kind)
        crud.save_unique(runbook, "runbook")
        audit_record(
            actor=actor,
            action="runbook.update",
            target=runbook,
            detail=change_detail(before, snapshot(runbook)),
        )
    return runbook


def split_ref(ref: str) -> tuple[str, str]:
    """A runbook's reference as one string, `<connection>/<runbook>` (names have no '/')."""
    connection_name, slash, name = (ref or "").partition("/")
    if not slash or not connection_name or not name:
        raise InvalidInput('a runbook is named "<connection>/<runbook>", e.g. "shop/lookup"')
    return connection_name, name


def runbook_admin_list(*, actor: Actor, limit: int = 50, offset: int = 0) -> tuple[list[Runbook], int]:
    """Every runbook of the actor's org, enabled or not, by connection and name (admins)."""
    require_role(actor, ROLE_ADMIN)
    qs = scope(Runbook.objects.select_related("connection"), actor, "view")
    return crud.page_of(qs.order_by("connection__name", "name"), limit, offset)


def runbook_get(*, actor: Actor, connection_name: str, name: str) -> Runbook:
    require_role(actor, ROLE_ADMIN)
    return _runbook(actor, connection_name, name)


def runbook_delete(*, actor: Actor, connection_name: str, name: str) -> None:
    require_role(actor, ROLE_ADMIN)
    with transaction.atomic():
        runbook = _runbook(actor, connection_name, name)
        audit_record(
            actor=actor, action="runbook.delete", target=runbook, detail={"before": snapshot(runbook)}
        )
        runbook.delete()


def _allowed(actor: Actor, runbook: Runbook, rules: list[RunbookRule]) -> bool:
    if has_role(actor, ROLE_ADMIN):
        return True
    for rule in rules:
        if in_groups(actor, (g.pk for g in rule.groups.all())) and any(
            fnmatch.fnmatchcase(runbook.name, pattern) for pattern in rule.runbooks
        ):
            return True
    return False


def runbook_list(*, actor: Actor, connection_name: str | None = None) -> list[Runbook]:
    """The enabled runbooks the actor may run (on connections the actor may use)."""

    connections = scope(Connection.objects.all(), actor, "exec").filter(runbooks_enabled=True)
    if connection_name:
        connections = connections.filter(name=connection_name)
    runbooks = list(
        Runbook.objects.select_related("connection")
        .filter(org_id=actor.org_id, enabled=True, connection__in=connections)
        .order_by("connection__name", "name")
    )
    by_connection: dict = {}
    out = []
    for runbook in runbooks:
        if runbook.connection_id not in by_connection:
            by_connection[runbook.connection_id] = list(
                bound_queryset(RunbookRule.objects.all(), runbook.connection).prefetch_related("groups")
            )
        if _allowed(actor, runbook, by_connection[runbook.connection_id]):
            out.append(runbook)
    return out


def runbook_run(
    *,
    actor: Actor,
    connection_name: str,
    name: str,
    parameters: dict | None = None,
    idempotency_key: str | None = None,
):
    """Render the runbook with `parameters` and run it through the pipeline (verb `runbook`).
    Returns the session, like `exec_start`."""

    connection = pipeline.authorize(actor=actor, connection_name=connection_name, mode="runbooks")
    runbook = (
        Runbook.objects.select_related("connection")
        .filter(connection=connection, name=name, enabled=True)
        .first()
    )
    rules = list(bound_queryset(RunbookRule.objects.all(), connection).prefetch_related("groups"))
    if runbook is None or not _allowed(actor, runbook, rules):
        audit_record(
            actor=actor,
            action="runbook.run",
            outcome="denied",
            target=connection,
            detail={"runbook": name[:100], "reason": "not found or not allowed"},
        )
        raise NotFound(f'runbook "{name}" not found on connection "{connection_name}", or you may not run it')
    text, values = render_checked(runbook, parameters)
    return pipeline.exec_start(
        actor=actor,
        connection_name=connection.name,
        input=text,
        verb="runbook",
        metadata={"runbook": runbook.name, "parameters": values},
        idempotency_key=idempotency_key,
    )


# --- runbook rules ----------------------------------------------------------------------------------


def runbook_rule_to_dict(rule: RunbookRule) -> dict:
    return {
        "id": str(rule.pk),
        "name": rule.name,
        "description": rule.description,
        "enabled": rule.enabled,
        "groups": sorted(g.name for g in rule.groups.all()),
        "runbooks": rule.runbooks,
        **crud.rule_bindings(rule),
        "created_at": rule.created_at.isoformat(),
        "updated_at": rule.updated_at.isoformat(),
    }


def _apply_rule(rule: RunbookRule, actor: Actor, fields: dict) -> None:
    """Fields: name, description, enabled, groups, runbooks (and the bindings)."""
    if "name" in fields:
        rule.name = crud.check_name(fields["name"], "runbook rule")
    for key in ("description", "enabled"):
        if fields.get(key) is not None:
            setattr(rule, key, fields[key])
    if fields.get("runbooks") is not None:
        patterns = fields["runbooks"]
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise InvalidInput("runbooks must be a non-empty list of runbook names or globs")
        rule.runbooks = list(dict.fromkeys(patterns))
    if not rule.runbooks:
        raise InvalidInput("runbooks must be a non-empty list of runbook names or globs")
    _groups_named(actor, fields.get("groups"))


def _groups_named(actor: Actor, names: list[str] | None) -> list[UserGroup] | None:
    """The groups `names` of the actor's org (None: not given); at least one, every one found."""
    if names is None:
        return None
    found = {g.name: g for g in UserGroup.objects.filter(org_id=actor.org_id, name__in=names)}
    missing = sorted(set(names) - set(found))
    if missing:
        raise NotFound(f'user group "{missing[0]}" not found')
    if not found:
        raise InvalidInput("groups must have at least 1 entry")
    return list(found.values())


def _set_groups(rule: RunbookRule, actor: Actor, fields: dict) -> None:
    groups = _groups_named(actor, fields.get("groups"))
    if groups is not None:
        rule.groups.set(groups)
    if not rule.connections.exists() and not rule.attributes.exists():
        raise InvalidInput("either connections or attributes must have at least 1 entry")


RUNBOOK_RULES = crud.register(
    crud.RuleKind(
        name="runbook_rule",
        model=RunbookRule,
        what="runbook rule",
        apply=_apply_rule,
        after_save=_set_groups,
        to_dict=runbook_rule_to_dict,
        related=(*crud.BINDINGS, "groups"),
        created_detail=lambda rule, fields: crud.rule_bindings(rule),
    )
)
runbook_rule_list = RUNBOOK_RULES.list
runbook_rule_get = RUNBOOK_RULES.get
runbook_rule_create = RUNBOOK_RULES.create  # fields: description, enabled, groups, runbooks, bindings
runbook_rule_update = RUNBOOK_RULES.update
runbook_rule_delete = RUNBOOK_RULES.delete
