"""Upstream MCP servers: the per-tool policy, pinned tool contracts and rate limits.

The pipeline (`gateway.pipeline.upstream_*` and `tool_call`) is the only caller of the checks
here; the admin services at the bottom (contracts list/accept) are called by the MCP tools.

The tool policy is the `tools` setting of an `mcp` connection: an ordered list of rules, the
first rule that matches the tool (by name or glob) and applies to the caller (no `groups`, or a
group of theirs) decides. No `tools` setting: every tool is allowed to whoever may use the
connection. A `tools` list that no rule of matches: denied (fail closed).

    {"match": "delete_*", "effect": "deny"}
    {"match": "run_*", "requires_approval": true, "reviewers": ["dba"], "min_approvals": 1}
    {"match": "deploy", "requires_approval": true, "reviewers": ["sre"],
     "approval_when": {"environment": ["prod", "production"]}}
    {"match": ["query", "explain"], "groups": ["engineering"], "requires_approval": false,
     "guardrails": {"deny_words": ["drop"], "regex": ["(?i)password"],
                    "sql": {"read_only": true}, "sql_arguments": ["sql"], "sql_dialect": "postgres"},
     "max_argument_bytes": 10000, "max_result_bytes": 100000,
     "rate_limit": {"calls": 30, "per_seconds": 60}}
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from django.db import IntegrityError, close_old_connections, connections, transaction
from django.db import connection as db_connection
from django.utils import timezone

from gateway import metrics, ratelimit
from gateway.models import Connection, ConnectionKind, ContractKind, ContractStatus, UpstreamTool
from governance import guardrails
from governance.errors import InvalidInput, NotFound
from governance.policy import ROLE_ADMIN, Actor, get_scoped, in_named_groups, require_role
from sessions.audit import audit_record
from sessions.events import UPSTREAM_CONTRACT_CHANGED, emit

MAX_RULES = 100
RULE_KEYS = {
    "match",
    "effect",
    "groups",
    "requires_approval",
    "approval_when",
    "reviewers",
    "min_approvals",
    "guardrails",
    "max_argument_bytes",
    "max_result_bytes",
    "rate_limit",
}
GUARDRAIL_KEYS = {"deny_words", "regex", "sql", "sql_arguments", "sql_dialect"}
MAX_RATE_WINDOW = 86_400


# --- the tool policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolRule:
    index: int
    match: tuple[str, ...]
    effect: str = "allow"
    groups: frozenset[str] = frozenset()
    requires_approval: bool = False
    reviewers: tuple[str, ...] = ()  # groups that approve calls, when requires_approval
    min_approvals: int = 1
    # argument -> the values that make a call need approval (all named arguments must match);
    # empty: every call of the tool needs approval (when requires_approval)
    approval_when: tuple[tuple[str, tuple], ...] = ()
    conditions: dict = field(default_factory=dict)  # normalized input conditions for the engine
    sql_arguments: tuple[str, ...] = ()
    sql_dialect: str = "postgres"
    max_argument_bytes: int | None = None
    max_result_bytes: int | None = None
    rate_calls: int | None = None
    rate_seconds: int | None = None

    def matches(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.match)

    def applies_to(self, actor: Actor) -> bool:
        return not self.groups or in_named_groups(actor, self.groups)

    def needs_approval(self, arguments: dict) -> bool:
        """Whether this call waits for reviewers: `requires_approval`, and, with `approval_when`,
        only when every named argument has one of the listed values (a missing argument does not
        match, so a rule on `environment` lets a call without one through: name a default in
        the upstream's schema or deny such calls with another rule)."""
        if not self.requires_approval:
            return False
        return all(_one_of(arguments.get(name, _MISSING), values) for name, values in self.approval_when)

    @property
    def label(self) -> str:
        return f"tools[{self.index}]"

    def engine_rule(self) -> guardrails.Rule:
        return guardrails.Rule(
            name=f"{self.label} ({','.join(self.match)})", input=self.conditions, output={}
        )


ALLOW_ALL = ToolRule(index=-1, match=("*",))
_MISSING = object()
MAX_APPROVAL_VALUES = 100


def _one_of(value, values: tuple) -> bool:
    # JSON equality: true is not 1, but 1 is 1.0
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values)


