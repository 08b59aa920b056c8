"""Upstream MCP tools (connection kind "mcp"):

  authorize -> tool policy (allow/deny per group) -> argument guardrails -> [approval] ->
  rate limit -> record the session (masked arguments first) -> upstream: list tools, check the
  pinned contract, call -> size limit -> output guardrails -> mask every content block and the
  structured content -> finish the record -> enqueue analysis -> envelope

`upstream_finish` is the one end of every upstream exchange (tool calls here, resource reads and
prompt gets in `gateway.upstream_protocol`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

from django.conf import settings
from django.db import close_old_connections, transaction

from gateway import runner, upstream
from gateway.connectors import REGISTRY, Limits
from gateway.connectors.base import cap_text
from gateway.models import Connection, ContractStatus
from gateway.pipeline import dispatch
from gateway.pipeline.common import (
    block_message,
    idempotent_replay,
    limits_for,
    new_session,
    refuse_agent_connection,
)
from gateway.upstream_identity import Caller
from governance import guardrails
from governance import rules as rules_service
from governance.access import authorize
from governance.errors import ConnectorError, InvalidInput, NotFound, PolicyDenied
from governance.models import UserGroup
from governance.policy import Actor
from reviews import services as review_services
from sessions import idempotency, lifecycle
from sessions.audit import Outcome, audit_record
from sessions.models import Session, SessionStatus, Verb
from sessions.wakeup import wait_for_final

logger = logging.getLogger("portcullis.pipeline")


def _tool_not_found(connection_name: str, tool: str) -> str:
    # One answer for "no such tool", "denied to you" and "removed": existence never leaks.
    return f'tool "{tool}" not found or not accessible on connection "{connection_name}"'


def upstream_connection(*, actor: Actor, connection_name: str) -> Connection:
    """The mcp connection `actor` may call tools on; raises NotFound/PolicyDenied (audited) or
    InvalidInput (not an mcp connection, or one on an agent queue)."""
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    if connection.kind != "mcp":
        raise InvalidInput(f'connection "{connection_name}" is not an mcp connection')
    if actor.read_only:
        raise PolicyDenied("a read-only token cannot call upstream tools")
    refuse_agent_connection(connection, "calling upstream tools")
    return connection


def canonical(value) -> str:
    """The canonical JSON of `value` (sorted keys, no spaces): what is hashed, stored and compared."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# (connection, connector, kinds) -> None: what an upstream's list_changed announcement triggers
# (`gateway.upstream_protocol` registers its contract check; called on the upstream loop).
_LIST_CHANGED_HOOK = None


def set_list_changed_hook(hook) -> None:
    global _LIST_CHANGED_HOOK
    _LIST_CHANGED_HOOK = hook


def upstream_connector(connection: Connection, limits: Limits, caller=None):
    """The connector of an mcp connection, with its pooled upstream sessions (`mcp_pool`), calling
    as `caller` (an `upstream_identity.Caller`, for a `gateway_jwt` connection)."""
    connector = REGISTRY[connection.kind](
        connection.config,
        connection.get_secrets(),
        limits,
        pool_scope=str(connection.pk),
        caller=caller,
        connection_name=connection.name,
    )
    hook = _LIST_CHANGED_HOOK
    if hook is not None:  # the upstream's announcements trigger a contract check
        setattr(connector, "on_list_changed", lambda kinds: hook(connection, connector, kinds))  # noqa: B010
    return connector


def upstream_caller(user, groups, *, session_id=None):
    """Who an upstream sees calling (gateway/upstream_identity.py): the user, their groups, org and
    the session of the call. `user` with its org loaded."""
    return Caller(
        user_id=str(user.pk),
        email=user.email,
        name=user.name,
        groups=tuple(sorted(groups)),
        org_id=str(user.org_id),
        org_name=user.org.name,
        session_id=str(session_id) if session_id else None,
    )


def session_caller(session_id, connection: Connection):
    """The caller of a recorded tool session, for a `gateway_jwt` connection (None otherwise)."""
    if "gateway_jwt" not in connection.config:
        return None
    session = Session.objects.select_related("user__org").get(pk=session_id)
    if session.user is None:
        return None
    groups = UserGroup.objects.filter(members=session.user).values_list("name", flat=True)
    return upstream_caller(session.user, list(groups), session_id=session.pk)


