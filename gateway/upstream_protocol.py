"""The rest of an upstream MCP server's protocol, with the same policy as its tools: resources,
resource templates, prompts and completions (`/api/mcp/c/<connection>`, docs/upstream-mcp.md).

    list  -> authorize -> upstream listing -> pin / compare the contracts -> what the caller may use
    read resource | get prompt
          -> authorize -> the `resources` / `prompts` policy (allow/deny per group) -> argument
             guardrails (prompts) -> record the session (masked arguments) -> in the runner's pool:
             list, check the pinned contract, read / get -> size limit -> output guardrails -> mask
             every text -> finish the record (sessions.lifecycle) -> analysis
    complete -> authorize -> the policy of the prompt or template it refers to -> its pinned
             contract -> complete -> mask the values (no session: a completion is a keystroke)

The upstream exchanges run on the upstream loop (`gateway.pipeline.upstream_connector`, pooled
sessions), like tool calls; this module reaches the connectors only through the pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from channels.db import database_sync_to_async as db
from django.conf import settings
from django.db import close_old_connections, transaction
from mcp.types import PromptReference, ResourceTemplateReference

from gateway import pipeline, runner, upstream
from gateway.models import Connection, ContractKind, ContractStatus
from governance import rules as rules_service
from governance.errors import ConnectorError, InvalidInput, NotFound, PolicyDenied
from governance.policy import Actor
from sessions import lifecycle
from sessions.audit import Outcome, audit_record
from sessions.models import Session, SessionStatus, Verb

logger = logging.getLogger("portcullis.pipeline")

MAX_URI = 1024
MAX_LIST_PAGES = 20
MAX_PROMPT_ARGUMENTS = 100
_SETTING: dict[str, str] = {
    ContractKind.RESOURCE: "resources",
    ContractKind.TEMPLATE: "resources",
    ContractKind.PROMPT: "prompts",
}
_LABEL: dict[str, str] = {
    ContractKind.RESOURCE: "resource",
    ContractKind.TEMPLATE: "resource template",
    ContractKind.PROMPT: "prompt",
}
_CAPABILITY: dict[str, str] = {
    ContractKind.RESOURCE: "resources",
    ContractKind.TEMPLATE: "resources",
    ContractKind.PROMPT: "prompts",
}


def not_found(connection_name: str, kind: str, name: str) -> str:
    # One answer for "no such thing", "denied to you" and "removed": existence never leaks.
    return f'{_LABEL[kind]} "{name}" not found or not accessible on connection "{connection_name}"'


# --- upstream listings ----------------------------------------------------------------------------


async def list_upstream(client, kind: str) -> list:
    """Every page of the upstream's listing of `kind` (none when it does not offer them). The
    client's response cache is bypassed: the contract check must see what the upstream says now."""
    capabilities = client.server_capabilities
    if getattr(capabilities, _CAPABILITY[kind], None) is None:
        return []
    items: list = []
    cursor = None
    for _ in range(MAX_LIST_PAGES):
        if kind == ContractKind.RESOURCE:
            page = await client.list_resources(cursor=cursor, cache_mode="bypass")
            items.extend(page.resources)
        elif kind == ContractKind.TEMPLATE:
            page = await client.list_resource_templates(cursor=cursor, cache_mode="bypass")
            items.extend(page.resource_templates)
        else:
            page = await client.list_prompts(cursor=cursor, cache_mode="bypass")
            items.extend(page.prompts)
        cursor = page.next_cursor
        if not cursor:
            break
    return items


def _actor_caller(actor: Actor, connection: Connection):
    """Who the upstream sees calling, for a `gateway_jwt` connection (None otherwise)."""
    if "gateway_jwt" not in connection.config:
        return None
    return pipeline.upstream_caller(actor.user, actor.groups)