def _parse_approval_when(raw, where: str) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(raw, dict) or not raw or len(raw) > 20:
        raise InvalidInput(f"{where}.approval_when must be an object of 1-20 argument conditions")
    parsed = []
    for name, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if (
            not values
            or len(values) > MAX_APPROVAL_VALUES
            or not all(isinstance(v, str | int | float | bool) or v is None for v in values)
        ):
            raise InvalidInput(
                f"{where}.approval_when.{name} must be a value (string, number, boolean, null) or a list "
                f"of 1-{MAX_APPROVAL_VALUES} of them"
            )
        parsed.append((name, tuple(values)))
    return tuple(parsed)


def _positive_int(value, where: str, *, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"{where} must be an integer between 1 and {maximum}")
    return value


def _parse_rule(index: int, raw) -> ToolRule:
    where = f"tools[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object")
    unknown = sorted(set(raw) - RULE_KEYS)
    if unknown:
        raise InvalidInput(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(RULE_KEYS))}")
    match = raw.get("match")
    patterns = [match] if isinstance(match, str) else match
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidInput(f"{where}.match must be a tool name or glob, or a non-empty list of them")
    effect = raw.get("effect", "allow")
    if effect not in ("allow", "deny"):
        raise InvalidInput(f"{where}.effect must be 'allow' or 'deny'")
    groups = raw.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise InvalidInput(f"{where}.groups must be a list of group names")
    approval = raw.get("requires_approval", False)
    if not isinstance(approval, bool):
        raise InvalidInput(f"{where}.requires_approval must be true or false")
    fields: dict = {}
    reviewers = raw.get("reviewers") or []
    if not isinstance(reviewers, list) or not all(isinstance(g, str) and g for g in reviewers):
        raise InvalidInput(f"{where}.reviewers must be a list of group names")
    if approval and not reviewers:
        raise InvalidInput(f"{where}: requires_approval needs reviewers (the groups that approve the calls)")
    if raw.get("approval_when") is not None:
        if not approval:
            raise InvalidInput(f"{where}: approval_when applies with requires_approval: true")
        fields["approval_when"] = _parse_approval_when(raw["approval_when"], where)
    if reviewers:
        fields["reviewers"] = tuple(dict.fromkeys(reviewers))
    if raw.get("min_approvals") is not None:
        fields["min_approvals"] = _positive_int(raw["min_approvals"], f"{where}.min_approvals", maximum=100)
    spec = raw.get("guardrails")
    if spec is not None:
        if not isinstance(spec, dict):
            raise InvalidInput(f"{where}.guardrails must be an object")
        unknown = sorted(set(spec) - GUARDRAIL_KEYS)
        if unknown:
            raise InvalidInput(
                f"{where}.guardrails: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(GUARDRAIL_KEYS))}"
            )
        try:
            conditions = guardrails.validate_conditions(
                {k: spec[k] for k in ("deny_words", "regex", "sql") if k in spec}, direction="input"
            )
        except InvalidInput as exc:
            raise InvalidInput(f"{where}.guardrails: {exc.message}") from None
        sql_arguments = spec.get("sql_arguments") or []
        if not isinstance(sql_arguments, list) or not all(isinstance(a, str) and a for a in sql_arguments):
            raise InvalidInput(f"{where}.guardrails.sql_arguments must be a list of argument names")
        dialect = spec.get("sql_dialect", "postgres")
        if dialect not in set(guardrails.DIALECTS.values()):
            raise InvalidInput(
                f"{where}.guardrails.sql_dialect must be one of: {', '.join(sorted(set(guardrails.DIALECTS.values())))}"
            )
        if (conditions.get("sql") and any(conditions["sql"].values())) and not sql_arguments:
            raise InvalidInput(
                f"{where}.guardrails: sql conditions need sql_arguments (which arguments are SQL)"
            )
        fields.update(conditions=conditions, sql_arguments=tuple(sql_arguments), sql_dialect=dialect)
    for key in ("max_argument_bytes", "max_result_bytes"):
        if raw.get(key) is not None:
            fields[key] = _positive_int(raw[key], f"{where}.{key}", maximum=64 * 1024 * 1024)
    rate = raw.get("rate_limit")
    if rate is not None:
        if not isinstance(rate, dict) or set(rate) != {"calls", "per_seconds"}:
            raise InvalidInput(f"{where}.rate_limit must be an object with 'calls' and 'per_seconds'")
        fields["rate_calls"] = _positive_int(rate["calls"], f"{where}.rate_limit.calls", maximum=1_000_000)
        fields["rate_seconds"] = _positive_int(
            rate["per_seconds"], f"{where}.rate_limit.per_seconds", maximum=MAX_RATE_WINDOW
        )
    return ToolRule(
        index=index,
        match=tuple(patterns),
        effect=effect,
        groups=frozenset(groups),
        requires_approval=approval,
        **fields,
    )