async def _upstream_listing(connection: Connection, limits: Limits, caller=None):
    """(connector, the upstream's tools) within the connection's time limit; ConnectorError else.
    The exchange runs on the upstream loop, where the pooled sessions live."""
    import asyncio

    import anyio

    connector = upstream_connector(connection, limits, caller)

    async def listing():
        with anyio.fail_after(limits.timeout_seconds):
            async with connector.session() as client:
                return await connector.list_tools(client)

    try:
        return connector, await asyncio.wrap_future(connector.submit(listing()))
    except Exception as exc:  # every failure is a clear, secret-free message
        raise ConnectorError(connector.describe_failure(exc)) from None


async def upstream_tools_list(*, actor: Actor, connection_name: str) -> list[dict]:
    """The upstream tools `actor` may call now, with their pinned contracts: allowed to them by the
    tool policy and with an accepted contract. Fetching the listing also pins or compares the
    contracts (a drifted tool drops out of this list until an admin accepts it).

    Raises NotFound/PolicyDenied (audited) for the connection, ConnectorError when the upstream fails."""
    from channels.db import database_sync_to_async as db

    connection = await db(lambda: upstream_connection(actor=actor, connection_name=connection_name))()
    caller = (
        await db(lambda: upstream_caller(actor.user, actor.groups))()
        if "gateway_jwt" in connection.config
        else None
    )
    _, tools = await _upstream_listing(connection, limits_for(connection), caller)
    rows = await db(lambda: upstream.contracts_observe(connection, tools, surface=actor.surface))()
    visible = []
    for name in sorted(rows):
        row = rows[name]
        if row.status != ContractStatus.ACCEPTED:
            continue
        rule = upstream.tool_rule_for(connection, actor, name)
        if rule is None:
            continue
        visible.append({**row.pinned, "requires_approval": rule.requires_approval})
    return visible