async def _exchange(connection: Connection, limits, body: Callable[[Any], Awaitable[Any]], caller=None):
    """Run `body(client)` on a (pooled) upstream session within the connection's deadline, on the
    upstream loop, as `caller`; every failure becomes a clear, secret-free ConnectorError."""
    connector = pipeline.upstream_connector(connection, limits, caller)

    async def run():
        with anyio.fail_after(limits.timeout_seconds):
            async with connector.session() as client:
                return await body(client)

    try:
        return await asyncio.wrap_future(connector.submit(run()))
    except Exception as exc:
        raise ConnectorError(connector.describe_failure(exc)) from None


async def items_list(*, actor: Actor, connection_name: str, kind: str) -> list[dict]:
    """The upstream resources, resource templates or prompts (`kind`) `actor` may use now, as their
    pinned contracts: allowed by the connection's policy and with an accepted contract. Fetching
    the listing pins or compares the contracts (a drifted item drops out until an admin accepts it).
    Raises NotFound/PolicyDenied (audited) for the connection, ConnectorError when the upstream fails."""
    connection = await db(
        lambda: pipeline.upstream_connection(actor=actor, connection_name=connection_name)
    )()

    async def listing(client):
        items = await list_upstream(client, kind)
        return await upstream.contracts_check(connection, items, surface=actor.surface, kind=kind)

    caller = await db(lambda: _actor_caller(actor, connection))()
    rows = await _exchange(connection, pipeline.limits_for(connection), listing, caller)
    visible = []
    for name in sorted(rows):
        row = rows[name]
        if row.status == ContractStatus.ACCEPTED and upstream.name_rule_for(
            connection, actor, _SETTING[kind], name
        ):
            visible.append(row.pinned)
    return visible


# --- URI templates (RFC 6570, as far as matching a concrete URI needs) --------------------------------

_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def template_regex(template: str) -> re.Pattern:
    """A regex matching the URIs `template` expands to: a simple `{var}` stands for one path
    segment, `{+var}`/`{#var}` for anything, `{/var}`, `{.var}`, `{;var}` for optional segments of
    their kind, `{?a,b}`/`{&a}` for an optional query."""
    out, last = [], 0
    for m in _EXPRESSION.finditer(template):
        out.append(re.escape(template[last : m.start()]))
        operator = m.group(1)
        out.append(
            {
                "": r"[^/?#]+",
                "+": r".*",
                "#": r"(?:#.*)?",
                "/": r"(?:/[^?#]*)?",
                ".": r"(?:\.[^/?#]*)?",
                ";": r"(?:;[^/?#]*)?",
                "?": r"(?:\?[^#]*)?",
                "&": r"(?:&[^#]*)?",
            }[operator]
        )
        last = m.end()
    out.append(re.escape(template[last:]))
    return re.compile("".join(out), re.DOTALL)


def template_for(uri: str, rows: dict):
    """The template row (any status) whose URI template matches `uri`: an accepted one first."""
    matching = [row for name, row in sorted(rows.items()) if template_regex(name).fullmatch(uri)]
    accepted = [row for row in matching if row.status == ContractStatus.ACCEPTED]
    return (accepted or matching or [None])[0]


# --- masking and text of results ----------------------------------------------------------------------

_BLOB_WITHHELD = (
    "[portcullis: binary resource content withheld: masking rules apply to this connection "
    "and binary content cannot be checked]"
)


def _mask_contents(masker, result: dict) -> tuple[dict, dict]:
    counts: dict = {}
    contents = []
    for item in result.get("contents") or []:
        if "text" in item:
            text, c = masker.mask_text(item.get("text") or "")
            for key, value in c.items():
                counts[key] = counts.get(key, 0) + value
            contents.append({**item, "text": text})
        else:
            contents.append({"uri": item.get("uri"), "mimeType": "text/plain", "text": _BLOB_WITHHELD})
    return {**result, "contents": contents}, counts


