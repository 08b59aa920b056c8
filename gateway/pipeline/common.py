"""What the stages of the exec path share: the limits of a run, the caller's message for a
blocked input, the connector of a connection, the session about to be recorded, an idempotent
replay, and the refusals (a kind without exec, a connection that runs on an agent)."""

from __future__ import annotations

import hashlib

from django.conf import settings

from gateway import runner
from gateway.connectors import REGISTRY, Limits
from gateway.kinds import KINDS
from gateway.models import Connection
from governance import guardrails
from governance.errors import InvalidInput
from governance.models import GuardrailRule
from governance.policy import Actor
from sessions import idempotency
from sessions.analysis import analyze_input
from sessions.models import Session


def refuse_without_exec(connection: Connection) -> None:
    """A kind that has no exec (its record says so: `mcp` proxies tools) answers with what to use."""
    kind = KINDS.get(connection.kind)
    if kind is not None and not kind.exec:
        raise InvalidInput(f'connection "{connection.name}" {kind.exec_refusal}')


def limits_for(
    connection: Connection, max_rows: int | None = None, *, read_only: bool = False, rules=()
) -> Limits:
    """The limits of one run on `connection`: its row, output and time limits (`max_rows` only
    lowers the row limit), read-only when a rule asks, and the affected-rows ceiling of `rules`."""
    rows = connection.max_rows if max_rows is None else min(max_rows, connection.max_rows)
    ceiling = guardrails.affected_rows_ceiling(list(rules))  # issue 14: affected-rows ceiling
    return Limits(
        max_rows=rows,
        max_output_bytes=connection.max_output_bytes,
        timeout_seconds=connection.timeout_seconds,
        read_only=read_only,
        max_affected_rows=ceiling[0] if ceiling else None,
        ceiling_rule=ceiling[1] if ceiling else "",
    )


def block_message(connection: Connection, findings, *, withheld: bool = False) -> str:
    """What the caller is told: the rule's name and its admin's message, never its conditions."""
    first = findings[0].rule
    unparsed = next((f for f in findings if f.condition == "sql.parse_error"), None)
    if unparsed is not None:
        # Fail closed, and say why: the rule cannot check what it cannot parse.
        return (
            f"blocked because the input could not be checked: it {unparsed.detail}. Guardrail "
            f"{unparsed.rule} checks SQL statements and lets nothing through that it cannot read"
        )
    rule = GuardrailRule.objects.filter(org_id=connection.org_id, name=first).first()
    default = "the result was withheld by a guardrail" if withheld else "blocked by a guardrail"
    message = rule.message if rule is not None and rule.message else default
    return f"{message} (guardrail: {first})"


def risk_of(connection: Connection, text: str):
    """The analyzer's verdict on `text`, for guardrails with `risk_at_least` (called lazily)."""

    return lambda: analyze_input(connection_name=connection.name, connection_kind=connection.kind, text=text)


def connector_for(connection: Connection, limits: Limits):
    """The connector of `connection` (its config and decrypted secrets) under `limits`."""
    return REGISTRY[connection.kind](connection.config, connection.get_secrets(), limits)


def new_session(
    actor: Actor, connection: Connection, verb: str, full_input: str, stored_input: str, **fields
) -> Session:
    """A session about to be recorded (by sessions.lifecycle): who, where, from which surface, and
    the input (its hash and size always of the full input, even when only a prefix is stored)."""
    data = full_input.encode()
    return Session(
        org_id=actor.org_id,
        user=actor.user,
        connection=connection,
        connection_name=connection.name,
        connection_kind=connection.kind,
        surface=actor.surface,
        client=actor.client,
        verb=verb,
        input=stored_input,
        input_sha256=hashlib.sha256(data).hexdigest(),
        input_bytes=len(data),
        runner=runner.runner_id(),
        **fields,
    )


def idempotent_replay(actor: Actor, key, operation: str, request: dict) -> Session | None:
    """The session of an earlier call with this key (a retry), or None."""
    key = idempotency.check_key(key)
    if key is None:
        return None
    return idempotency.find(user=actor.user, key=key, operation=operation, request=request)


def agent_queue_name(connection: Connection) -> str:
    """Agent queues are per org: `agent.<org id>.<name>`, so no org can route work to another's agent."""
    return f"agent.{connection.org_id}.{connection.agent_queue}"


def refuse_agent_connection(connection: Connection, what: str) -> None:
    if connection.agent_queue and not settings.CELERY_TASK_ALWAYS_EAGER:
        raise InvalidInput(
            f'{what} is not available for connection "{connection.name}": it runs on agent queue '
            f'"{connection.agent_queue}", and only exec is dispatched to agents so far'
        )
