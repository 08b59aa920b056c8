"""PostgreSQL through psycopg 3. Autocommit, like psql; statement_timeout from the connection's limit.
Connections are reused between sessions (gateway.connectors.pool), reset with DISCARD ALL."""

from __future__ import annotations

import psycopg

from gateway.connectors import pool
from gateway.connectors.base import (
    BatchResult,
    Connector,
    ExecResult,
    enforce_ceiling,
    nest_columns,
    wrap_connect_error,
)
from governance.errors import InvalidInput, PolicyDenied


class PostgresConnector(Connector):
    kind = "postgres"
    is_sql = True
    required_keys = ("host", "database", "user")
    optional_keys = ("port", "sslmode", "allowed_databases")
    secret_keys = ("password",)
    default_port = 5432

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conn: psycopg.Connection | None = None

    @classmethod
    def validate_values(cls, values):
        port = values.get("port")
        if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
            raise InvalidInput("setting 'port' must be an integer between 1 and 65535")
        for key in ("host", "database", "user", "password", "sslmode"):
            if key in values and values[key] is not None and not isinstance(values[key], str):
                raise InvalidInput(f"setting {key!r} must be a string")
        extra = values.get("allowed_databases")
        if extra is not None and (
            not isinstance(extra, list) or not all(isinstance(d, str) and d.strip() for d in extra)
        ):
            raise InvalidInput("setting 'allowed_databases' must be a list of database names")

    def _connect(self, database: str | None = None) -> psycopg.Connection:
        timeout_ms = self.limits.timeout_seconds * 1000
        try:
            conn = psycopg.connect(
                host=self.config["host"],
                port=self.config.get("port", self.default_port),
                dbname=database or self.config["database"],
                user=self.config["user"],
                password=self.secrets.get("password"),
                sslmode=self.config.get("sslmode", "prefer"),
                connect_timeout=10,
                autocommit=True,
                application_name="portcullis",
                options=f"-c statement_timeout={timeout_ms}"
                + (" -c default_transaction_read_only=on" if self.limits.read_only else ""),
            )
        except psycopg.Error as exc:
            raise wrap_connect_error(self.kind, exc) from None
        self._conn = conn
        return conn

    def _pooled(self, database: str | None = None):
        """A pooled connection with exactly this session's options (see gateway.connectors.pool)."""
        key = pool.key_of(
            self.kind,
            self.config["host"],
            self.config.get("port", self.default_port),
            database or self.config["database"],
            self.config["user"],
            self.config.get("sslmode", "prefer"),
            pool.SecretPart(self.secrets.get("password") or ""),
            self.limits.timeout_seconds,
            self.limits.read_only,
        )

        def connect():
            return self._connect(database)

        def usable(conn) -> bool:
            return not conn.closed and not conn.broken and conn.info.transaction_status == _IDLE

        def adopt(conn):
            self._conn = conn  # so that cancel() reaches the query on a reused connection
            return conn

        return _Adopting(pool.checkout(key, connect, _reset, usable), adopt)

    def test(self) -> str:
        with self._connect() as conn:
            return conn.execute("select version()").fetchone()[0]

    def cancel(self) -> None:
        super().cancel()
        conn = self._conn
        if conn is not None:
            try:
                conn.cancel_safe(timeout=5)
            except Exception:  # the query may have just finished; nothing left to cancel
                pass

    def execute(self, text: str) -> ExecResult:
        if self.limits.max_affected_rows is not None or self.before_commit is not None:
            return self._execute_with_ceiling(text)
        with self._pooled() as conn, conn.cursor() as cur:
            try:
                cur.execute(text.encode(), prepare=False)
            except psycopg.Error as exc:
                return ExecResult(output=_describe_error(exc), exit_code=1)
            return self._collect(cur)

    # Rows this transaction inserted, updated or deleted in every user table: statements, data-
    # modifying CTEs, functions, triggers, rules and cascades alike (the per-statement row count
    # would miss all but the first).
    _TOUCHED = (
        "select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint from pg_stat_xact_user_tables"
    )

    def _execute_with_ceiling(self, text: str) -> ExecResult:
        """One transaction: committed only when the affected-rows count is within the ceiling (if
        any) and, for an exactly-once run, once its transaction id is recorded (`before_commit`)."""
        with self._connect() as conn:
            conn.autocommit = False
            self._conn = conn  # cancel() reaches it
            try:
                with conn.cursor() as cur:
                    if self.limits.max_affected_rows is not None:
                        cur.execute("select current_setting('track_counts')")
                        tracked = cur.fetchone()[0] == "on"
                    else:
                        tracked = True
                    if not tracked:  # the counters stay at zero: the ceiling would be blind
                        conn.rollback()
                        raise PolicyDenied(
                            "the affected-rows ceiling needs track_counts = on on the target; nothing ran"
                        )
                    try:
                        cur.execute(text.encode(), prepare=False)
                        result = self._collect(cur)
                    except psycopg.Error as exc:
                        conn.rollback()
                        return ExecResult(output=_describe_error(exc), exit_code=1)
                    touched = None
                    if self.limits.max_affected_rows is not None:
                        cur.execute(self._TOUCHED)
                        touched = int(cur.fetchone()[0])
                    marker = None
                    if self.before_commit is not None:
                        cur.execute("select txid_current()::bigint, pg_backend_pid()")
                        xid, pid = cur.fetchone()
                        marker = {"xid": int(xid), "pid": int(pid)}
                if touched is not None:
                    enforce_ceiling(self.limits, touched, conn.rollback)
                if marker is not None:
                    try:
                        self.before_commit(marker)  # recorded in the gateway database, or nothing commits
                    except Exception:
                        conn.rollback()
                        raise
                conn.commit()
            except psycopg.Error as exc:
                conn.rollback()
                return ExecResult(output=_describe_error(exc), exit_code=1)
            if touched is not None:
                result.extra["affected_rows"] = touched
            return result

    def _collect(self, cur) -> ExecResult:
        # With several statements psycopg keeps one result per statement.
        batch = BatchResult(self.limits)
        while True:
            if cur.description is not None:
                batch.add_rows([c.name for c in cur.description], cur)
            else:
                batch.add_status(cur.statusmessage or "", cur.rowcount if cur.rowcount >= 0 else None)
            if not cur.nextset():
                break
        return batch.result()

    def _query(self, sql: str, params=(), database: str | None = None) -> list[dict]:
        with self._pooled(database) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def list_databases(self):
        allowed = self.allowed_databases()
        rows = self._query(
            "select datname as name from pg_database where not datistemplate and datallowconn order by 1"
        )
        return [r for r in rows if str(r["name"]).lower() in allowed]

    def list_tables(self, database, schema):
        self.check_database(database)
        sql = (
            "select table_schema as schema, table_name as name, lower(table_type) as type "
            "from information_schema.tables where table_schema not in ('pg_catalog', 'information_schema')"
        )
        params: tuple = ()
        if schema:
            sql += " and table_schema = %s"
            params = (schema,)
        return self._query(sql + " order by 1, 2", params, database=database)

    def schema_columns(self):
        rows = self._query(
            "select c.table_schema as s, c.table_name as t, c.column_name as c, "
            "case when t.table_type = 'VIEW' then 'view:' else '' end || c.data_type as d "
            "from information_schema.columns c join information_schema.tables t "
            "on t.table_schema = c.table_schema and t.table_name = c.table_name "
            "where c.table_schema not in ('pg_catalog', 'information_schema') "
            "order by c.table_schema, c.table_name, c.ordinal_position"
        )
        return nest_columns((r["s"], r["t"], r["c"], r["d"]) for r in rows)

    def list_columns(self, database, table, schema):
        self.check_database(database)
        return self._query(
            "select column_name as name, data_type as type, is_nullable = 'YES' as nullable, "
            "column_default as default, ordinal_position as position "
            "from information_schema.columns where table_schema = %s and table_name = %s "
            "order by ordinal_position",
            (schema or "public", table),
            database=database,
        )


