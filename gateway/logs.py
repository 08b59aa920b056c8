"""Log lines that say whose request they belong to.

Every line carries, when known, the request id, org, user, surface and session id. They live in
context variables set by the request middleware (`gateway.observe`), by the MCP and REST
surfaces once the caller is authenticated, and by the event hook when a session starts. asgiref
copies context variables into `sync_to_async` threads, so an ORM call made on behalf of a request
logs with that request's context. Threads of our own pools (the exec runner) start empty.

`PORTCULLIS_LOG_FORMAT=json` (the default in docker-compose.yml) writes one JSON object per line
with python-json-logger; `plain` writes `time level logger [context] message`. What is logged is
what the code passes to the logger: inputs, outputs, secrets and tokens are never passed (the
services log ids, names and outcomes), and the formatter adds only the context fields below.
"""

from __future__ import annotations

import contextvars
import logging

from gateway.configerror import ImproperlyConfiguredEnv

CONTEXT_FIELDS = ("request_id", "org", "user", "surface", "session_id")

# One mutable dict per request, shared by every task and thread that copied the request's context
# (Django runs the view in a task of its own, and asgiref copies the context into sync threads):
# a field bound deep inside the view is on the access line the middleware writes at the end.
_fields: contextvars.ContextVar[dict | None] = contextvars.ContextVar("portcullis_log_fields", default=None)


def start(**values) -> dict:
    """A fresh context for a new request or task; returns it (to hand to code in other tasks)."""
    fields = {k: str(v) for k, v in values.items() if v is not None}
    _fields.set(fields)
    return fields


def adopt(fields: dict | None) -> None:
    """Log with a context started elsewhere (the MCP SDK runs tool handlers in its own tasks)."""
    if fields is not None:
        _fields.set(fields)


def bind(**values) -> None:
    """Set context fields for the rest of this request (or task)."""
    for name in values:
        if name not in CONTEXT_FIELDS:
            raise ValueError(f"unknown log context field {name!r}")
    fields = _fields.get()
    if fields is None:
        fields = start()
    fields.update({k: str(v) for k, v in values.items() if v is not None})


def clear() -> None:
    _fields.set(None)


def current() -> dict[str, str]:
    return dict(_fields.get() or {})


def bind_actor(actor) -> None:
    """The org and user of an authenticated actor (an `Actor` or a user), by id and e-mail."""
    user = getattr(actor, "user", actor)
    org_id = getattr(actor, "org_id", None) or getattr(user, "org_id", None)
    bind(org=org_id, user=getattr(user, "email", None) or getattr(user, "pk", None))


class ContextFilter(logging.Filter):
    """Copies the known context fields onto each record, for both formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Only the fields that are known: a JSON line has no nulls, a plain line no empty pairs.
        for name, value in (_fields.get() or {}).items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class PlainFormatter(logging.Formatter):
    """`2026-01-01T00:00:00+0000 INFO portcullis.x [request_id=… org=…] message`."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")

    def format(self, record: logging.LogRecord) -> str:
        pairs = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None) is not None]
        record.ctx = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


def logging_config(*, fmt: str, level: str | None) -> dict:
    """The LOGGING dict for settings: one stderr handler, JSON or plain, with the context filter."""
    if fmt not in ("json", "plain"):
        raise ImproperlyConfiguredEnv(f"PORTCULLIS_LOG_FORMAT must be json or plain, not {fmt!r}")
    formatters = {
        "plain": {"()": "gateway.logs.PlainFormatter"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        },
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "gateway.logs.ContextFilter"}},
        "formatters": {fmt: formatters[fmt]},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": fmt, "filters": ["context"]}},
        "root": {"handlers": ["console"], "level": level or "WARNING"},
        "loggers": {
            "portcullis": {"level": level or "INFO"},
            # One line per request at INFO (gateway.observe); daphne's own access log stays off.
            "django.server": {"level": "WARNING"},
        },
    }
