"""Every connector kind against a real target, driven through the one exec path (`gateway.pipeline`).

PostgreSQL (`pg_target`), MariaDB (`mysql_target`), a SQLite file made per test and command
targets (real processes on this host). The pipeline runs connectors in worker threads, so these
tests use `transactional_db`: what a test creates is committed and visible to the worker.

Only `split_statements`, `render_table` and `json_value` are imported from the connectors, for unit
tests of those helpers; everything else goes through `pipeline.exec_start` / `schema_list` /
`connection_test` / `exec_cancel` / `exec_envelope`.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import itertools
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from gateway import pipeline
from gateway.connectors.base import json_value, render_table
from gateway.connectors.sqlite import split_statements
from gateway.services import connection_create_headless
from governance.errors import Conflict, InvalidInput
from sessions.models import Session, SessionStatus

# --- helpers -----------------------------------------------------------------------------------

_names = itertools.count(1)


def wait_final(session_id, timeout: float = 30) -> Session:
    """Poll the record until the session is final (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        session = Session.objects.get(pk=session_id)
        if session.is_final:
            return session
        if time.monotonic() > deadline:
            pytest.fail(f"session {session_id} still {session.status} after {timeout}s")
        time.sleep(0.05)


def wait_running(session_id, timeout: float = 10) -> None:
    """Wait until a worker has claimed the session, then give the statement a moment to start."""
    deadline = time.monotonic() + timeout
    while Session.objects.get(pk=session_id).status != SessionStatus.RUNNING:
        if time.monotonic() > deadline:
            pytest.fail(f"session {session_id} never started running")
        time.sleep(0.02)
    time.sleep(0.5)


class Gateway:
    """Bob (standard user, acme) driving the pipeline."""

    def __init__(self, cast):
        self.cast = cast
        self.actor = cast.bob.actor()

    def create(self, kind: str, settings: dict, **options) -> str:
        name = f"{kind}-{next(_names)}"
        connection_create_headless(
            org=self.cast.acme, name=name, kind=kind, settings=settings, options=options
        )
        return name

    def start(self, name: str, text: str, **kwargs) -> Session:
        return pipeline.exec_start(actor=self.actor, connection_name=name, input=text, **kwargs)

    def run(self, name: str, text: str, **kwargs) -> tuple[Session, dict]:
        session = wait_final(self.start(name, text, **kwargs).pk)
        return session, pipeline.exec_envelope(session)

    def test(self, name: str) -> dict:
        return pipeline.connection_test(actor=self.actor, connection_name=name)

    def schema(self, name: str, what: str, **kwargs) -> list[dict]:
        return pipeline.schema_list(actor=self.actor, connection_name=name, what=what, **kwargs)


@pytest.fixture
def gw(cast, transactional_db) -> Gateway:
    return Gateway(cast)


def make_sqlite_target(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        create table items (id integer primary key, name text not null, price real, blob blob);
        insert into items (name, price, blob) values ('one', 1.5, x'00ff'), ('two', 2.25, null),
                                                     ('three', 3.0, null);
        """
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def sqlite_file(tmp_path) -> Path:
    return make_sqlite_target(tmp_path / "target.sqlite3")


# A statement that keeps SQLite busy far longer than any test waits (stopped by timeout or cancel).
SQLITE_SPIN = (
    "with recursive c(x) as (select 1 union all select x + 1 from c where x < 1e12) select count(*) from c"
)
# Fifty rows, the same text on all three databases.
SERIES_50 = "with recursive s(n) as (select 1 union all select n + 1 from s where n < 50) select n from s"
PAD = "x" * 100


@dataclass
class SQLTarget:
    kind: str
    settings: dict
    sleep: str  # format with {s}: a statement that runs for s seconds
    temp_table: str  # creates the temporary table t (x int)
    missing_table_error: str  # a fragment of the database's message for `select * from nope`
    timeout_error: str  # a fragment of the message when timeout_seconds stops a statement


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def sql(request, tmp_path) -> SQLTarget:
    kind = request.param
    if kind == "postgres":
        return SQLTarget(
            kind=kind,
            settings=request.getfixturevalue("pg_target"),
            sleep="select pg_sleep({s})",
            temp_table="create temp table t (x int)",
            missing_table_error='relation "nope" does not exist',
            timeout_error="canceling statement due to statement timeout",
        )
    if kind == "mysql":
        return SQLTarget(
            kind=kind,
            settings=request.getfixturevalue("mysql_target"),
            sleep="select sleep({s})",
            temp_table="create temporary table t (x int)",
            missing_table_error="doesn't exist",
            # MariaDB's max_statement_time interrupts SLEEP with error 1969 (it does not return 1).
            timeout_error="max_statement_time exceeded",
        )
    return SQLTarget(
        kind=kind,
        settings={"path": str(make_sqlite_target(tmp_path / "param.sqlite3"))},
        sleep=SQLITE_SPIN,
        temp_table="create temp table t (x int)",
        missing_table_error="no such table: nope",
        timeout_error="statement timed out after 1s",
    )


def assert_rows_match_output(envelope: dict) -> None:
    """`rows` and the text `output` describe the same rows, in order."""
    lines = envelope["output"].split("\n")
    assert lines[0] == "\t".join(envelope["columns"])
    assert len(lines) - 1 == len(envelope["rows"]) == envelope["row_count"]
    for line, row in zip(lines[1:], envelope["rows"], strict=True):
        assert line == "\t".join("NULL" if v is None else str(v) for v in row)


# --- queries returning rows ----------------------------------------------------------------------


def test_it_returns_postgres_rows_as_json_safe_values(gw, pg_target):
    name = gw.create("postgres", pg_target)
    session, envelope = gw.run(name, "select id, name, price, created from items where id <= 3 order by id")
    assert envelope["status"] == "completed"
    assert envelope["exit_code"] == 0
    assert envelope["columns"] == ["id", "name", "price", "created"]
    assert envelope["row_count"] == 3
    assert envelope["truncated"] is False
    first = envelope["rows"][0]
    assert first[:3] == [1, "item 1", "1.50"]  # numeric keeps its scale, as a string
    assert datetime.datetime.fromisoformat(first[3]) == datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert [r[2] for r in envelope["rows"]] == ["1.50", "3.00", "4.50"]
    assert session.status == SessionStatus.DONE
    assert session.result == {"columns": envelope["columns"], "rows": envelope["rows"]}
    assert_rows_match_output(envelope)


def test_it_returns_postgres_special_types_as_strings(gw, pg_target):
    name = gw.create("postgres", pg_target)
    _, envelope = gw.run(
        name,
        "select 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, interval '1 day 2 hours' as i, "
        "'\\x00ff'::bytea as b, array[1, 2] as a, '{\"k\": 1.5}'::jsonb as j, null as nothing, true as yes",
    )
    assert envelope["status"] == "completed"
    assert envelope["rows"] == [
        [
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "1 day, 2:00:00",
            "base64:AP8=",
            [1, 2],
            {"k": 1.5},
            None,
            True,
        ]
    ]


def test_it_returns_mysql_rows_as_json_safe_values(gw, mysql_target):
    name = gw.create("mysql", mysql_target)
    session, envelope = gw.run(
        name, "SELECT id, name, price, TIMESTAMP('2026-01-01 12:30:00') AS at FROM items ORDER BY id"
    )
    assert envelope["status"] == "completed"
    assert envelope["exit_code"] == 0
    assert envelope["columns"] == ["id", "name", "price", "at"]
    assert envelope["rows"] == [
        [1, "alpha", "1.50", "2026-01-01T12:30:00"],
        [2, "beta", "2.25", "2026-01-01T12:30:00"],
        [3, "gamma", "3.00", "2026-01-01T12:30:00"],
    ]
    assert envelope["row_count"] == 3
    assert session.status == SessionStatus.DONE
    assert_rows_match_output(envelope)


def test_it_returns_sqlite_rows_as_json_safe_values(gw, sqlite_file):
    name = gw.create("sqlite", {"path": str(sqlite_file)})
    _, envelope = gw.run(name, "select id, name, price, blob from items order by id")
    assert envelope["status"] == "completed"
    assert envelope["exit_code"] == 0
    assert envelope["columns"] == ["id", "name", "price", "blob"]
    assert envelope["rows"] == [
        [1, "one", 1.5, "base64:AP8="],
        [2, "two", 2.25, None],
        [3, "three", 3.0, None],
    ]
    assert envelope["row_count"] == 3
    assert_rows_match_output(envelope)


# --- behaviour shared by the SQL kinds (parametrized over postgres, mysql, sqlite) ---------------


def test_it_returns_the_last_result_with_rows_of_several_statements(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    _, envelope = gw.run(
        name, f"{sql.temp_table}; insert into t values (3), (1), (2); select x from t order by x"
    )
    assert envelope["status"] == "completed"
    assert envelope["columns"] == ["x"]
    assert envelope["rows"] == [[1], [2], [3]]
    assert envelope["row_count"] == 3

    # A statement without rows after the last select does not hide the select's rows.
    _, envelope = gw.run(
        name, f"{sql.temp_table}; insert into t values (7); select x as seen from t; insert into t values (8)"
    )
    assert envelope["status"] == "completed"
    assert envelope["columns"] == ["seen"]
    assert envelope["rows"] == [[7]]


def test_it_reports_dml_without_rows_as_a_status_and_row_count(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    _, envelope = gw.run(name, f"{sql.temp_table}; insert into t values (1), (2), (3)")
    assert envelope["status"] == "completed"
    assert envelope["exit_code"] == 0
    assert envelope["row_count"] == 3
    assert "columns" not in envelope and "rows" not in envelope
    expected = "INSERT 0 3" if sql.kind == "postgres" else "3 row(s) affected"
    assert envelope["output"] == expected

    _, envelope = gw.run(
        name, f"{sql.temp_table}; insert into t values (1), (2), (3); update t set x = 0 where x > 1"
    )
    assert envelope["row_count"] == 2
    assert envelope["output"] == ("UPDATE 2" if sql.kind == "postgres" else "2 row(s) affected")


def test_it_reports_a_sql_error_as_failed_with_the_database_message(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    session, envelope = gw.run(name, "select * from nope")
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 1
    assert envelope["output"].startswith("ERROR")
    assert sql.missing_table_error in envelope["output"]
    assert "columns" not in envelope
    # The statement ran and the database refused it: the session is done, with exit code 1.
    assert session.status == SessionStatus.DONE
    assert session.exit_code == 1
    assert session.error == ""


def test_it_fails_when_a_later_statement_fails(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    _, envelope = gw.run(name, f"{sql.temp_table}; insert into t values (1); select * from nope")
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 1
    assert sql.missing_table_error in envelope["output"]


def test_it_caps_rows_at_the_connection_max_rows(gw, sql):
    name = gw.create(sql.kind, sql.settings, max_rows=10)
    _, envelope = gw.run(name, SERIES_50)
    assert envelope["status"] == "completed"
    assert envelope["rows"] == [[n] for n in range(1, 11)]
    assert envelope["row_count"] == 10
    assert envelope["truncated"] is True
    assert_rows_match_output(envelope)


def test_it_caps_rows_at_the_per_call_max_rows_but_never_above_the_connection(gw, sql):
    name = gw.create(sql.kind, sql.settings, max_rows=10)
    _, envelope = gw.run(name, SERIES_50, max_rows=5)
    assert envelope["rows"] == [[n] for n in range(1, 6)]
    assert envelope["truncated"] is True
    assert_rows_match_output(envelope)

    _, envelope = gw.run(name, SERIES_50, max_rows=500)  # asking for more does not lift the connection's cap
    assert envelope["row_count"] == 10
    assert envelope["truncated"] is True


def test_it_does_not_flag_a_result_exactly_at_the_row_cap(gw, sql):
    name = gw.create(sql.kind, sql.settings, max_rows=50)
    _, envelope = gw.run(name, SERIES_50)
    assert envelope["row_count"] == 50
    assert envelope["truncated"] is False


def test_it_caps_output_bytes_keeping_rows_and_output_in_agreement(gw, sql):
    name = gw.create(sql.kind, sql.settings, max_output_bytes=1024)
    _, envelope = gw.run(name, SERIES_50.replace("select n from s", f"select n, '{PAD}' as pad from s"))
    assert envelope["status"] == "completed"
    assert envelope["truncated"] is True
    assert len(envelope["output"].encode()) <= 1024
    assert 0 < envelope["row_count"] < 50
    assert envelope["rows"] == [[n, PAD] for n in range(1, envelope["row_count"] + 1)]
    assert_rows_match_output(envelope)


def test_it_refuses_an_output_cap_below_1024_bytes(gw, sql):
    with pytest.raises(InvalidInput, match="max_output_bytes"):
        gw.create(sql.kind, sql.settings, max_output_bytes=1023)


def test_it_stops_a_long_statement_at_the_connection_timeout(gw, sql):
    name = gw.create(sql.kind, sql.settings, timeout_seconds=1)
    started = time.monotonic()
    session, envelope = gw.run(name, sql.sleep.format(s=5))
    elapsed = time.monotonic() - started
    assert elapsed < 4, f"the 1s timeout took {elapsed:.1f}s"
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 1
    assert sql.timeout_error in envelope["output"]
    assert session.status == SessionStatus.DONE
    assert session.execution_time_ms < 4000


def test_it_cancels_a_running_statement(gw, sql):
    name = gw.create(sql.kind, sql.settings, timeout_seconds=60)
    session = gw.start(name, sql.sleep.format(s=30))
    wait_running(session.pk)
    asked = time.monotonic()
    cancelled = pipeline.exec_cancel(actor=gw.actor, session_id=str(session.pk))
    assert cancelled.cancel_requested is True
    session = wait_final(session.pk, timeout=10)
    assert time.monotonic() - asked < 5
    assert session.status == SessionStatus.CANCELLED
    assert session.error == "cancelled"
    envelope = pipeline.exec_envelope(session)
    assert envelope["session_status"] == "cancelled"
    assert envelope["status"] == "failed"
    assert session.execution_time_ms < 10_000
    with pytest.raises(Conflict, match="already cancelled"):
        pipeline.exec_cancel(actor=gw.actor, session_id=str(session.pk))


def test_it_connects_and_reports_the_version(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    result = gw.test(name)
    assert result["ok"] is True, result["message"]
    assert result["connection_name"] == name
    expected = {"postgres": "PostgreSQL ", "mysql": "MariaDB", "sqlite": "SQLite 3."}[sql.kind]
    assert expected in result["message"]
    assert result["latency_ms"] >= 0


# --- postgres specifics --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_it_reports_a_postgres_login_failure_without_the_password(gw, pg_target):
    # The test server trusts 127.0.0.1, so any password is accepted there; an unknown role is the
    # credential failure this server can produce.
    password = "hunter2-do-not-echo"
    name = gw.create("postgres", dict(pg_target, user="portcullis_no_such_role", password=password))
    result = gw.test(name)
    assert result["ok"] is False
    assert result["message"].startswith("could not connect to the postgres target")
    assert "portcullis_no_such_role" in result["message"]
    assert password not in result["message"]


def test_it_reports_an_unreachable_postgres_without_the_password(gw, pg_target):
    password = "hunter2-do-not-echo"
    name = gw.create("postgres", dict(pg_target, port=_free_port(), password=password))
    result = gw.test(name)
    assert result["ok"] is False
    assert result["message"].startswith("could not connect to the postgres target")
    assert "refused" in result["message"].lower()
    assert password not in result["message"]

    # An exec against it fails as a session (nothing ran), again without the password.
    session, envelope = gw.run(name, "select 1")
    assert session.status == SessionStatus.FAILED
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] is None
    assert "could not connect to the postgres target" in envelope["output"]
    assert password not in envelope["output"]


def test_it_lists_postgres_tables_by_schema(gw, pg_target):
    name = gw.create("postgres", pg_target)
    tables = gw.schema(name, "tables")
    assert {"schema": "public", "name": "items", "type": "base table"} in tables
    assert {"schema": "billing", "name": "invoices", "type": "base table"} in tables
    assert gw.schema(name, "tables", schema="billing") == [
        {"schema": "billing", "name": "invoices", "type": "base table"}
    ]
    columns = gw.schema(name, "columns", table="items")
    assert [c["name"] for c in columns] == ["id", "name", "price", "created"]
    assert columns[1]["nullable"] is False


# --- mysql specifics -----------------------------------------------------------------------------


def test_it_reports_a_mysql_wrong_password_without_the_password(gw, mysql_target):
    password = "hunter2-do-not-echo"
    name = gw.create("mysql", dict(mysql_target, password=password))
    result = gw.test(name)
    assert result["ok"] is False
    assert result["message"].startswith("could not connect to the mysql target")
    assert "Access denied" in result["message"]
    assert password not in result["message"]


def test_it_lists_mysql_databases_tables_and_columns(gw, mysql_target):
    name = gw.create("mysql", mysql_target)
    database = mysql_target["database"]
    assert {"name": database} in gw.schema(name, "databases")
    assert gw.schema(name, "tables") == [{"schema": database, "name": "items", "type": "base table"}]
    columns = gw.schema(name, "columns", table="items")
    assert [(c["name"], c["type"], c["nullable"], c["position"]) for c in columns] == [
        ("id", "int(11)", False, 1),
        ("name", "varchar(50)", True, 2),
        ("price", "decimal(10,2)", True, 3),
    ]
    # A column without a default has no default (None), like on the other kinds, not the text "NULL".
    assert [c["default"] for c in columns] == [None, None, None]
    # Each listing is a recorded schema session.
    recorded = Session.objects.filter(connection_name=name, verb="schema").order_by("created_at")
    assert [s.input for s in recorded] == ["list databases", "list tables", "list columns table=items"]
    assert all(s.status == SessionStatus.DONE and s.exit_code == 0 for s in recorded)


def test_it_lists_nothing_for_a_missing_mysql_table(gw, mysql_target):
    name = gw.create("mysql", mysql_target)
    assert gw.schema(name, "columns", table="nope") == []


# --- sqlite specifics ----------------------------------------------------------------------------


def test_it_refuses_attach_database(gw, sqlite_file, tmp_path):
    name = gw.create("sqlite", {"path": str(sqlite_file)})
    other = tmp_path / "other.sqlite3"
    _, envelope = gw.run(name, f"attach database '{other}' as other; select 1")
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 1
    assert "not authorized" in envelope["output"]
    assert not other.exists()


def test_it_refuses_vacuum_into_another_file(gw, sqlite_file, tmp_path):
    name = gw.create("sqlite", {"path": str(sqlite_file)})
    copy = tmp_path / "copy.sqlite3"
    _, envelope = gw.run(name, f"vacuum into '{copy}'")
    assert envelope["status"] == "failed"
    assert "authorization denied" in envelope["output"] or "not authorized" in envelope["output"]
    assert not copy.exists()


def test_it_refuses_a_sqlite_path_inside_the_gateway_data_dir(gw):
    data_dir = Path(django_settings.DATA_DIR)
    for path in (data_dir / "portcullis.sqlite3", data_dir / "sub" / ".." / "anything.sqlite3"):
        with pytest.raises(InvalidInput, match="gateway's own files"):
            gw.create("sqlite", {"path": str(path)})


def test_it_fails_an_exec_on_a_missing_sqlite_file_without_creating_it(gw, tmp_path):
    missing = tmp_path / "missing.sqlite3"
    name = gw.create("sqlite", {"path": str(missing)})
    session, envelope = gw.run(name, "select 1")
    assert session.status == SessionStatus.FAILED
    assert envelope["status"] == "failed"
    assert "no such file 'missing.sqlite3'" in envelope["output"]
    assert not missing.exists()
    assert gw.test(name)["ok"] is False


def test_it_lists_sqlite_databases_tables_and_columns(gw, sqlite_file):
    name = gw.create("sqlite", {"path": str(sqlite_file)})
    assert gw.schema(name, "databases") == [{"name": "main"}]
    assert gw.schema(name, "tables") == [{"schema": "main", "name": "items", "type": "table"}]
    columns = gw.schema(name, "columns", table="items")
    assert columns == [
        {"name": "id", "type": "INTEGER", "nullable": True, "default": None, "position": 1},
        {"name": "name", "type": "TEXT", "nullable": False, "default": None, "position": 2},
        {"name": "price", "type": "REAL", "nullable": True, "default": None, "position": 3},
        {"name": "blob", "type": "BLOB", "nullable": True, "default": None, "position": 4},
    ]


def test_it_runs_a_sqlite_trigger_body_as_one_statement(gw, sqlite_file):
    name = gw.create("sqlite", {"path": str(sqlite_file)})
    _, envelope = gw.run(
        name,
        "create temp table log (msg text);"
        "create temp trigger items_ins after insert on items begin insert into log values ('a;b'); end;"
        "insert into items (name) values ('four'); select msg from log",
    )
    assert envelope["status"] == "completed", envelope["output"]
    assert envelope["rows"] == [["a;b"]]


def test_it_keeps_the_dml_status_when_the_input_ends_with_a_comment(gw, sql):
    name = gw.create(sql.kind, sql.settings)
    _, envelope = gw.run(name, f"{sql.temp_table}; insert into t values (1), (2); -- two rows")
    assert envelope["status"] == "completed", envelope["output"]
    assert envelope["row_count"] == 2
    assert envelope["output"] == ("INSERT 0 2" if sql.kind == "postgres" else "2 row(s) affected")


def test_it_refuses_schema_listing_on_a_command_connection(gw, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    name = gw.create("command", {"argv": ["cat"]})
    with pytest.raises(InvalidInput, match="not a database type"):
        gw.schema(name, "tables")


# --- command -------------------------------------------------------------------------------------


@pytest.fixture
def command(gw, settings):
    """`command(argv, env=None, **options)` -> the name of a new command connection."""
    settings.COMMAND_CONNECTIONS_ENABLED = True

    def make(argv: list[str], env: dict | None = None, cwd: str | None = None, **options) -> str:
        values: dict = {"argv": argv}
        if env is not None:
            values["env"] = env
        if cwd is not None:
            values["cwd"] = cwd
        return gw.create("command", values, **options)

    return make


def test_it_feeds_the_input_to_a_command_on_stdin(gw, command):
    session, envelope = gw.run(command(["cat"]), "hello\nworld\n")
    assert envelope["status"] == "completed"
    assert envelope["exit_code"] == 0
    assert envelope["output"] == "hello\nworld\n"
    assert envelope["truncated"] is False
    assert envelope["row_count"] is None
    assert "columns" not in envelope
    assert session.status == SessionStatus.DONE

    _, envelope = gw.run(command(["sh", "-c", "read line; echo got:$line; wc -c"]), "ping\nabcd\n")
    assert envelope["output"] == "got:ping\n5\n"


def test_it_propagates_a_command_exit_code(gw, command):
    session, envelope = gw.run(command(["sh", "-c", "echo before; echo oops >&2; exit 3"]), "x")
    assert envelope["status"] == "failed"
    assert envelope["exit_code"] == 3
    assert "before" in envelope["output"] and "oops" in envelope["output"]  # stderr is merged in
    assert session.status == SessionStatus.DONE
    assert session.exit_code == 3


def test_it_gives_a_command_only_its_secrets_as_environment(gw, command, monkeypatch):
    monkeypatch.setenv("PORTCULLIS_GATEWAY_ONLY", "leak")
    name = command(["env"], env={"API_TOKEN": "tok-123"})
    _, envelope = gw.run(name, "x")
    assert envelope["status"] == "completed"
    env = dict(line.split("=", 1) for line in envelope["output"].splitlines())
    assert set(env) == {"PATH", "LANG", "API_TOKEN"}
    assert env["API_TOKEN"] == "tok-123"
    assert "HOME" not in env and "PORTCULLIS_GATEWAY_ONLY" not in env

    _, envelope = gw.run(
        command(["sh", "-c", 'echo "token=$API_TOKEN home=${HOME:-unset}"'], env={"API_TOKEN": "tok-123"}),
        "x",
    )
    assert envelope["output"] == "token=tok-123 home=unset\n"


def test_it_keeps_command_env_secret_out_of_the_config(gw, command):
    from gateway.models import Connection

    name = command(["env"], env={"API_TOKEN": "tok-123"})
    connection = Connection.objects.get(name=name)
    assert connection.config == {"argv": ["env"]}
    assert connection.secret_keys == ["env"]
    assert "tok-123" not in connection.secrets_encrypted


def test_it_runs_a_command_in_its_cwd(gw, command, tmp_path):
    _, envelope = gw.run(command(["pwd"], cwd=str(tmp_path)), "x")
    assert envelope["output"].strip() == str(tmp_path)


def test_it_fails_a_command_that_cannot_start(gw, command, tmp_path):
    session, envelope = gw.run(command(["portcullis-no-such-program"]), "x")
    assert session.status == SessionStatus.FAILED
    assert envelope["status"] == "failed"
    assert "could not start the command" in envelope["output"]

    session, _ = gw.run(command(["pwd"], cwd=str(tmp_path / "nowhere")), "x")
    assert session.status == SessionStatus.FAILED
    assert "could not start the command" in session.error


def test_it_caps_command_output_bytes(gw, command):
    name = command(["sh", "-c", "yes 0123456789 | head -c 5000"], max_output_bytes=1024)
    _, envelope = gw.run(name, "x")
    assert envelope["status"] == "completed"
    assert envelope["truncated"] is True
    assert envelope["output"] == ("0123456789\n" * 100)[:1024]


def test_it_stops_a_command_that_never_stops_writing(gw, command):
    name = command(["yes"], max_output_bytes=1024, timeout_seconds=20)
    started = time.monotonic()
    session, envelope = gw.run(name, "x")
    assert time.monotonic() - started < 5
    assert envelope["truncated"] is True
    assert len(envelope["output"].encode()) <= 1024
    assert envelope["output"].startswith("y\ny\n")
    assert envelope["status"] == "failed"  # killed: it did not exit 0 on its own
    assert session.exit_code != 0


def _gone_or_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_it_stops_a_command_and_its_children_at_the_timeout(gw, command):
    name = command(["sh", "-c", "sleep 30 & echo $!; wait"], timeout_seconds=1)
    started = time.monotonic()
    session, envelope = gw.run(name, "x")
    assert time.monotonic() - started < 4
    assert envelope["status"] == "failed"
    assert "[portcullis: command timed out after 1s]" in envelope["output"]
    assert session.exit_code == -9
    child = int(envelope["output"].splitlines()[0])
    deadline = time.monotonic() + 3
    while not _gone_or_zombie(child):  # the whole process group was killed, not just sh
        assert time.monotonic() < deadline, f"background child {child} survived the timeout"
        time.sleep(0.05)


def test_it_cancels_a_running_command(gw, command):
    session = gw.start(command(["sleep", "30"], timeout_seconds=60), "x")
    wait_running(session.pk)
    asked = time.monotonic()
    pipeline.exec_cancel(actor=gw.actor, session_id=str(session.pk))
    session = wait_final(session.pk, timeout=10)
    assert time.monotonic() - asked < 5
    assert session.status == SessionStatus.CANCELLED
    assert "[portcullis: command cancelled]" in session.output
    assert pipeline.exec_envelope(session)["session_status"] == "cancelled"


def test_it_tests_a_command_connection(gw, command):
    result = gw.test(command(["cat"]))
    assert result["ok"] is True
    assert result["message"] == "command cat"


def test_it_refuses_command_connections_when_disabled(gw, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = False
    with pytest.raises(InvalidInput, match="command connections are disabled"):
        gw.create("command", {"argv": ["cat"]})

    # One created while enabled neither runs nor tests once the gateway turns them off.
    settings.COMMAND_CONNECTIONS_ENABLED = True
    name = gw.create("command", {"argv": ["cat"]})
    settings.COMMAND_CONNECTIONS_ENABLED = False
    session, envelope = gw.run(name, "hello")
    assert session.status == SessionStatus.FAILED
    assert envelope["status"] == "failed"
    assert "command connections are disabled" in envelope["output"]
    assert "hello" not in envelope["output"]
    result = gw.test(name)
    assert result["ok"] is False
    assert "command connections are disabled" in result["message"]


def test_it_refuses_malformed_command_settings(gw, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    for values, message in (
        ({"argv": "cat"}, "argv"),
        ({"argv": []}, "argv"),
        ({"argv": ["cat", ""]}, "argv"),
        ({"argv": ["cat"], "env": {"N": 1}}, "env"),
        ({"argv": ["cat"], "shell": True}, "unknown setting"),
    ):
        with pytest.raises(InvalidInput, match=message):
            gw.create("command", values)


# --- pure helpers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("select 1; select 2", ["select 1;", "select 2"]),
        ("select 1;\nselect 2;\n", ["select 1;", "select 2;"]),
        ("select 'a;b'; select \"c;d\" from t;", ["select 'a;b';", 'select "c;d" from t;']),
        ("select 'it''s; fine'; select 2", ["select 'it''s; fine';", "select 2"]),
        (
            "-- a; comment\nselect 1; /* b; c */ select 2;",
            ["-- a; comment\nselect 1;", "/* b; c */ select 2;"],
        ),
        (";; ; select 1;;\n;", ["select 1;"]),
        ("update t set x = 1; -- done", ["update t set x = 1;"]),
        ("select 1; /* a */ ; -- b\n/* c */", ["select 1;"]),
        ("-- only a comment", []),
        ("select 1 -- trailing", ["select 1 -- trailing"]),
        ("", []),
        ("   \n ", []),
        ("select 1", ["select 1"]),
        (
            "create trigger tr after insert on a begin insert into b values (1); delete from c; end; select 3",
            [
                "create trigger tr after insert on a begin insert into b values (1); delete from c; end;",
                "select 3",
            ],
        ),
    ],
)
def test_split_statements(text, expected):
    assert split_statements(text) == expected


def test_render_table_escapes_cells_and_writes_null():
    text, truncated = render_table(["a", "b"], [["x\ty", None], ["line\nbreak", "back\\slash"]], 1024)
    assert text == "a\tb\nx\\ty\tNULL\nline\\nbreak\tback\\\\slash"
    assert truncated is False


def test_render_table_cuts_whole_lines_at_the_byte_cap():
    rows = [[str(n) * 10] for n in range(10)]  # 11 bytes per line with its newline
    text, truncated = render_table(["col"], rows, 40)
    assert truncated is True
    assert len(text.encode()) <= 40
    assert text.split("\n") == ["col", "0" * 10, "1" * 10, "2" * 10]
    # Multi-byte characters count as bytes, not characters.
    text, truncated = render_table(["c"], [["é" * 10]] * 3, 30)
    assert truncated is True
    assert text == "c\n" + "é" * 10


def test_json_value_makes_database_values_json_safe():
    moment = datetime.datetime(2026, 1, 1, 12, 30, tzinfo=datetime.UTC)
    ident = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    assert json_value(decimal.Decimal("1.50")) == "1.50"
    assert json_value(moment) == "2026-01-01T12:30:00+00:00"
    assert json_value(datetime.date(2026, 1, 2)) == "2026-01-02"
    assert json_value(datetime.time(3, 4, 5)) == "03:04:05"
    assert json_value(datetime.timedelta(days=1, hours=2)) == "1 day, 2:00:00"
    assert json_value(ident) == str(ident)
    assert json_value(b"\x00\xff") == "base64:" + base64.b64encode(b"\x00\xff").decode()
    assert json_value(memoryview(b"ab")) == "base64:YWI="
    assert json_value(float("nan")) == "nan"
    assert json_value(float("inf")) == "inf"
    assert json_value(1.25) == 1.25
    assert json_value(True) is True
    assert json_value(7) == 7
    assert json_value(None) is None
    assert json_value((1, decimal.Decimal("2.0"))) == [1, "2.0"]
    assert json_value({1: moment}) == {"1": "2026-01-01T12:30:00+00:00"}
    assert json_value(Path("/a/b")) == "/a/b"  # anything else: its str()


def test_split_statements_keeps_a_long_string_of_semicolons_whole():
    text = "select '" + ";" * 200_000 + "'; select 2"
    assert split_statements(text) == ["select '" + ";" * 200_000 + "';", "select 2"]


def test_a_mysql_comment_only_tail_is_dropped_but_nothing_else():
    from gateway.connectors.mysql import without_comment_tail as strip

    assert strip("insert into t values (1); -- done\n/* really */") == "insert into t values (1);"
    assert strip("select 1; select 2") == "select 1; select 2"
    assert strip("select '-- not a comment;'") == "select '-- not a comment;'"


def test_mysql_tls_settings_are_validated_and_used(gw, mysql_target):
    with pytest.raises(InvalidInput, match="ssl_mode"):
        gw.create("mysql", dict(mysql_target, ssl_mode="sometimes"))
    # The local MariaDB has no TLS: asking for it must fail to connect, not silently go plaintext.
    name = gw.create("mysql", dict(mysql_target, ssl_mode="required"))
    result = gw.test(name)
    assert result["ok"] is False
    plain = gw.create("mysql", dict(mysql_target, ssl_mode="preferred"))
    assert gw.test(plain)["ok"] is True


def test_rendering_and_json_rows_a_column_at_a_time_equal_the_cell_by_cell_definitions():
    """`_render_lines` (one cell at a time, pinned by the tests above) is render_table's definition."""
    import random

    from gateway.connectors.base import _render_lines, json_rows

    pool = [
        None, True, False, 0, -7, 2**70, 1.5, float("nan"), float("inf"), "plain", "", "tab\there",
        "new\nline", "back\\slash", "é ü 漢", decimal.Decimal("1.50"), datetime.date(2026, 1, 2),
        b"\x00\xff", [1, "a", None], {"k": [1, 2]}, uuid.UUID(int=5),
    ]  # fmt: skip
    kinds = [[None, "a", "b"], [1, 2, None, True], pool, ["x", "y\tz"], [1.25, 2.5]]
    rng = random.Random(12)
    for _ in range(400):
        width = rng.randint(0, 4)
        columns = [rng.choice(["a", "b", "name", "c\td", "é"]) for _ in range(width)]
        choices = [rng.choice(kinds) for _ in range(width)]
        raw = [tuple(rng.choice(c) for c in choices) for _ in range(rng.randint(0, 30))]
        rows = json_rows(raw)
        assert rows == [[json_value(v) for v in row] for row in raw]
        assert all(type(row) is list for row in rows)
        for cap in (10, 60, 400, 10_000):
            assert render_table(columns, rows, cap) == _render_lines(columns, rows, cap)