def _mask_prompt(masker, result: dict) -> tuple[dict, dict]:
    counts: dict = {}

    def add(more):
        for key, value in more.items():
            counts[key] = counts.get(key, 0) + value

    out = dict(result)
    if result.get("description"):
        out["description"], c = masker.mask_text(result["description"])
        add(c)
    messages = []
    for message in result.get("messages") or []:
        masked, c = pipeline.mask_tool_result(masker, {"content": [message.get("content") or {}]})
        add(c)
        messages.append({**message, "content": masked["content"][0]})
    out["messages"] = messages
    return out, counts


def result_text(kind: str, result: dict) -> str:
    """The text of a read or prompt (the session's output; what output guardrails check)."""
    if kind == ContractKind.RESOURCE:
        return "\n".join(item.get("text") or "" for item in result.get("contents") or [] if item.get("text"))
    parts = [result.get("description") or ""]
    parts += [pipeline.tool_text({"content": [m.get("content") or {}]}) for m in result.get("messages") or []]
    return "\n".join(p for p in parts if p)


# --- reads and prompt gets: recorded sessions ------------------------------------------------------------


@dataclasses.dataclass
class _Call:
    kind: str  # resource | prompt
    name: str  # the URI or the prompt's name
    arguments: dict
    limits: Any
    verb: str

    @property
    def setting(self) -> str:
        return _SETTING[self.kind]


def _prepare(actor: Actor, connection_name: str, call: _Call) -> tuple[Session, Connection]:
    """Authorize, apply the policy and guardrails, and record the session (final when refused)."""
    connection = pipeline.upstream_connection(actor=actor, connection_name=connection_name)
    rule = upstream.name_rule_for(connection, actor, call.setting, call.name)
    if rule is None:
        audit_record(
            actor=actor,
            action=f"{call.kind}.request",
            outcome=Outcome.DENIED,
            target=connection,
            detail={
                call.kind: call.name[:MAX_URI],
                "reason": f"denied by the connection's {call.setting} policy",
            },
        )
        raise NotFound(not_found(connection.name, call.kind, call.name))
    limit = min(rule.max_result_bytes or connection.max_output_bytes, connection.max_output_bytes)
    call.limits = dataclasses.replace(pipeline.limits_for(connection), max_output_bytes=limit)
    arguments_json = pipeline.canonical(call.arguments)
    findings, error, outcome, masking_info = [], "", Outcome.SUCCESS, {}
    stored: dict = call.arguments
    try:
        bound = rules_service.bound_rules(connection)
        if call.arguments:
            findings = upstream.argument_findings(
                upstream.ALLOW_ALL, bound.guardrails, call.arguments, arguments_json
            )
            if bound.masker.active:
                masked, counts = bound.masker.mask_json(call.arguments)
                stored = masked if isinstance(masked, dict) else {}
                masking_info = {"input_counts": dict(counts)} if counts else {}
    except Exception:  # fail closed, and keep the record (without the unchecked arguments)
        logger.exception("checking a %s on connection %s failed", call.kind, connection.pk)
        error, outcome = (
            "the rules bound to this connection could not be evaluated, so nothing ran",
            Outcome.FAILED,
        )
        stored = {"[withheld]": "the arguments could not be masked"}
    if not error and len(arguments_json.encode()) > settings.MAX_INPUT_BYTES:
        error, outcome = f"the arguments are larger than {settings.MAX_INPUT_BYTES} bytes", Outcome.INVALID
    elif not error and findings:
        error, outcome = pipeline.block_message(connection, findings), Outcome.BLOCKED
    elif not error and runner.busy():
        error, outcome = "the gateway is at capacity; try again shortly", Outcome.FAILED
    what = {call.kind: call.name}
    exact = pipeline.canonical(
        {**what, "arguments": call.arguments} if call.kind == ContractKind.PROMPT else what
    )
    stored_input = pipeline.canonical(
        {**what, "arguments": stored} if call.kind == ContractKind.PROMPT else what
    )
    session = pipeline.new_session(
        actor, connection, call.verb, exact, stored_input, metadata=what, masking=masking_info
    )
    if error:
        status = SessionStatus.BLOCKED if outcome == Outcome.BLOCKED else SessionStatus.FAILED
        session.error = error
        session.guardrail_findings = [f.as_dict() for f in findings]
    else:
        status = SessionStatus.OPEN
    with transaction.atomic():
        lifecycle.record(
            session,
            status=status,
            actor=actor,
            action=f"{call.kind}.request",
            outcome=outcome,
            lease=float(settings.SESSION_DISPATCH_LEASE_SECONDS) if status == SessionStatus.OPEN else None,
            detail={
                "connection": connection.name,
                call.kind: call.name,
                "input_sha256": session.input_sha256,
                **({"blocked_by": sorted({f.rule for f in findings})} if findings else {}),
            },
        )
    return session, connection


