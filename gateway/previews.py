"""Previews that run a query: the masking preview of the first rows a statement returns. A use
case over two apps: the rule (`governance.rules`) and the exec engine (`gateway.pipeline`), which
runs the query like any other, as the caller, with the connection's guardrails, its current
masking and the audit log, so nobody sees raw data through a preview."""

from __future__ import annotations

import time

from gateway import pipeline
from governance import rules
from governance.errors import InvalidInput
from governance.policy import Actor

PREVIEW_ROWS = 100


def masking_preview(
    *,
    actor: Actor,
    ref: str | None = None,
    spec: dict | None = None,
    text: str | None = None,
    columns: list[str] | None = None,
    rows: list[list] | None = None,
    connection_name: str | None = None,
    input: str | None = None,
) -> dict:
    """`governance.rules.masking_preview`, whose sample may also be the first rows of a query
    (`connection_name` + `input`)."""
    if connection_name is None and input is None:
        return rules.masking_preview(actor=actor, ref=ref, spec=spec, text=text, columns=columns, rows=rows)
    rules.masking_preview_check(actor=actor, ref=ref, spec=spec)
    if connection_name is None or input is None:
        raise InvalidInput("a query preview needs both connection_name and input")
    if text is not None or rows is not None:
        raise InvalidInput("give a sample or a query, not both")
    columns, rows = _query_sample(actor, connection_name, input)
    return rules.masking_preview(actor=actor, ref=ref, spec=spec, columns=columns, rows=rows)


def _query_sample(actor: Actor, connection_name: str, input: str) -> tuple[list[str], list[list]]:
    session = pipeline.exec_start(
        actor=actor, connection_name=connection_name, input=input, max_rows=PREVIEW_ROWS
    )
    deadline = time.monotonic() + 60
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.05)
        session.refresh_from_db()
    envelope = pipeline.exec_envelope(session)
    if envelope["status"] != "completed" or not envelope.get("columns"):
        raise InvalidInput(
            f"the preview query did not return rows (status {envelope['status']}, session {session.pk}): "
            f"{(envelope.get('message') or envelope.get('output') or '')[:300]}"
        )
    return envelope["columns"], envelope["rows"]