def _tool_prepare(*, actor: Actor, connection_name: str, tool: str, arguments: dict, idem=(None, None)):
    """Everything before the upstream is reached; returns (session, connection, limits).
    The session is already final when the call was refused (blocked, rate-limited, invalid)."""

    if not isinstance(tool, str) or not tool or len(tool) > 128:
        raise InvalidInput("tool must be a tool name of 1-128 characters")
    if not isinstance(arguments, dict):
        raise InvalidInput("arguments must be an object")
    connection = upstream_connection(actor=actor, connection_name=connection_name)
    rule = upstream.tool_rule_for(connection, actor, tool)
    if rule is None:
        audit_record(
            actor=actor,
            action="tool.request",
            outcome=Outcome.DENIED,
            target=connection,
            detail={"tool": tool[:128], "reason": "denied by the connection's tool policy"},
        )
        raise NotFound(_tool_not_found(connection.name, tool))
    arguments_json = canonical(arguments)
    size = len(arguments_json.encode())
    max_arguments = min(rule.max_argument_bytes or settings.MAX_INPUT_BYTES, settings.MAX_INPUT_BYTES)
    max_result = min(rule.max_result_bytes or connection.max_output_bytes, connection.max_output_bytes)
    limits = dataclasses.replace(limits_for(connection), max_output_bytes=max_result)

    approval = rule.needs_approval(arguments)
    findings, error, outcome, stored_arguments, masking_info = [], "", Outcome.SUCCESS, None, {}
    try:
        bound = rules_service.bound_rules(connection)
        if size <= max_arguments:
            findings = upstream.argument_findings(rule, bound.guardrails, arguments, arguments_json)
        stored_arguments, counts = (
            bound.masker.mask_json(arguments) if bound.masker.active else (arguments, {})
        )
        if counts:
            masking_info = {"input_counts": dict(counts)}
    except Exception:  # fail closed, and keep the record (without the unchecked arguments)
        logger.exception("checking a tool call on connection %s failed", connection.pk)
        error, outcome = (
            "the rules bound to this connection could not be evaluated, so nothing ran",
            Outcome.FAILED,
        )
        stored_arguments = {"[withheld]": "the arguments could not be masked"}
    if not error and size > max_arguments:
        error, outcome = (
            f"the arguments are {size} bytes; tool {tool!r} accepts at most {max_arguments} bytes",
            Outcome.INVALID,
        )
    elif not error and findings:
        error, outcome = block_message(connection, findings), Outcome.BLOCKED
    elif not error and approval:
        pass  # recorded below as pending_review, with a review of the exact call
    elif not error and runner.busy():
        error, outcome = "the gateway is at capacity; try again shortly", Outcome.FAILED
    elif not error:
        error = upstream.rate_limit_take(connection, rule, tool)
        outcome = Outcome.DENIED if error else Outcome.SUCCESS

    stored = canonical({"tool": tool, "arguments": stored_arguments})
    exact = canonical({"tool": tool, "arguments": arguments})
    reviewer_groups = []
    if not error and approval:
        reviewer_groups = list(UserGroup.objects.filter(org_id=actor.org_id, name__in=rule.reviewers))
        if not reviewer_groups:  # nobody could ever approve it
            error, outcome = (
                f"tool {tool!r} requires approval, but none of its reviewer groups exists",
                Outcome.DENIED,
            )
    session = new_session(
        actor, connection, Verb.TOOL, exact, stored, metadata={"tool": tool}, masking=masking_info
    )
    if error:
        status = (
            SessionStatus.BLOCKED if outcome in (Outcome.BLOCKED, Outcome.DENIED) else SessionStatus.FAILED
        )
        session.error = error
        session.guardrail_findings = [f.as_dict() for f in findings]
    else:
        status = SessionStatus.PENDING_REVIEW if reviewer_groups else SessionStatus.OPEN
        if status == SessionStatus.OPEN and runner.has_idle_worker():  # starts at once: one commit
            status = SessionStatus.RUNNING
    key, request = idem
    with transaction.atomic():
        if status == SessionStatus.PENDING_REVIEW:
            joined = _tool_join_review(actor, connection, session, tool)
            if joined is not None:
                idempotency.remember(
                    user=actor.user, key=key, operation="upstream_call", request=request, session=joined
                )
                return joined, connection, limits
        lifecycle.record(
            session,
            status=status,
            actor=actor,
            action="tool.request",
            outcome=outcome,
            # An upstream call cannot be resumed by another process (its exact arguments live only in
            # this request): the lease lets the sweep end it if this process dies before it ran, or
            # (recorded running for this runner) while it runs.
            lease=(
                float(settings.SESSION_DISPATCH_LEASE_SECONDS)
                if status == SessionStatus.OPEN
                else lifecycle.lease_seconds()
                if status == SessionStatus.RUNNING
                else None
            ),
            detail={
                "connection": connection.name,
                "tool": tool,
                "arguments_bytes": size,
                "input_sha256": session.input_sha256,
                **({"blocked_by": sorted({f.rule for f in findings})} if findings else {}),
            },
        )
        idempotency.remember(
            user=actor.user, key=key, operation="upstream_call", request=request, session=session
        )
        if status == SessionStatus.PENDING_REVIEW:
            session.pending_review = review_services.review_open(
                actor=actor,
                session=session,
                connection=connection,
                reviewer_groups=reviewer_groups,
                min_approvals=rule.min_approvals,
                input=exact,
            )
    return session, connection, limits


def _tool_join_review(actor: Actor, connection: Connection, session: Session, tool: str) -> Session | None:
    """The session of an identical earlier call (same requester, connection, tool and canonical
    arguments) whose review may still lead to a run: pending, approved, or approved and running.
    A retry by a client that knows nothing of reviews joins it instead of opening another review.
    Identical calls are serialized on the connection's row, so two at once open one review."""
    Connection.objects.select_for_update().filter(pk=connection.pk).first()  # until the caller commits
    review = review_services.review_find_identical(
        actor=actor, connection=connection, input_sha256=session.input_sha256
    )
    if review is None:
        return None
    audit_record(
        actor=actor,
        action="tool.request",
        target=connection,
        detail={
            "connection": connection.name,
            "tool": tool,
            "joined_review": str(review.pk),
            "session_id": str(review.session_id),
        },
    )
    joined = review.session
    joined.pending_review = review
    return joined


_BINARY_WITHHELD = "[portcullis: {kind} content withheld: masking rules apply to this connection and binary content cannot be checked]"