def validate_tool_policy(raw) -> list[ToolRule]:
    """Parse the `tools` setting; raise InvalidInput naming the first problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput("setting 'tools' must be a list of rules")
    if len(raw) > MAX_RULES:
        raise InvalidInput(f"setting 'tools' has {len(raw)} rules; at most {MAX_RULES} are allowed")
    return [_parse_rule(i, rule) for i, rule in enumerate(raw)]


def tool_rule_for(connection: Connection, actor: Actor, tool: str) -> ToolRule | None:
    """The rule deciding `tool` for `actor`, or None when the tool is denied to them."""
    raw = connection.config.get("tools")
    if raw is None:
        return ALLOW_ALL
    for rule in validate_tool_policy(raw):
        if rule.matches(tool) and rule.applies_to(actor):
            return rule if rule.effect == "allow" else None
    return None


def argument_findings(rule: ToolRule, bound_rules: list, arguments: dict, arguments_json: str) -> list:
    """Guardrail findings on a call's arguments: the connection's bound guardrails (deny words and
    regex over the JSON arguments), the tool rule's own conditions, and SQL rules on the
    arguments the rule names as SQL (a missing or non-string SQL argument is a finding: fail closed)."""
    findings = (
        list(guardrails.evaluate_input(bound_rules, arguments_json, dialect=None)) if bound_rules else []
    )
    if rule.conditions:
        engine_rule = rule.engine_rule()
        findings += guardrails.evaluate_input([engine_rule], arguments_json, dialect=None)
        sql = rule.conditions.get("sql") or {}
        if any(sql.values()):
            for name in rule.sql_arguments:
                value = arguments.get(name)
                if value is None:
                    continue
                if not isinstance(value, str):
                    findings.append(
                        guardrails.Finding(
                            engine_rule.name,
                            "input",
                            "sql.parse_error",
                            None,
                            f"argument {name!r} is not a string",
                        )
                    )
                    continue
                findings += guardrails.evaluate_input([engine_rule], value, dialect=rule.sql_dialect)
    return list(dict.fromkeys(findings))


def rate_limit_take(connection: Connection, rule: ToolRule, tool: str) -> str:
    """Count one call against the rule's limit for this tool; '' if allowed, else why not.

    A moving window in Redis (`gateway.ratelimit`, the `limits` library), shared by every replica
    and worker; the process's memory in the embedded default."""
    if not rule.rate_calls:
        return ""

    item = ratelimit.per_seconds(rule.rate_calls, rule.rate_seconds)
    retry = ratelimit.take(item, "upstream_tool", str(connection.pk), f"{rule.label}:{tool}"[:200])
    if retry is None:
        return ""
    metrics.RATE_LIMITED.labels("upstream_tool").inc()
    return (
        f"rate limit: tool {tool!r} allows {rule.rate_calls} call(s) per {rule.rate_seconds}s "
        f"on this connection; retry after {int(retry)}s"
    )


# --- the resource and prompt policies -----------------------------------------------------------
#
# The `resources` and `prompts` settings of an `mcp` connection, in the style of `tools`: an ordered
# list of rules, the first that matches and applies to the caller decides. `resources` rules match
# a resource's URI (a read of a templated resource: the concrete URI; a template in the listing:
# its URI template), `prompts` rules a prompt's name. Without the setting: open when the connection
# has no `tools` policy either, else closed (an admin who restricted the tools did not mean to open
# the rest); a list no rule of which matches: denied (fail closed).
#
#     {"match": "file:///secrets/*", "effect": "deny"}
#     {"match": ["file:///docs/*", "db://tables/{name}"], "groups": ["engineering"], "max_result_bytes": 100000}