async def _resource_exchange(
    client, connection: Connection, call: _Call, surface: str, outcome: dict
) -> None:
    """List the resources (and, for a URI not listed, the templates), check the pinned contract of
    the resource or of the template it comes from, then read."""
    uri = call.name
    listing = await list_upstream(client, ContractKind.RESOURCE)
    rows = await upstream.contracts_check(connection, listing, surface=surface, kind=ContractKind.RESOURCE)
    row, kind, name = rows.get(uri), ContractKind.RESOURCE, uri
    if row is None or row.status == ContractStatus.REMOVED:
        templates = await list_upstream(client, ContractKind.TEMPLATE)
        trows = await upstream.contracts_check(
            connection, templates, surface=surface, kind=ContractKind.TEMPLATE
        )
        row = template_for(uri, {n: r for n, r in trows.items() if r.status != ContractStatus.REMOVED})
        if row is not None:
            kind, name = ContractKind.TEMPLATE, row.name
    if row is None or row.status != ContractStatus.ACCEPTED:
        outcome["blocked"] = upstream.contract_block_message(connection, row, name, kind)
        return
    answer = await client.read_resource(uri, cache_mode="bypass")
    outcome["result"] = answer.model_dump(mode="json", by_alias=True, exclude_none=True)


async def _prompt_exchange(client, connection: Connection, call: _Call, surface: str, outcome: dict) -> None:
    listing = await list_upstream(client, ContractKind.PROMPT)
    rows = await upstream.contracts_check(connection, listing, surface=surface, kind=ContractKind.PROMPT)
    row = rows.get(call.name)
    if row is None or row.status != ContractStatus.ACCEPTED:
        outcome["blocked"] = upstream.contract_block_message(connection, row, call.name, ContractKind.PROMPT)
        return
    answer = await client.get_prompt(call.name, call.arguments or None)
    outcome["result"] = answer.model_dump(mode="json", by_alias=True, exclude_none=True)


def _run(session_id, connection: Connection, call: _Call, surface: str):
    """Pool-thread body: claim the session, talk to the upstream, finish the record. Whatever goes
    wrong, the session does not stay open."""
    exchange = _resource_exchange if call.kind == ContractKind.RESOURCE else _prompt_exchange
    try:
        close_old_connections()
        if not lifecycle.claim(session_id, runner=runner.runner_id()):
            return None  # cancelled while queued
        caller = pipeline.session_caller(session_id, connection)
        connector = pipeline.upstream_connector(connection, call.limits, caller)
        started = time.monotonic()
        try:
            outcome = connector.submit(
                pipeline.cancellable_exchange(
                    session_id,
                    connector,
                    call.limits,
                    lambda client, out: exchange(client, connection, call, surface, out),
                )
            ).result()
        except Exception as exc:  # down, slow, protocol error, oversize: a clear message, recorded
            outcome = {"result": None, "error": connector.describe_failure(exc), "blocked": ""}
        return _finish(
            session_id, connection, call, elapsed_ms=int((time.monotonic() - started) * 1000), **outcome
        )
    except Exception:
        logger.exception("%s session %s failed before finishing its record", call.kind, session_id)
        pipeline.finish_with_retry(
            session_id,
            lambda s: SessionStatus.FAILED,
            {"error": "internal error while talking to the upstream; the gateway log has details"},
            action=f"{call.kind}.finish",
            outcome=Outcome.FAILED,
            detail={"status": "failed"},
        )
        return None