def mask_tool_result(masker, result: dict) -> tuple[dict, dict]:
    """Mask every text content block, embedded text resource, resource link and the structured
    content of a wire-format CallToolResult. Binary blocks are withheld when masking is active."""
    counts: dict = {}

    def add(more):
        for key, value in more.items():
            counts[key] = counts.get(key, 0) + value

    content = []
    for block in result.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text, c = masker.mask_text(block.get("text") or "")
            add(c)
            content.append({**block, "text": text})
        elif kind == "resource" and isinstance(block.get("resource"), dict) and "text" in block["resource"]:
            text, c = masker.mask_text(block["resource"]["text"] or "")
            add(c)
            content.append({**block, "resource": {**block["resource"], "text": text}})
        elif kind == "resource_link":
            masked, c = masker.mask_json(block)
            add(c)
            content.append(masked)
        else:
            content.append({"type": "text", "text": _BINARY_WITHHELD.format(kind=kind)})
    out = {**result, "content": content}
    if result.get("structuredContent") is not None:
        out["structuredContent"], c = masker.mask_json(result["structuredContent"])
        add(c)
    return out, counts


def tool_text(result: dict) -> str:
    """The text rendering of a tool result (stored as the session's output, checked by guardrails)."""
    parts = []
    for block in result.get("content") or []:
        if block.get("type") == "text":
            parts.append(block.get("text") or "")
        elif block.get("type") == "resource" and isinstance(block.get("resource"), dict):
            parts.append(block["resource"].get("text") or "")
    if result.get("structuredContent") is not None:
        parts.append(canonical(result["structuredContent"]))
    return "\n".join(p for p in parts if p)


def _tool_finish(
    session_id,
    *,
    connection: Connection,
    limits: Limits,
    tool: str,
    result: dict | None,
    error: str,
    blocked: str,
    elapsed_ms: int,
) -> Session:
    return upstream_finish(
        session_id,
        connection=connection,
        max_bytes=limits.max_output_bytes,
        subject=f"tool {tool!r}",
        result=result,
        error=error,
        blocked=blocked,
        elapsed_ms=elapsed_ms,
        text_of=tool_text,
        mask=mask_tool_result,
        exit_code_of=lambda r: 1 if r.get("isError") else 0,
        action="tool.finish",
        detail={"tool": tool},
    )


def upstream_finish(
    session_id,
    *,
    connection: Connection,
    max_bytes: int,
    subject: str,
    result: dict | None,
    error: str,
    blocked: str,
    elapsed_ms: int,
    text_of,
    mask,
    exit_code_of=lambda result: 0,
    action: str,
    detail: dict,
) -> Session:
    """The end of one upstream MCP exchange (a tool call, a resource read, a prompt get), the same
    for every kind: the size cap, output protection (the bound guardrails on `text_of(result)`, then
    `mask(masker, result)`), and the final transition. What cannot be checked is withheld."""
    findings, masking_info = [], {}
    if result is not None and not error:
        size = len(canonical(result).encode())
        if size > max_bytes:
            result, error = (
                None,
                f"the upstream answer is {size} bytes; {subject} may return at most {max_bytes} bytes",
            )
    if result is not None and not error:
        try:
            bound = rules_service.bound_rules(connection)
            findings = (
                guardrails.evaluate_output(bound.guardrails, text_of(result)) if bound.guardrails else []
            )
            if findings:
                result, blocked = None, block_message(connection, findings, withheld=True)
            elif bound.masker.active:
                result, counts = mask(bound.masker, result)
                masking_info = {"rules": bound.masking_rules, "counts": dict(counts)}
        except Exception:  # never store or return what could not be checked
            logger.exception("output protection failed on %s session %s", subject, session_id)
            result, error = (
                None,
                "the result could not be checked and was withheld; the gateway log has details",
            )
    fields: dict = {"execution_time_ms": elapsed_ms}
    if findings:
        fields["guardrail_findings"] = [f.as_dict() for f in findings]
    if blocked:
        to, fields["error"] = SessionStatus.BLOCKED, blocked
    elif error or result is None:
        to, fields["error"] = SessionStatus.FAILED, error or "the upstream gave no result"
    else:
        output, truncated = cap_text(text_of(result), max_bytes)
        to = SessionStatus.DONE
        fields.update(exit_code=exit_code_of(result), result=result, output=output, truncated=truncated)
    finished = dispatch.finish_with_retry(
        session_id,
        to,
        fields,
        # A cancel that came meanwhile (from any replica) wins: nothing of the answer is kept.
        cancelled={
            "error": error or "cancelled",
            "result": None,
            "output": "",
            "exit_code": None,
            "truncated": False,
        },
        merged={"masking": masking_info},
        action=action,
        outcome=Outcome.BLOCKED
        if blocked
        else Outcome.SUCCESS
        if result is not None and not error
        else Outcome.FAILED,
        detail={**detail, "execution_time_ms": elapsed_ms},
    )
    return finished or Session.objects.select_related("user").get(pk=session_id)


