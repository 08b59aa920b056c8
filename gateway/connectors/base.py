"""What every connector is: a small adapter that runs one input against one target.

Only `gateway.pipeline` imports this package (a test enforces it). A connector is built per
request from the connection's settings and decrypted secrets, runs in a worker thread, and can be
cancelled from another thread through `cancel()`.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import threading
import uuid
from dataclasses import dataclass, field

from governance.errors import AffectedRowsExceeded, ConnectorError, InvalidInput, PolicyDenied


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_output_bytes: int
    timeout_seconds: int
    # Run in a read-only transaction on the target (a guardrail asked for it): the second line of
    # defence behind the guardrail's own check of the parsed statements.
    read_only: bool = False
    # A guardrail's affected-rows ceiling: the input runs in one transaction that is rolled back
    # (AffectedRowsExceeded) when it changed more rows than this. None: no ceiling.
    max_affected_rows: int | None = None
    ceiling_rule: str = ""
    # Exactly once (an approved execution): run in one transaction and call the connector's
    # `before_commit(marker)` with the target's transaction id before committing, so that whoever
    # finds the run abandoned can ask the target whether it committed (sessions.lifecycle, docs/durability.md).
    exactly_once: bool = False


@dataclass
class ExecResult:
    """What ran, as the pipeline records it. `output` is the text rendering; SQL also keeps columns/rows."""

    output: str = ""
    exit_code: int = 0
    columns: list[str] | None = None
    rows: list[list] | None = None
    row_count: int | None = None
    truncated: bool = False
    extra: dict = field(default_factory=dict)


class CheckpointFailed(Exception):
    """`before_commit` could not record the target transaction: the connector rolled it back."""


class Connector:
    kind: str = ""
    is_sql: bool = False
    # Set by the pipeline for exactly-once runs: called with {"xid", "pid"} before the commit.
    before_commit = None
    # Per-kind settings: which keys exist, which are required, which are secret.
    required_keys: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()
    secret_keys: tuple[str, ...] = ()

    def __init__(self, config: dict, secrets: dict, limits: Limits):
        self.config = config
        self.secrets = secrets
        self.limits = limits
        self.cancelled = threading.Event()

    # --- validation, used by the connection services -------------------------------------
    @classmethod
    def validate_settings(cls, values: dict) -> None:
        """Raise InvalidInput naming the first problem in a full set of settings (config + secrets)."""
        allowed = set(cls.required_keys) | set(cls.optional_keys) | set(cls.secret_keys)
        for key in values:
            if key not in allowed:
                raise InvalidInput(
                    f"unknown setting {key!r} for a {cls.kind} connection; allowed: {', '.join(sorted(allowed))}"
                )
        for key in cls.required_keys:
            if values.get(key) in (None, "", []):
                raise InvalidInput(f"setting {key!r} is required for a {cls.kind} connection")
        cls.validate_values(values)

    @classmethod
    def validate_values(cls, values: dict) -> None:
        """Kind-specific type checks."""

    # --- running --------------------------------------------------------------------------
    def test(self) -> str:
        """Connect and return a short description of the target (its version)."""
        raise NotImplementedError

    def execute(self, text: str) -> ExecResult:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the running `execute` from another thread. Must be safe to call at any time."""
        self.cancelled.set()

    # --- staying in the connection's database (issue 14) ------------------------------------------
    def allowed_databases(self) -> set[str]:
        """The connection's database and any the admin listed in `allowed_databases`."""
        own = self.config.get("database")
        extra = self.config.get("allowed_databases") or []
        return {str(d).lower() for d in [own, *extra] if d}

    def check_database(self, database: str | None) -> None:
        if database and database.lower() not in self.allowed_databases():
            raise PolicyDenied(
                f"database {database!r} is outside this connection (its database and allowed_databases)"
            )

    # --- schema introspection (SQL kinds) -----------------------------------------------------
    def list_databases(self) -> list[dict]:
        raise InvalidInput(f"listing databases is not supported for connection kind {self.kind!r}")

    def list_tables(self, database: str, schema: str | None) -> list[dict]:
        raise InvalidInput(f"listing tables is not supported for connection kind {self.kind!r}")

    def list_columns(self, database: str, table: str, schema: str | None) -> list[dict]:
        raise InvalidInput(f"listing columns is not supported for connection kind {self.kind!r}")

    def schema_columns(self) -> dict[str, dict[str, dict[str, str]]]:
        """Every table's columns in the connection's database, {schema: {table: {column: type}}}
        (lower case): what masking's lineage resolves names against."""
        raise InvalidInput(f"reading the schema is not supported for connection kind {self.kind!r}")


def nest_columns(rows) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = {}
    for schema, table, column, type_ in rows:
        out.setdefault(str(schema).lower(), {}).setdefault(str(table).lower(), {})[str(column).lower()] = str(
            type_
        )
    return out


