"""The output protection of an exec result: output guardrails, then masking (lineage-aware for
SQL), before the result is stored or leaves the gateway. What cannot be checked is withheld."""

from __future__ import annotations

import dataclasses
import logging

from gateway.connectors import ExecResult, Limits
from gateway.connectors.base import render_table
from gateway.models import Connection
from gateway.pipeline.common import block_message, connector_for
from governance import guardrails, masking, masking_lineage
from governance import rules as rules_service

logger = logging.getLogger("portcullis.pipeline")


def protect_output(
    connection: Connection, result: ExecResult, limits: Limits, rules=None, sql: str | None = None
):
    """Output guardrails, then masking, on a result before it is stored or leaves the gateway.

    Returns (result or None if withheld, output findings, masking info, error).
    """
    bound = rules_service.bound_rules(connection)
    rules = bound.guardrails if rules is None else rules
    findings = guardrails.evaluate_output(rules, result.output) if rules else []
    if findings:
        return None, findings, {}, block_message(connection, findings, withheld=True)
    masker, names = bound.masker, bound.masking_rules
    if not masker.active:
        return result, [], {}, ""
    try:
        if result.columns is not None:
            plans = _lineage_plans(connection, masker, sql, limits, len(result.columns))  # issue 14
            rows, counts = masker.mask_rows(result.columns, result.rows or [], plans=plans)
            text, cut = render_table(result.columns, rows, limits.max_output_bytes)
            result = dataclasses.replace(result, rows=rows, output=text, truncated=result.truncated or cut)
        else:
            text, counts = masker.mask_text(result.output)
            result = dataclasses.replace(result, output=text)
    except masking.MaskingError:
        logger.exception("masking failed on a result of connection %s", connection.pk)
        info = {"rules": names, "counts": {}, "failed": True}
        return (
            None,
            [],
            info,
            "masking failed, so the result was withheld (the masking rules are not best-effort)",
        )
    info = {"rules": names, "counts": dict(counts)}
    if masker.unavailable_entities:
        info["unavailable_entities"] = masker.unavailable_entities
    return result, [], info, ""


def _lineage_plans(connection: Connection, masker, sql: str | None, limits: Limits, width: int):
    """Issue 14: whole-value masking for output columns fed by masked columns (any expression)."""
    dialect = guardrails.DIALECTS.get(connection.kind)
    if sql is None or dialect is None or not masker.follows_lineage:
        return None
    return masking_lineage.derived_plans(
        masker,
        sql,
        dialect,
        key=connection.pk,
        loader=lambda: connector_for(
            connection, dataclasses.replace(limits, read_only=True)
        ).schema_columns(),
        width=width,
        default_db=(connection.config.get("database") or "").lower() or None
        if connection.kind == "mysql"
        else None,
    )