async def tool_call(
    *,
    actor: Actor,
    connection_name: str,
    tool: str,
    arguments: dict | None = None,
    idempotency_key: str | None = None,
) -> Session:
    """Call one tool of an upstream MCP server through the policy path; returns the final session.

    Raises NotFound/PolicyDenied (audited) when the actor may not use the connection or the tool
    (one answer for both), InvalidInput for malformed arguments. Everything after that is a
    recorded session: blocked (guardrail, contract drift, approval, rate limit), failed (upstream
    down, slow, protocol error, oversize answer), cancelled (exec_cancel) or done (exit code 1 when
    the tool itself answered isError). The upstream exchange runs in the runner's bounded pool,
    like exec: heartbeats, exec_cancel from any replica and the deadline apply; if the caller goes
    away, the call still finishes and is recorded.
    """

    from channels.db import database_sync_to_async as db

    arguments = {} if arguments is None else arguments
    request = {"connection": connection_name, "tool": tool, "arguments": arguments}

    def start():  # one trip to the database thread: the retry check, the record, the hand-off
        replay = idempotent_replay(actor, idempotency_key, "upstream_call", request)
        if replay is not None:
            return replay, None
        session, connection, limits = _tool_prepare(
            actor=actor,
            connection_name=connection_name,
            tool=tool,
            arguments=arguments,
            idem=(idempotency.check_key(idempotency_key), request),
        )
        if session.is_final or session.status == SessionStatus.PENDING_REVIEW:
            return session, None
        # The runner beats its heartbeat in the database: handed off from here, not the event loop.
        call = ToolCall(tool, arguments, actor.surface, upstream.accepted_pin(connection, tool))
        return session, tool_dispatch(session, connection, limits, call)

    session, future = await db(start)()
    if future is None:
        if session.status in (SessionStatus.OPEN, SessionStatus.RUNNING):  # a retry's first attempt
            session, _ = await wait_for_final(session.pk, float(settings.EXEC_HANDOFF_SECONDS))
        return session
    return await job_session(future, session.pk)


async def job_session(future, session_pk) -> Session:
    """The final session a pool job returns; if it returned none (it failed), the record it left.
    The job goes on if the caller is cancelled (shielded)."""
    import asyncio

    from channels.db import database_sync_to_async as db

    try:
        finished = await asyncio.shield(asyncio.wrap_future(future))
    except asyncio.CancelledError:
        raise
    except Exception:  # the job records its own failure; read what it left
        finished = None
    if finished is not None:
        return finished
    return await db(lambda: Session.objects.select_related("user").get(pk=session_pk))()


def tool_reviewed(actor: Actor, review, session: Session, connection: Connection) -> Session:
    """`exec_reviewed` for a tool call: the tool policy and argument guardrails as they are now,
    then the exact approved call (from the review; the session holds it masked) in the pool."""

    call = json.loads(review.input)
    tool, arguments = call["tool"], call["arguments"]
    rule = upstream.tool_rule_for(connection, actor, tool)
    if rule is None:
        raise NotFound(_tool_not_found(connection.name, tool))
    findings = upstream.argument_findings(
        rule, rules_service.bound_rules(connection).guardrails, arguments, review.input
    )
    max_result = min(rule.max_result_bytes or connection.max_output_bytes, connection.max_output_bytes)
    limits = dataclasses.replace(limits_for(connection), max_output_bytes=max_result)
    # No run spec: an upstream call is not resumed by another process (see _tool_prepare).
    released = dispatch.release_reviewed(actor, session, connection, findings, {})
    session.refresh_from_db()
    if not released:
        return session
    call = ToolCall(tool, arguments, actor.surface, upstream.accepted_pin(connection, tool))
    transaction.on_commit(lambda: tool_dispatch(session, connection, limits, call))
    return session


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """One recorded upstream tool call, as the runner makes it. `pin`: the tool's accepted
    contract hash (`upstream.accepted_pin`), read when the call was recorded."""

    tool: str
    arguments: dict
    surface: str
    pin: str


