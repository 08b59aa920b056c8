"""MySQL and MariaDB through PyMySQL (pure Python: no client library to install)."""

from __future__ import annotations

import ssl

import pymysql
import sqlglot.errors
from pymysql.constants import CLIENT
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import TokenType

from gateway.connectors.base import (
    BatchResult,
    Connector,
    ExecResult,
    enforce_ceiling,
    nest_columns,
    wrap_connect_error,
)
from gateway.connectors.postgres import PostgresConnector
from governance import guardrails
from governance.errors import InvalidInput, PolicyDenied


class MySQLConnector(Connector):
    kind = "mysql"
    is_sql = True
    required_keys = PostgresConnector.required_keys
    optional_keys = ("port", "ssl_mode", "ssl_ca", "allowed_databases")
    secret_keys = ("password",)
    SSL_MODES = ("preferred", "disabled", "required", "verify_identity")

    @classmethod
    def validate_values(cls, values):
        PostgresConnector.validate_values(
            {k: v for k, v in values.items() if k not in ("ssl_mode", "ssl_ca")}
        )
        if values.get("ssl_mode", "preferred") not in cls.SSL_MODES:
            raise InvalidInput(f"setting 'ssl_mode' must be one of: {', '.join(cls.SSL_MODES)}")
        if "ssl_ca" in values and not isinstance(values["ssl_ca"], str):
            raise InvalidInput("setting 'ssl_ca' must be a path to a CA bundle")

    def _tls(self) -> dict:
        """PyMySQL's TLS arguments, like MySQL's --ssl-mode. `preferred` (the default) uses TLS when
        the server offers it; `required` refuses plaintext but does not check the certificate;
        `verify_identity` checks the chain (against `ssl_ca` if given) and the host name."""
        mode = self.config.get("ssl_mode", "preferred")
        if mode == "preferred":
            return {}
        if mode == "disabled":
            return {"ssl_disabled": True}
        context = ssl.create_default_context(cafile=self.config.get("ssl_ca") or None)
        if mode == "required":
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return {"ssl": context}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conn = None
        self._thread_id = None

    def _connect(self, database: str | None = None):
        try:
            conn = pymysql.connect(
                host=self.config["host"],
                port=self.config.get("port", 3306),
                user=self.config["user"],
                password=self.secrets.get("password") or "",
                database=database or self.config["database"],
                connect_timeout=10,
                read_timeout=self.limits.timeout_seconds + 30,
                autocommit=True,
                charset="utf8mb4",
                # Under a ceiling, UPDATE counts the rows it matched, not only those it changed.
                client_flag=CLIENT.MULTI_STATEMENTS
                | (CLIENT.FOUND_ROWS if self.limits.max_affected_rows is not None else 0),
                **self._tls(),
            )
        except pymysql.Error as exc:
            raise wrap_connect_error(self.kind, exc) from None
        with conn.cursor() as cur:
            # MariaDB's limit is in seconds (any statement); MySQL's in ms (SELECT only).
            try:
                cur.execute("SET SESSION max_statement_time = %s", (self.limits.timeout_seconds,))
            except pymysql.Error:
                cur.execute("SET SESSION max_execution_time = %s", (self.limits.timeout_seconds * 1000,))
            if self.limits.read_only:
                cur.execute("SET SESSION TRANSACTION READ ONLY")
        self._conn = conn
        self._thread_id = conn.thread_id()
        return conn

    def test(self) -> str:
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                return cur.fetchone()[0]
        finally:
            conn.close()

    def cancel(self) -> None:
        super().cancel()
        if self._thread_id is None:
            return
        try:
            killer = pymysql.connect(
                host=self.config["host"],
                port=self.config.get("port", 3306),
                user=self.config["user"],
                password=self.secrets.get("password") or "",
                connect_timeout=5,
                **self._tls(),
            )
            with killer, killer.cursor() as cur:
                cur.execute(f"KILL QUERY {int(self._thread_id)}")
        except Exception:
            pass

    def execute(self, text: str) -> ExecResult:
        # A statement may name any database on the server (db.table, USE db): only the connection's
        # own and its allowed_databases run; what cannot be told with certainty does not run.
        named = guardrails.databases_named(text, "mysql")
        if named is None:
            raise PolicyDenied(
                "the statement may name another database and cannot be checked; qualify nothing outside "
                "this connection's database"
            )
        for name in sorted(named):
            self.check_database(name)
        conn = self._connect()
        ceiling = self.limits.max_affected_rows is not None
        touched = 0
        try:
            if ceiling:
                conn.begin()  # one transaction, committed only when the count is within the ceiling
            with conn.cursor() as cur:
                try:
                    cur.execute(without_comment_tail(text))
                    batch = BatchResult(self.limits)
                    while True:
                        if cur.description is not None:
                            batch.add_rows([c[0] for c in cur.description], cur)
                        else:
                            batch.add_status(f"{cur.rowcount} row(s) affected", cur.rowcount)
                            touched += max(cur.rowcount, 0)
                        if not cur.nextset():
                            break
                except pymysql.Error as exc:
                    if ceiling:
                        conn.rollback()
                    return ExecResult(output=_describe_error(exc), exit_code=1)
            if ceiling:
                enforce_ceiling(self.limits, touched, conn.rollback)
                conn.commit()
            result = batch.result()
            if ceiling:
                result.extra["affected_rows"] = touched
            return result
        finally:
            conn.close()

    def _query(self, sql: str, params=()) -> list[dict]:
        conn = self._connect()
        try:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(sql, params)
                return list(cur.fetchall())
        finally:
            conn.close()

    def list_databases(self):
        allowed = self.allowed_databases()
        rows = self._query("SELECT schema_name AS name FROM information_schema.schemata ORDER BY 1")
        return [r for r in rows if str(r["name"]).lower() in allowed]

    def list_tables(self, database, schema):
        self.check_database(schema or database)
        return self._query(
            "SELECT table_schema AS `schema`, table_name AS name, LOWER(table_type) AS type "
            "FROM information_schema.tables WHERE table_schema = %s ORDER BY 2",
            (schema or database,),
        )

    def schema_columns(self):
        rows = self._query(
            "SELECT c.table_schema, c.table_name, c.column_name, "
            "CONCAT(IF(t.table_type = 'VIEW', 'view:', ''), c.data_type) "
            "FROM information_schema.columns c JOIN information_schema.tables t "
            "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
            "WHERE c.table_schema = DATABASE() ORDER BY c.table_name, c.ordinal_position"
        )
        return nest_columns(tuple(r.values()) for r in rows)

    def list_columns(self, database, table, schema):
        self.check_database(schema or database)
        rows = self._query(
            "SELECT column_name AS name, column_type AS type, is_nullable = 'YES' AS nullable, "
            "column_default AS `default`, ordinal_position AS position "
            "FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
            "ORDER BY ordinal_position",
            (schema or database, table),
        )
        # MariaDB (10.2.7+) reports "no default" as the text NULL (a literal default comes quoted).
        mariadb = self._conn is not None and "mariadb" in (self._conn.get_server_info() or "").lower()
        for row in rows:
            row["nullable"] = bool(row["nullable"])
            if mariadb and row["default"] == "NULL":
                row["default"] = None
        return rows


def without_comment_tail(text: str) -> str:
    """Drop what follows the last ';' when it is only comments and whitespace.

    The server would run it as an empty statement whose "0 rows affected" hides the status of the
    real last statement.
    """
    try:
        tokens = MySQL.tokenizer_class().tokenize(text)
    except sqlglot.errors.TokenError:
        return text
    ends = [t.end + 1 for t in tokens if t.token_type == TokenType.SEMICOLON]
    if ends and not any(t.start >= ends[-1] for t in tokens):
        return text[: ends[-1]]
    return text


def _describe_error(exc: pymysql.Error) -> str:
    if len(exc.args) >= 2:
        return f"ERROR {exc.args[0]}: {exc.args[1]}"
    return f"ERROR: {exc}"
