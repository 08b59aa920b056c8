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

from pythonjsonlogger.json import JsonFormatter as JsonFormatterBase

from gateway.configerror import ImproperlyConfiguredEnv

CONTEXT_FIELDS = ("request_id", "org", "user", "surface", "session_id")

# Neither format prints the thread, the process id or the process name (python-json-logger skips
# them as reserved attributes), so records do not collect them: the thread's name, os.getpid()
# and multiprocessing.current_process() were a fifth of a record's cost (the logging HOWTO,
# "Optimization", names these switches). Every process that loads the settings logs this way.
logging.logThreads = False
logging.logProcesses = False
logging.logMultiprocessing = False

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


def write(logger: logging.Logger, level: int, msg: str, *args, extra: dict) -> None:
    """`logger.log(level, msg, *args, extra=extra)` for a line written on every request (the
    access line): the same record, without `findCaller` walking the stack for a file and line
    that no format prints (`Logger.handle` of a record from `makeRecord`, as the logging docs
    describe for records created locally)."""
    if logger.isEnabledFor(level):
        logger.handle(
            logger.makeRecord(logger.name, level, "(unknown file)", 0, msg, args, None, extra=extra)
        )


def bind_actor(actor) -> None:
    """The org and user of an authenticated actor (an `Actor` or a user), by id and e-mail."""
    user = getattr(actor, "user", actor)
    org_id = getattr(actor, "org_id", None) or getattr(user, "org_id", None)
    bind(org=org_id, user=getattr(user, "email", None) or getattr(user, "pk", None))


class ContextFilter(logging.Filter):
    """Copies the known context fields onto each record, for both formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Only the fields that are known: a JSON line has no nulls, a plain line no empty pairs.
        # A field the call passed in `extra` wins (LogRecord has no class attributes by these names,
        # so the instance dict is all there is to look at).
        fields = _fields.get()
        if fields:
            attributes = record.__dict__
            for name, value in fields.items():
                if name not in attributes:
                    attributes[name] = value
        return True


class _TimeOncePerSecond(logging.Formatter):
    """`asctime` has no fraction of a second in either format: format it once per second, not
    once per line (localtime + strftime were a sixth of a line's cost). The same text."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached = self._second  # one tuple, swapped whole: safe for threads that log at once
        if cached[0] != second:
            cached = self._second = (second, super().formatTime(record, datefmt))
        return cached[1]


class PlainFormatter(_TimeOncePerSecond):
    """`2026-01-01T00:00:00+0000 INFO portcullis.x [request_id=… org=…] message`."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s%(ctx)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")

    def format(self, record: logging.LogRecord) -> str:
        attributes = record.__dict__
        pairs = [f"{n}={attributes[n]}" for n in CONTEXT_FIELDS if attributes.get(n) is not None]
        record.ctx = f" [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


class JsonFormatter(_TimeOncePerSecond, JsonFormatterBase):
    """python-json-logger's formatter, with the time formatted once per second."""


def logging_config(*, fmt: str, level: str | None) -> dict:
    """The LOGGING dict for settings: one stderr handler, JSON or plain, with the context filter."""
    if fmt not in ("json", "plain"):
        raise ImproperlyConfiguredEnv(f"PORTCULLIS_LOG_FORMAT must be json or plain, not {fmt!r}")
    formatters = {
        "plain": {"()": "gateway.logs.PlainFormatter"},
        "json": {
            "()": "gateway.logs.JsonFormatter",
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