def _finish(
    session_id,
    connection: Connection,
    call: _Call,
    *,
    result: dict | None,
    error: str,
    blocked: str,
    elapsed_ms: int,
) -> Session:
    return pipeline.upstream_finish(
        session_id,
        connection=connection,
        max_bytes=call.limits.max_output_bytes,
        subject=f"{_LABEL[call.kind]} {call.name!r}",
        result=result,
        error=error,
        blocked=blocked,
        elapsed_ms=elapsed_ms,
        text_of=functools.partial(result_text, call.kind),
        mask=_mask_contents if call.kind == ContractKind.RESOURCE else _mask_prompt,
        action=f"{call.kind}.finish",
        detail={call.kind: call.name[:MAX_URI]},
    )


async def _recorded(actor: Actor, connection_name: str, call: _Call) -> Session:
    session, connection = await db(lambda: _prepare(actor, connection_name, call))()
    if session.is_final:
        return session
    surface = actor.surface

    def dispatch():  # the runner beats its heartbeat in the database: not from the event loop
        return runner.submit(
            str(session.pk),
            lambda: _run(session.pk, connection, call, surface),
            timeout_seconds=call.limits.timeout_seconds,
        )

    return await pipeline.job_session(await db(dispatch)(), session.pk)


async def resource_read(*, actor: Actor, connection_name: str, uri: str) -> Session:
    """Read one upstream resource through the policy path; returns the final session (`result` is the
    masked wire-format ReadResourceResult when done). Raises NotFound (audited) when the resource is
    denied to the actor (the same answer as for a missing one), InvalidInput for a malformed URI."""
    if not isinstance(uri, str) or not uri or len(uri) > MAX_URI:
        raise InvalidInput(f"uri must be a resource URI of 1-{MAX_URI} characters")
    call = _Call(ContractKind.RESOURCE, uri, {}, None, Verb.RESOURCE)
    return await _recorded(actor, connection_name, call)


async def prompt_get(
    *, actor: Actor, connection_name: str, name: str, arguments: dict | None = None
) -> Session:
    """Get one upstream prompt through the policy path (argument guardrails, masking, a session)."""
    if not isinstance(name, str) or not name or len(name) > 256:
        raise InvalidInput("name must be a prompt name of 1-256 characters")
    arguments = arguments or {}
    if (
        not isinstance(arguments, dict)
        or len(arguments) > MAX_PROMPT_ARGUMENTS
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in arguments.items())
    ):
        raise InvalidInput(f"arguments must be an object of at most {MAX_PROMPT_ARGUMENTS} string values")
    call = _Call(ContractKind.PROMPT, name, dict(arguments), None, Verb.PROMPT)
    return await _recorded(actor, connection_name, call)


def refusal(session: Session) -> str | None:
    """Why a read or prompt session gave no result (None when it is done)."""
    if session.status == SessionStatus.DONE and isinstance(session.result, dict):
        return None
    labels: dict[str, str] = {SessionStatus.BLOCKED: "blocked", SessionStatus.CANCELLED: "cancelled"}
    label = labels.get(session.status, "failed")
    return f"[{label}] {session.error or 'the upstream gave no result'}"


# --- completions -----------------------------------------------------------------------------------