NAME_RULE_KEYS = {"match", "effect", "groups", "max_result_bytes"}
NAME_POLICIES = ("resources", "prompts")


@dataclass(frozen=True)
class NameRule:
    setting: str
    index: int
    match: tuple[str, ...]
    effect: str = "allow"
    groups: frozenset[str] = frozenset()
    max_result_bytes: int | None = None

    def matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.match)

    def applies_to(self, actor: Actor) -> bool:
        return not self.groups or in_named_groups(actor, self.groups)

    @property
    def label(self) -> str:
        return f"{self.setting}[{self.index}]"


def _parse_name_rule(setting: str, index: int, raw) -> NameRule:
    where = f"{setting}[{index}]"
    if not isinstance(raw, dict):
        raise InvalidInput(f"{where} must be an object")
    unknown = sorted(set(raw) - NAME_RULE_KEYS)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(NAME_RULE_KEYS))}"
        )
    what = "a resource URI" if setting == "resources" else "a prompt name"
    match = raw.get("match")
    patterns = [match] if isinstance(match, str) else match
    if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise InvalidInput(f"{where}.match must be {what} or glob, or a non-empty list of them")
    effect = raw.get("effect", "allow")
    if effect not in ("allow", "deny"):
        raise InvalidInput(f"{where}.effect must be 'allow' or 'deny'")
    groups = raw.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise InvalidInput(f"{where}.groups must be a list of group names")
    limit = raw.get("max_result_bytes")
    if limit is not None:
        limit = _positive_int(limit, f"{where}.max_result_bytes", maximum=64 * 1024 * 1024)
    return NameRule(setting, index, tuple(patterns), effect, frozenset(groups), limit)


