"""SQLite files on the gateway host.

The target may not reach outside its own file: ATTACH is refused by an authorizer (otherwise a
statement could open the gateway's own database), and the gateway's data directory is off limits.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import sqlglot.errors
from django.conf import settings
from sqlglot.dialects.sqlite import SQLite
from sqlglot.tokens import TokenType

from gateway.connectors.base import BatchResult, Connector, ExecResult, enforce_ceiling, nest_columns
from governance.errors import ConnectorError, InvalidInput


def _only_comments(text: str) -> bool:
    """True if `text` is nothing but whitespace and comments (so running it would do nothing)."""
    rest = text.strip()
    while rest:
        if rest.startswith("--"):
            rest = rest.partition("\n")[2].strip()
        elif rest.startswith("/*"):
            end = rest.find("*/", 2)
            rest = "" if end < 0 else rest[end + 2 :].strip()
        else:
            return False
    return True


def split_statements(text: str) -> list[str]:
    """Split a batch into statements at the semicolons that end them.

    sqlglot's SQLite tokenizer skips semicolons inside strings, identifiers and comments in linear
    time (checking every ';' with sqlite3.complete_statement is quadratic on a long string full of
    them). Inside CREATE TRIGGER only the ';' after END ends the statement. Empty and comment-only
    pieces are dropped: run on their own they would replace the status of the statement before
    them ("update ...; -- done" would report no rows). Text that does not tokenize is returned
    whole, and SQLite reports the error itself.
    """
    try:
        tokens = SQLite.tokenizer_class().tokenize(text)  # tokenizers keep state: one per call
    except sqlglot.errors.TokenError:
        return [] if _only_comments(text) else [text.strip()]
    statements, start, current = [], 0, []
    for token in tokens:
        if token.token_type != TokenType.SEMICOLON:
            current.append(token.text.upper())
            continue
        in_trigger = current[:1] == ["CREATE"] and "TRIGGER" in current[:4]
        if in_trigger and current[-1:] != ["END"]:
            current.append(";")
            continue
        piece = text[start : token.end + 1].strip()
        if not _only_comments(piece.rstrip(";")):
            statements.append(piece)
        start, current = token.end + 1, []
    tail = text[start:].strip()
    if tail and not _only_comments(tail):
        statements.append(tail)
    return statements


def _authorizer(action, arg1, *args):
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _read_only_authorizer(action, arg1, *args):
    # query_only is the read-only switch: nobody may turn it off again.
    if action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() == "query_only":
        return sqlite3.SQLITE_DENY
    return _authorizer(action, arg1, *args)


class SQLiteConnector(Connector):
    kind = "sqlite"
    is_sql = True
    required_keys = ("path",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def validate_values(cls, values):
        path = values.get("path")
        if not isinstance(path, str):
            raise InvalidInput("setting 'path' must be a string")
        if "\0" in path:  # the OS refuses it (ValueError), so say so here
            raise InvalidInput("setting 'path' must not contain NUL characters")
        resolved = Path(path).expanduser().resolve()
        data_dir = Path(settings.DATA_DIR).resolve()
        gateway_db = settings.DATABASES["default"]["NAME"]
        if resolved == Path(str(gateway_db)).resolve() or resolved.parent == data_dir:
            raise InvalidInput("setting 'path' may not point at the gateway's own files")

    def _connect(self) -> sqlite3.Connection:
        path = Path(self.config["path"]).expanduser()
        if not path.exists():
            raise ConnectorError(f"could not connect to the sqlite target: no such file {path.name!r}")
        try:
            conn = sqlite3.connect(str(path), timeout=5, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ConnectorError(f"could not connect to the sqlite target: {exc}") from None
        deadline = time.monotonic() + self.limits.timeout_seconds

        def progress():  # a non-zero return aborts the statement
            return 1 if self.cancelled.is_set() or time.monotonic() > deadline else 0

        conn.set_progress_handler(progress, 10_000)
        if self.limits.read_only:
            conn.execute("PRAGMA query_only = ON")
        conn.set_authorizer(_read_only_authorizer if self.limits.read_only else _authorizer)
        self._conn = conn
        return conn

    def test(self) -> str:
        conn = self._connect()
        try:
            return "SQLite " + conn.execute("select sqlite_version()").fetchone()[0]
        finally:
            conn.close()

    def cancel(self) -> None:
        super().cancel()
        conn = self._conn
        if conn is not None:
            try:
                conn.interrupt()
            except Exception:
                pass

    def execute(self, text: str) -> ExecResult:
        conn = self._connect()
        ceiling = self.limits.max_affected_rows is not None
        try:
            batch = BatchResult(self.limits)
            if ceiling:
                conn.execute("BEGIN")  # total_changes counts trigger writes too
            for statement in split_statements(text) or [text]:
                try:
                    cur = conn.execute(statement)
                    if cur.description is not None:
                        batch.add_rows([c[0] for c in cur.description], cur)
                    else:
                        affected = cur.rowcount if cur.rowcount >= 0 else None
                        batch.add_status(
                            f"{affected} row(s) affected" if affected is not None else "OK", affected
                        )
                except sqlite3.Error as exc:
                    message = str(exc)
                    if message == "interrupted" and not self.cancelled.is_set():
                        message = f"statement timed out after {self.limits.timeout_seconds}s"
                    if ceiling and conn.in_transaction:
                        conn.rollback()
                    return ExecResult(output=f"ERROR: {message}", exit_code=1)
            if ceiling:
                enforce_ceiling(self.limits, conn.total_changes, conn.rollback)
                if conn.in_transaction:
                    conn.commit()
            return batch.result()
        finally:
            conn.close()

    def _query(self, sql: str, params=()) -> list[dict]:
        conn = self._connect()
        try:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params).fetchall()]
        finally:
            conn.close()

    def list_databases(self):
        return [{"name": "main"}]

    def list_tables(self, database, schema):
        return self._query(
            "select 'main' as schema, name, type from sqlite_master "
            "where type in ('table', 'view') and name not like 'sqlite_%' order by name"
        )

    def schema_columns(self):
        rows = self._query(
            "select 'main' as s, m.name as t, p.name as c, "
            "case when m.type = 'view' then 'view:' else '' end || p.type as d from sqlite_master m "
            "join pragma_table_info(m.name) p where m.type in ('table', 'view') and m.name not like 'sqlite_%'"
        )
        return nest_columns((r["s"], r["t"], r["c"], r["d"]) for r in rows)

    def list_columns(self, database, table, schema):
        rows = self._query("select * from pragma_table_info(?)", (table,))
        return [
            {
                "name": r["name"],
                "type": r["type"],
                "nullable": not r["notnull"],
                "default": r["dflt_value"],
                "position": r["cid"] + 1,
            }
            for r in rows
        ]