async def complete(
    *, actor: Actor, connection_name: str, ref: dict, argument: dict, context_arguments: dict | None = None
) -> dict:
    """Completion values for an argument of an upstream prompt (`ref` {"type": "ref/prompt", "name"})
    or resource template (`ref` {"type": "ref/resource", "uri": the URI template}), when the caller
    may use that prompt or template and its contract is accepted; the values masked. Returns the
    wire-format completion ({"values", "total"?, "hasMore"?})."""
    if ref.get("type") == "ref/prompt":
        kind, name = ContractKind.PROMPT, ref.get("name")
    elif ref.get("type") == "ref/resource":
        kind, name = ContractKind.TEMPLATE, ref.get("uri")
    else:
        raise InvalidInput("ref must be a ref/prompt or a ref/resource")
    if not isinstance(name, str) or not name or len(name) > MAX_URI:
        raise InvalidInput("ref names no prompt or resource template")

    def authorize() -> Connection:
        connection = pipeline.upstream_connection(actor=actor, connection_name=connection_name)
        if upstream.name_rule_for(connection, actor, _SETTING[kind], name) is None:
            audit_record(
                actor=actor,
                action="completion.request",
                outcome=Outcome.DENIED,
                target=connection,
                detail={
                    _LABEL[kind]: name[:MAX_URI],
                    "reason": f"denied by the connection's {_SETTING[kind]} policy",
                },
            )
            raise NotFound(not_found(connection.name, kind, name))
        return connection

    connection = await db(authorize)()

    async def body(client):
        listing = await list_upstream(client, kind)
        rows = await upstream.contracts_check(connection, listing, surface=actor.surface, kind=kind)
        row = rows.get(name)
        if row is None or row.status != ContractStatus.ACCEPTED:
            return {"blocked": upstream.contract_block_message(connection, row, name, kind)}
        reference = (
            PromptReference(name=name) if kind == ContractKind.PROMPT else ResourceTemplateReference(uri=name)
        )
        answer = await client.complete(reference, argument, context_arguments)
        return {"completion": answer.completion.model_dump(mode="json", by_alias=True, exclude_none=True)}

    caller = await db(lambda: _actor_caller(actor, connection))()
    answer = await _exchange(connection, pipeline.limits_for(connection), body, caller)
    if "blocked" in answer:
        raise PolicyDenied(answer["blocked"])
    completion = answer["completion"]

    def mask() -> dict:
        bound = rules_service.bound_rules(connection)
        if not bound.masker.active:
            return completion
        values = [bound.masker.mask_text(v)[0] for v in completion.get("values") or [] if isinstance(v, str)]
        return {**completion, "values": values}

    return await db(mask)()


# --- list_changed: the upstream announced a change, so the contracts are checked now -----------------

_CHECKING: dict[tuple, bool] = {}  # (connection, kinds) -> announced again while being checked


def _on_list_changed(connection: Connection, connector, kinds: frozenset[str]) -> None:
    """Called on the upstream loop by a session that heard `notifications/*/list_changed` (or a
    `subscriptions/listen` event): list those kinds again and compare them with the pinned
    contracts, as the system, without waiting for the next call. One check at a time per
    connection and kinds; an announcement during a check runs it once more."""
    key = (connection.pk, kinds)
    if key in _CHECKING:
        _CHECKING[key] = True
        return
    _CHECKING[key] = False
    asyncio.get_running_loop().create_task(_check(connection, connector, kinds, key))


async def _check(connection: Connection, connector, kinds: frozenset[str], key: tuple) -> None:
    try:
        while True:
            try:
                with anyio.fail_after(connector.limits.timeout_seconds):
                    async with connector.session() as client:
                        for kind in sorted(kinds):
                            if kind == ContractKind.TOOL:
                                items = await connector.list_tools(client)
                            else:
                                items = await list_upstream(client, kind)
                            await upstream.contracts_check(connection, items, surface="task", kind=kind)
            except Exception:  # the next call checks the contracts anyway
                logger.warning(
                    "checking the contracts of connection %s after its announcement failed",
                    connection.pk,
                    exc_info=True,
                )
            if not _CHECKING.get(key):
                return
            _CHECKING[key] = False
    finally:
        _CHECKING.pop(key, None)


pipeline.set_list_changed_hook(_on_list_changed)