def validate_name_policy(raw, setting: str) -> list[NameRule]:
    """Parse the `resources` or `prompts` setting; raise InvalidInput naming the first problem."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidInput(f"setting {setting!r} must be a list of rules")
    if len(raw) > MAX_RULES:
        raise InvalidInput(f"setting {setting!r} has {len(raw)} rules; at most {MAX_RULES} are allowed")
    return [_parse_name_rule(setting, i, rule) for i, rule in enumerate(raw)]


def name_rule_for(connection: Connection, actor: Actor, setting: str, name: str) -> NameRule | None:
    """The rule allowing `actor` the resource (by URI) or prompt `name`, or None when denied."""
    raw = connection.config.get(setting)
    if raw is None:  # open only where the tools are open too
        return None if connection.config.get("tools") is not None else NameRule(setting, -1, ("*",))
    for rule in validate_name_policy(raw, setting):
        if rule.matches(name) and rule.applies_to(actor):
            return rule if rule.effect == "allow" else None
    return None


# --- pinned contracts --------------------------------------------------------------------------


def tool_contract(tool) -> dict:
    """What is pinned of an upstream tool (an `mcp.types.Tool`): everything an agent reads."""
    return {
        "name": tool.name,
        "title": tool.title,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
        "annotations": tool.annotations.model_dump(mode="json", exclude_none=True)
        if tool.annotations
        else None,
    }


def _annotations(item) -> dict | None:
    return item.annotations.model_dump(mode="json", exclude_none=True) if item.annotations else None


def contract_of(kind: str, item) -> tuple[str, dict]:
    """(name, pinned contract) of an upstream listing entry of `kind`: an `mcp.types.Tool`,
    `Resource` (named by its URI), `ResourceTemplate` (by its URI template) or `Prompt`. What is
    pinned is everything a client reads to decide what to use (not a resource's size)."""
    if kind == ContractKind.TOOL:
        return item.name, tool_contract(item)
    if kind == ContractKind.PROMPT:
        arguments = [a.model_dump(mode="json", exclude_none=True) for a in item.arguments or []]
        return item.name, {
            "name": item.name,
            "title": item.title,
            "description": item.description,
            "arguments": arguments,
        }
    common = {
        "name": item.name,
        "title": item.title,
        "description": item.description,
        "mime_type": item.mime_type,
        "annotations": _annotations(item),
    }
    if kind == ContractKind.TEMPLATE:
        return item.uri_template, {"uri_template": item.uri_template, **common}
    return str(item.uri), {"uri": str(item.uri), **common}


def contract_sha256(contract: dict) -> str:
    canonical = json.dumps(contract, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


LAST_SEEN_EVERY = 60  # seconds between refreshes of last_seen_at on an unchanged listing


def _unchanged(rows: dict, seen: dict) -> bool:
    """True if a listing shows exactly what the rows already record (statuses included)."""
    for name, row in rows.items():
        if name not in seen:
            if row.status != ContractStatus.REMOVED:
                return False
            continue
        digest = seen[name][1]
        if digest != row.observed_sha256:
            return False
        expected = ContractStatus.ACCEPTED if digest == row.pinned_sha256 else row.status
        if row.status != expected or row.status == ContractStatus.REMOVED:
            return False
    return all(name in rows for name in seen)


# The upstream loop (gateway/connectors/mcp_pool.py) compares each listing with the pinned contracts
# on these threads, which keep their database connection between calls (CONN_MAX_AGE) instead of a
# short-lived thread opening one per call.
CONTRACT_THREADS = 4
_CONTRACT_THREADS = ThreadPoolExecutor(
    max_workers=CONTRACT_THREADS, thread_name_prefix="portcullis-contracts"
)


def close_contract_threads() -> None:
    """Close the database connections the contract threads keep, and the threads (tests, before
    the test database is dropped). A later check starts new ones."""
    global _CONTRACT_THREADS
    pool = _CONTRACT_THREADS
    _CONTRACT_THREADS = ThreadPoolExecutor(
        max_workers=CONTRACT_THREADS, thread_name_prefix="portcullis-contracts"
    )
    # A connection belongs to its thread: one closing job per thread, held at a barrier so that no
    # thread takes two and each closes its own.
    barrier = threading.Barrier(CONTRACT_THREADS, timeout=30)

    def close() -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        connections.close_all()

    for _ in range(CONTRACT_THREADS):
        pool.submit(close)
    pool.shutdown(wait=True)


async def contracts_check(
    connection: Connection, listing: list, *, surface: str, kind: str = ContractKind.TOOL
) -> dict[str, UpstreamTool]:
    """`contracts_observe`, awaited from the upstream loop."""
    return await asyncio.get_running_loop().run_in_executor(
        _CONTRACT_THREADS, functools.partial(_contracts_check, connection, listing, surface, kind)
    )


def accepted_pin(connection: Connection, tool: str) -> str:
    """The pinned contract hash of `tool` on `connection` if its contract is accepted, else "":
    read in the trip that records a call, so that a call on a kept listing needs no further
    database read (`matches_pin`)."""
    with db_connection.cursor() as cursor:
        cursor.execute(_PIN_SQL, [connection.pk, ContractKind.TOOL, tool, ContractStatus.ACCEPTED])
        row = cursor.fetchone()
    return row[0] if row else ""


_PIN_SQL = (
    f'SELECT pinned_sha256 FROM "{UpstreamTool._meta.db_table}" '
    "WHERE connection_id = %s AND kind = %s AND name = %s AND status = %s"
)


def matches_pin(listing: list, tool: str, pin: str) -> bool:
    """Whether `tool` is in `listing` exactly as its accepted pinned contract (`accepted_pin`) says:
    the check of a call on a kept listing (gateway/connectors/mcp.py). A kept listing may be older
    than what another call or replica has observed since, so it is never recorded; when it does not
    match, the caller lists afresh and observes that (`contracts_check`)."""
    if not pin:
        return False
    listed = next((t for t in listing if t.name == tool), None)
    return listed is not None and contract_sha256(tool_contract(listed)) == pin


def _contracts_check(
    connection: Connection, listing: list, surface: str, kind: str
) -> dict[str, UpstreamTool]:
    close_old_connections()  # a connection past its age or broken is replaced, a good one kept
    return contracts_observe(connection, listing, surface=surface, kind=kind)


def contracts_observe(
    connection: Connection, tools: list, *, surface: str = "task", kind: str = ContractKind.TOOL
) -> dict[str, UpstreamTool]:
    """`_contracts_observe`; once more when a concurrent first listing pinned them meanwhile (the
    second compares with what it pinned)."""
    try:
        return _contracts_observe(connection, tools, surface=surface, kind=kind)
    except IntegrityError:
        return _contracts_observe(connection, tools, surface=surface, kind=kind)


def _contracts_observe(
    connection: Connection, tools: list, *, surface: str = "task", kind: str = ContractKind.TOOL
) -> dict[str, UpstreamTool]:
    """Compare an upstream listing (of tools, or resources, resource templates or prompts: `kind`)
    with the pinned contracts of that kind and record what changed.

    The first listing of a connection pins every tool (trust on first sight). Later, a new tool is
    `added`, a changed one `changed`, a missing one `removed`; each transition is audited once and
    announced as `upstream.contract_changed` (by the system: the gateway observed it, on the
    `surface` of the request that fetched the listing). Returns the rows by name."""
    now = timezone.now()
    seen = {}
    for tool in tools:
        name, contract = contract_of(kind, tool)
        seen[name] = (contract, contract_sha256(contract))
    # The usual case, nothing changed: one read, no row lock, no write (but a stale last_seen_at).
    current = {row.name: row for row in UpstreamTool.objects.filter(connection=connection, kind=kind)}
    if current and _unchanged(current, seen):
        stale = [r.pk for r in current.values() if (now - r.last_seen_at).total_seconds() > LAST_SEEN_EVERY]
        if stale:
            UpstreamTool.objects.filter(pk__in=stale).update(last_seen_at=now)
        return current
    with transaction.atomic():
        rows = {
            row.name: row
            for row in UpstreamTool.objects.select_for_update().filter(connection=connection, kind=kind)
        }
        first_sight = not rows
        changes = []
        for name, (contract, digest) in seen.items():
            row = rows.get(name)
            if row is None:
                status = ContractStatus.ACCEPTED if first_sight else ContractStatus.ADDED
                row = UpstreamTool.objects.create(
                    connection=connection,
                    kind=kind,
                    name=name,
                    status=status,
                    pinned=contract if first_sight else None,
                    pinned_sha256=digest if first_sight else "",
                    observed=contract,
                    observed_sha256=digest,
                    first_seen_at=now,
                    last_seen_at=now,
                    accepted_at=now if first_sight else None,
                )
                rows[name] = row
                if not first_sight:
                    changes.append((row, "added"))
                continue
            status = (
                ContractStatus.ACCEPTED
                if digest == row.pinned_sha256
                else (ContractStatus.ADDED if not row.pinned_sha256 else ContractStatus.CHANGED)
            )
            if status != row.status or digest != row.observed_sha256:
                if status != ContractStatus.ACCEPTED and digest != row.observed_sha256:
                    changes.append((row, "changed" if row.pinned_sha256 else "added"))
                row.status, row.observed, row.observed_sha256 = status, contract, digest
            row.last_seen_at = now
            row.save(update_fields=["status", "observed", "observed_sha256", "last_seen_at"])
        for name, row in rows.items():
            if name not in seen and row.status != ContractStatus.REMOVED:
                row.status = ContractStatus.REMOVED
                row.save(update_fields=["status"])
                changes.append((row, "removed"))
        if first_sight:
            audit_record(
                actor=None,
                org_id=connection.org_id,
                surface=surface,
                action="upstream.contract_pin",
                target=connection,
                detail={"tools" if kind == ContractKind.TOOL else f"{kind}s": sorted(seen)},
            )
        for row, change in changes:
            detail = {
                "connection": connection.name,
                "tool": row.name,
                "kind": kind,
                "change": change,
                "pinned_sha256": row.pinned_sha256,
                "observed_sha256": row.observed_sha256,
            }
            audit_record(
                actor=None,
                org_id=connection.org_id,
                surface=surface,
                action="upstream.contract_changed",
                target_type="gateway.upstreamtool",
                target_id=str(row.pk),
                target_repr=f"{connection.name}/{row.name}"[:200],
                detail=detail,
            )
            emit(org_id=connection.org_id, type=UPSTREAM_CONTRACT_CHANGED, data=detail)
    return rows


def contract_block_message(
    connection: Connection, row: UpstreamTool | None, tool: str, kind: str = ContractKind.TOOL
) -> str:
    label = {ContractKind.TEMPLATE: "resource template"}.get(kind, kind)
    if row is None or row.status == ContractStatus.REMOVED:
        return f'{label} "{tool}" not found or not accessible on connection "{connection.name}"'
    what = (
        "is new since the contract was pinned"
        if row.status == ContractStatus.ADDED
        else "changed its contract"
    )
    return (
        f'{label} "{tool}" {what} (description or schema); it is blocked until an admin reviews and accepts '
        "the new contract (upstream_contracts_list, upstream_contracts_accept)"
    )


def _connection_for_admin(actor: Actor, connection_name: str) -> Connection:
    require_role(actor, ROLE_ADMIN)
    connection = get_scoped(
        Connection.objects.select_related("org"),
        actor,
        "manage",
        not_found=f'connection "{connection_name}" not found or not accessible',
        name=connection_name,
    )
    if connection.kind != ConnectionKind.MCP:
        raise InvalidInput(f'connection "{connection_name}" is not an mcp connection')
    return connection


def contract_to_dict(row: UpstreamTool) -> dict:
    return {
        "connection_name": row.connection.name,
        "kind": row.kind,
        "tool": row.name,
        "status": row.status,
        "pinned_sha256": row.pinned_sha256 or None,
        "observed_sha256": row.observed_sha256,
        "pinned": row.pinned,
        "observed": row.observed,
        "first_seen_at": row.first_seen_at.isoformat(),
        "last_seen_at": row.last_seen_at.isoformat(),
        "accepted_at": row.accepted_at.isoformat() if row.accepted_at else None,
    }


def _check_kind(kind: str) -> str:
    if kind not in ContractKind.values:
        raise InvalidInput(f"kind must be one of: {', '.join(ContractKind.values)}")
    return kind


def contracts_list(
    *, actor: Actor, connection_name: str, status: str | None = None, kind: str | None = None
) -> list[UpstreamTool]:
    """The pinned contracts of an mcp connection (admin), optionally by status and kind."""
    connection = _connection_for_admin(actor, connection_name)
    qs = UpstreamTool.objects.filter(connection=connection).select_related("connection")
    if kind:
        qs = qs.filter(kind=_check_kind(kind))
    if status:
        if status not in ContractStatus.values:
            raise InvalidInput(f"status must be one of: {', '.join(ContractStatus.values)}")
        qs = qs.filter(status=status)
    return list(qs.order_by("kind", "name"))


def contracts_accept(
    *,
    actor: Actor,
    connection_name: str,
    tools: list[str],
    observed_sha256: dict | None = None,
    kind: str = ContractKind.TOOL,
) -> list[UpstreamTool]:
    """Pin the observed contract of `tools` (admin). `observed_sha256` (tool -> hash), when given,
    must equal what is observed now, so an admin accepts exactly the version they reviewed.
    Raises NotFound for unknown tools, InvalidInput for a hash mismatch or a removed tool."""
    if not tools:
        raise InvalidInput("name at least one tool to accept")
    with transaction.atomic():
        connection = _connection_for_admin(actor, connection_name)
        rows = {
            row.name: row
            for row in UpstreamTool.objects.select_for_update().filter(
                connection=connection, kind=_check_kind(kind), name__in=tools
            )
        }
        missing = [t for t in tools if t not in rows]
        if missing:
            raise NotFound(f'{kind} "{missing[0]}" has no contract on connection "{connection_name}"')
        now = timezone.now()
        for name in tools:
            row = rows[name]
            if row.status == ContractStatus.REMOVED:
                raise InvalidInput(f'tool "{name}" is no longer listed by the upstream; nothing to accept')
            expected = (observed_sha256 or {}).get(name)
            if expected is not None and expected != row.observed_sha256:
                raise InvalidInput(
                    f'tool "{name}" changed again since you reviewed it (observed {row.observed_sha256[:12]}); '
                    "list the contracts again"
                )
            previous = row.pinned_sha256
            row.pinned, row.pinned_sha256 = row.observed, row.observed_sha256
            row.status, row.accepted_at, row.accepted_by = ContractStatus.ACCEPTED, now, actor.user
            row.save(update_fields=["pinned", "pinned_sha256", "status", "accepted_at", "accepted_by"])
            audit_record(
                actor=actor,
                action="upstream.contract_accept",
                target_type="gateway.upstreamtool",
                target_id=str(row.pk),
                target_repr=f"{connection.name}/{name}"[:200],
                detail={"previous_sha256": previous, "pinned_sha256": row.pinned_sha256},
            )
    return [rows[name] for name in tools]
