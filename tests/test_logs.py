"""gateway.logs: the cheaper access-line path writes exactly what `logger.info` would."""

from __future__ import annotations

import io
import logging
import re

import pytest

from gateway import logs


def _handler(fmt: str) -> tuple[logging.Handler, io.StringIO]:
    config = logs.logging_config(fmt=fmt, level=None)
    formatter = (
        logs.PlainFormatter()
        if fmt == "plain"
        else logs.JsonFormatter(**{k: v for k, v in config["formatters"]["json"].items() if k != "()"})
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(logs.ContextFilter())
    return handler, stream


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_write_makes_the_same_line_as_logger_info(fmt):
    handler, stream = _handler(fmt)
    log = logging.getLogger("portcullis.test_logs")
    log.addHandler(handler)
    log.propagate = False
    try:
        logs.start(request_id="rid-1", surface="mcp")
        logs.bind(org=7, user="bob@acme.test")
        args = ("%s %s %s %.0fms", "POST", "/api/mcp", 200, 12.3)
        extra = {"method": "POST", "path": "/api/mcp", "status": 200, "duration_ms": 12.3, "org": "given"}
        log.info(*args, extra=extra)
        logs.write(log, logging.INFO, *args, extra=extra)
        log.setLevel(logging.WARNING)
        logs.write(log, logging.INFO, *args, extra=extra)  # below the level: nothing
    finally:
        logs.clear()
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)
    first, second = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+\d{4}", "T", stream.getvalue()).splitlines()
    assert first == second
    assert "rid-1" in first and "given" in first and "bob@acme.test" in first


@pytest.mark.parametrize("formatter", [logs.PlainFormatter(), logs.JsonFormatter()])
def test_the_time_formatted_once_a_second_is_the_time_of_each_record(formatter):
    plain = logging.Formatter()
    datefmt = "%Y-%m-%dT%H:%M:%S%z"
    record = logging.makeLogRecord({})
    for created in (1_700_000_000.1, 1_700_000_000.9, 1_700_000_001.0, 1_700_000_000.5, 1_800_000_000.0):
        record.created = created
        assert formatter.formatTime(record, datefmt) == plain.formatTime(record, datefmt)