def tool_dispatch(session: Session, connection: Connection, limits: Limits, call: ToolCall):
    """Run a recorded tool session in the runner's pool (open: claimed there; running: recorded
    for this runner already); returns the job's future."""
    claimed = session.status == SessionStatus.RUNNING
    return runner.submit(
        str(session.pk),
        lambda: _tool_run(session.pk, connection, limits, call, claimed=claimed),
        timeout_seconds=limits.timeout_seconds,
    )


def _tool_run(session_id, connection: Connection, limits: Limits, call: ToolCall, *, claimed: bool = False):
    """Pool-thread body: claim the session (unless recorded running for this runner), talk to the
    upstream, finish the record. Whatever goes wrong, the session does not stay open."""
    try:
        close_old_connections()
        if not claimed and not lifecycle.claim(session_id, runner=runner.runner_id()):
            return  # cancelled while queued; exec_cancel already finished the record
        connector = upstream_connector(connection, limits, session_caller(session_id, connection))
        started = time.monotonic()
        try:  # on the upstream loop, where the pooled sessions live; this pool thread waits
            outcome = connector.submit(
                cancellable_exchange(
                    session_id,
                    connector,
                    limits,
                    lambda client, out: _tool_exchange(client, connector, connection, call, out),
                )
            ).result()
        except Exception as exc:  # down, slow, protocol error, oversize: a clear message, recorded
            outcome = {"result": None, "error": connector.describe_failure(exc), "blocked": ""}
        return _tool_finish(
            session_id,
            connection=connection,
            limits=limits,
            tool=call.tool,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            **outcome,
        )
    except Exception:
        logger.exception("tool session %s failed before finishing its record", session_id)
        dispatch.finish_with_retry(
            session_id,
            lambda s: SessionStatus.FAILED,
            {"error": "internal error while calling the upstream; the gateway log has details"},
            action="tool.finish",
            outcome=Outcome.FAILED,
            detail={"status": "failed"},
        )


async def cancellable_exchange(session_id, connector, limits: Limits, body) -> dict:
    """Run `body(client, outcome)` with a (pooled) upstream session on the upstream loop, within
    the connection's deadline and cancellable from another thread (exec_cancel, from any replica
    through the runner). Returns the outcome: `result`, `error` and `blocked` as `upstream_finish`
    takes them."""
    import anyio
    import anyio.from_thread
    import anyio.lowlevel

    outcome: dict = {"result": None, "error": "", "blocked": ""}
    with anyio.CancelScope() as scope:
        token = anyio.lowlevel.current_token()

        def cancel():
            try:
                anyio.from_thread.run_sync(scope.cancel, token=token)
            except RuntimeError:  # the exchange already ended
                pass

        runner.set_cancel_callback(str(session_id), cancel)
        with anyio.fail_after(limits.timeout_seconds):
            async with connector.session() as client:
                await body(client, outcome)
    if scope.cancelled_caught:
        outcome["error"] = "cancelled while the upstream was answering"
    return outcome


async def _tool_exchange(client, connector, connection, call: ToolCall, outcome) -> None:
    """Check the tool's pinned contract, then call it."""
    tool, arguments, surface, pin = call.tool, call.arguments, call.surface, call.pin
    listing, kept = await connector.list_tools_kept(client)
    # A kept listing only lets the call through as it is pinned and accepted (`pin`, read when the
    # call was recorded); anything else is decided on what the upstream shows now, recorded as
    # observed.
    if not (kept and upstream.matches_pin(listing, tool, pin)):
        if kept:
            listing, _ = await connector.list_tools_kept(client, fresh=True)
        rows = await upstream.contracts_check(connection, listing, surface=surface)
        row = rows.get(tool)
        if row is None or row.status != ContractStatus.ACCEPTED:
            outcome["blocked"] = upstream.contract_block_message(connection, row, tool)
            return
    answer = await client.call_tool(tool, arguments)
    outcome["result"] = answer.model_dump(mode="json", by_alias=True, exclude_none=True)