def json_value(value):
    """A JSON-safe rendering of a database value that keeps numbers as numbers where exact."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return str(value)


def _cell(value) -> str:
    if value is None:
        return "NULL"
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _plain_text(value) -> str:
    return "NULL" if value is None else value if type(value) is str else str(value)


def render_table(columns: list[str], rows: list[list], max_bytes: int) -> tuple[str, bool]:
    """Tab-separated text with a header line, cut at `max_bytes`. Returns (text, truncated).

    Rendered a column at a time (C-level joins; a 100k-row result in a fraction of the per-cell
    loop's time); when a cell needs escaping, or the text is over the cap, it is rendered again
    line by line (`_render_lines`, which is the definition)."""
    width = len(columns)
    if not rows or not width or set(map(len, rows)) != {width}:
        return _render_lines(columns, rows, max_bytes)
    cells = [col if _types(col) == {str} else list(map(_plain_text, col)) for col in zip(*rows, strict=True)]
    text = "\n".join(["\t".join(columns), *map("\t".join, zip(*cells, strict=True))])
    # No cell (nor column name) held a tab, a line break or a backslash: nothing to escape.
    clean = (
        "\\" not in text
        and text.count("\n") == len(rows)
        and text.count("\t") == (width - 1) * (len(rows) + 1)
    )
    if not clean or len(text.encode()) + 1 > max_bytes:
        return _render_lines(columns, rows, max_bytes)
    return text, False


def _render_lines(columns: list[str], rows: list[list], max_bytes: int) -> tuple[str, bool]:
    lines = ["\t".join(columns)]
    size = len(lines[0].encode()) + 1
    for row in rows:
        line = "\t".join(_cell(v) for v in row)
        size += len(line.encode()) + 1
        if size > max_bytes:
            return "\n".join(lines), True
        lines.append(line)
    return "\n".join(lines), False


def _types(values) -> set:
    return set(map(type, values))


# Values a database row hands over that are JSON as they are (`json_value` returns them unchanged).
_JSON_AS_IS = frozenset({str, int, bool, type(None)})


def json_rows(raw_rows) -> list[list]:
    """`[[json_value(v) for v in row] for row in raw_rows]`, a column at a time: a column whose
    values are all strings, integers, booleans or NULL (most columns) is taken as it is, without
    a Python call per cell."""
    width = len(raw_rows[0]) if raw_rows else 0
    if not width or set(map(len, raw_rows)) != {width}:
        return [[json_value(v) for v in row] for row in raw_rows]
    columns = list(zip(*raw_rows, strict=True))
    converted = False
    for i, column in enumerate(columns):
        if not _types(column) <= _JSON_AS_IS:
            columns[i] = tuple(map(json_value, column))
            converted = True
    return list(map(list, zip(*columns, strict=True))) if converted else list(map(list, raw_rows))


def cap_text(text: str, max_bytes: int) -> tuple[str, bool]:
    data = text.encode()
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode(errors="ignore"), True


def sql_result(
    columns: list[str], raw_rows: list, limits: Limits, *, more: bool, status_line: str = ""
) -> ExecResult:
    """Build the result of a statement that returned rows, applying the row and byte caps."""
    rows = json_rows(raw_rows[: limits.max_rows])
    truncated = more or len(raw_rows) > limits.max_rows
    text, cut = render_table(columns, rows, limits.max_output_bytes)
    if cut:
        # Keep only the rows that fit the byte cap, so `rows` and `output` agree.
        kept = text.count("\n")
        rows = rows[:kept]
    output = text
    if status_line:
        output = f"{output}\n{status_line}" if output else status_line
    return ExecResult(
        output=output,
        exit_code=0,
        columns=columns,
        rows=rows,
        row_count=len(rows),
        truncated=truncated or cut,
    )


class BatchResult:
    """What a batch of statements shows, as psql does: the last statement that returned rows,
    or else the status of the last statement ("UPDATE 3", "2 row(s) affected")."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._rows: tuple[list[str], list] | None = None
        self._status, self._affected = "", None

    def add_rows(self, columns: list[str], cursor) -> None:
        # One row past the cap tells us whether the result was truncated.
        self._rows = (columns, cursor.fetchmany(self.limits.max_rows + 1))

    def add_status(self, status: str, affected: int | None) -> None:
        self._status, self._affected = status, affected

    def result(self) -> ExecResult:
        if self._rows is not None:
            return sql_result(*self._rows, self.limits, more=False)
        return ExecResult(output=self._status, exit_code=0, row_count=self._affected)


def enforce_ceiling(limits: Limits, touched: int, rollback) -> None:
    """Roll back and raise when the transaction changed more rows than the ceiling allows."""
    if limits.max_affected_rows is not None and touched > limits.max_affected_rows:
        rollback()
        raise AffectedRowsExceeded(
            rule=limits.ceiling_rule, ceiling=limits.max_affected_rows, touched=touched
        )


def wrap_connect_error(kind: str, exc: Exception) -> ConnectorError:
    """A connection failure, described without host credentials or the driver's full DSN."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConnectorError(f"could not connect to the {kind} target: {first_line[:300]}")
