"""Schema introspection: list the databases, tables or columns of a SQL connection, each call a
recorded session, masked like any result."""

from __future__ import annotations

import json
import logging
import time

from gateway.connectors import REGISTRY, Limits
from gateway.connectors.base import cap_text, json_value
from gateway.pipeline.common import connector_for, new_session, refuse_agent_connection
from governance import rules as rules_service
from governance.access import authorize
from governance.errors import ConnectorError, InvalidInput, PortcullisError
from governance.policy import Actor
from sessions import lifecycle
from sessions.audit import Outcome
from sessions.models import SessionStatus, Verb

logger = logging.getLogger("portcullis.pipeline")

SCHEMA_TIMEOUT_SECONDS = 30


def schema_list(
    *,
    actor: Actor,
    connection_name: str,
    what: str,
    database: str | None = None,
    table: str | None = None,
    schema: str | None = None,
) -> list[dict]:
    """List databases, tables or columns of a SQL connection. Each call is a recorded session."""
    if what not in ("databases", "tables", "columns"):
        raise InvalidInput(f"unknown schema listing {what!r}")
    connection = authorize(actor=actor, connection_name=connection_name, mode="schema")
    cls = REGISTRY[connection.kind]
    if not cls.is_sql:
        raise InvalidInput(f'connection "{connection_name}" is not a database type')
    refuse_agent_connection(connection, "schema listing")
    described = " ".join(
        f"{k}={v}" for k, v in (("database", database), ("schema", schema), ("table", table)) if v
    )
    text = f"list {what}" + (f" {described}" if described else "")
    session = lifecycle.record(
        new_session(actor, connection, Verb.SCHEMA, text, text),
        status=SessionStatus.RUNNING,
        actor=actor,
        action=f"schema.{what}.start",
        detail={"connection": connection.name},
        lease=SCHEMA_TIMEOUT_SECONDS + lifecycle.lease_seconds(),  # not renewed: it runs within the request
    )
    limits = Limits(
        max_rows=connection.max_rows,
        max_output_bytes=connection.max_output_bytes,
        timeout_seconds=min(connection.timeout_seconds, SCHEMA_TIMEOUT_SECONDS),
    )
    started = time.monotonic()
    items: list[dict] = []
    error = ""
    try:
        connector = connector_for(connection, limits)
        if what == "databases":
            items = connector.list_databases()
        elif what == "tables":
            items = connector.list_tables(database or connection.config.get("database", "main"), schema)
        else:
            items = connector.list_columns(
                database or connection.config.get("database", "main"), table, schema
            )
    except PortcullisError as exc:
        error = exc.message
    except Exception as exc:  # a driver error on an introspection query
        error = f"schema query failed: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
    items = [{k: json_value(v) for k, v in item.items()} for item in items[: connection.max_rows]]
    masking_info = {}
    if not error:
        try:
            masker, names = rules_service.masker_for(connection)
            if masker.active:
                items, counts = masker.mask_json(items)
                masking_info = {"rules": names, "counts": dict(counts)}
        except Exception:  # fail closed: nothing unmasked leaves, and the session still ends
            logger.exception("masking a schema listing of connection %s failed", connection.pk)
            items, error = [], "masking failed, so the result was withheld"
    output, truncated = cap_text(json.dumps(items), connection.max_output_bytes)
    lifecycle.transition(
        session.pk,
        SessionStatus.FAILED if error else SessionStatus.DONE,
        actor=actor,
        action=f"schema.{what}",
        outcome=Outcome.FAILED if error else Outcome.SUCCESS,
        detail={"connection": connection.name},
        expect=(SessionStatus.RUNNING,),
        fields={
            "execution_time_ms": int((time.monotonic() - started) * 1000),
            "exit_code": 1 if error else 0,
            "error": error,
            "row_count": len(items),
            "result": {"items": items},
            "masking": masking_info,
            "output": output,
            "truncated": truncated,
        },
    )
    if error:
        raise ConnectorError(error)
    return items
