"""Connection settings as the connectors declare them (`gateway.services` validates through here,
so it never imports a connector), and the connection test."""

from __future__ import annotations

import time

from django.conf import settings

from gateway.connectors import REGISTRY, Limits
from gateway.kinds import KINDS
from gateway.pipeline.common import connector_for, refuse_agent_connection
from governance.access import authorize
from governance.errors import InvalidInput, PortcullisError
from governance.policy import Actor
from sessions.audit import Outcome, audit_record


def connection_kinds() -> list[str]:
    return sorted(KINDS)


def validate_connection_settings(kind: str, values: dict) -> tuple[dict, dict]:
    """Check a full set of settings for `kind`; return (config, secrets) split by what is secret."""
    cls = REGISTRY.get(kind)
    if cls is None:
        raise InvalidInput(f"unknown connection kind {kind!r}; use one of: {', '.join(connection_kinds())}")
    record = KINDS[kind]
    if record.enabled_setting and not getattr(settings, record.enabled_setting):
        raise InvalidInput(f"{kind} connections are disabled on this gateway ({record.enabled_env})")
    cls.validate_settings(values)
    config = {k: v for k, v in values.items() if k not in cls.secret_keys}
    secrets = {k: v for k, v in values.items() if k in cls.secret_keys}
    return config, secrets


def connection_setting_names(kind: str) -> tuple[tuple[str, bool], ...]:
    """The non-secret settings of `kind` as its connector declares them: (name, required), required first."""
    cls = REGISTRY[kind]
    required = tuple((key, True) for key in cls.required_keys if key not in cls.secret_keys)
    return required + tuple((key, False) for key in cls.optional_keys if key not in cls.secret_keys)


def secret_setting_names(kind: str) -> tuple[str, ...]:
    cls = REGISTRY.get(kind)
    return cls.secret_keys if cls else ()


def connection_test(*, actor: Actor, connection_name: str) -> dict:
    """Connect to the target and report its version; audited. Needs the right to run on it."""
    connection = authorize(actor=actor, connection_name=connection_name, mode="exec")
    refuse_agent_connection(connection, "testing")
    limits = Limits(max_rows=1, max_output_bytes=4096, timeout_seconds=10)
    started = time.monotonic()
    try:
        message = connector_for(connection, limits).test()
        ok = True
    except PortcullisError as exc:
        message, ok = exc.message, False
    except Exception as exc:
        message, ok = f"test failed: {type(exc).__name__}", False
    latency_ms = int((time.monotonic() - started) * 1000)
    audit_record(
        actor=actor,
        action="connection.test",
        outcome=Outcome.SUCCESS if ok else Outcome.FAILED,
        target=connection,
        detail={"latency_ms": latency_ms},
    )
    return {"connection_name": connection.name, "ok": ok, "message": message[:500], "latency_ms": latency_ms}