_IDLE = psycopg.pq.TransactionStatus.IDLE


def _reset(conn) -> None:
    """Back to the state it connected with: settings, role, temp tables, prepared statements, locks."""
    conn.execute("DISCARD ALL")


class _Adopting:
    """Enter a pool checkout and hand the connection to `adopt` (a tiny context-manager adapter)."""

    def __init__(self, checkout, adopt):
        self._checkout, self._adopt = checkout, adopt

    def __enter__(self):
        return self._adopt(self._checkout.__enter__())

    def __exit__(self, *exc):
        return self._checkout.__exit__(*exc)


def _describe_error(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag and diag.message_primary else str(exc)).strip()
    sqlstate = getattr(exc, "sqlstate", None)
    return f"ERROR: {message}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")


def transaction_outcome(connector: PostgresConnector, marker: dict) -> str:
    """What became of an abandoned exactly-once run's transaction on the target: "committed",
    "aborted", or "in progress" (its backend still holds it: it is terminated, so the next look
    says "aborted")."""
    with connector._connect() as conn:
        conn.autocommit = True
        status = conn.execute("select txid_status(%s)", (marker["xid"],)).fetchone()[0]
        if status == "in progress":
            conn.execute("select pg_terminate_backend(%s)", (marker["pid"],))
        return status or "aborted"  # NULL: too old to know, or never assigned: it did not commit
