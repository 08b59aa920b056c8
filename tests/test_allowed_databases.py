"""Issue 14: a connection stays in its database unless the admin lists others (`allowed_databases`),
for the schema tools and, on MySQL/MariaDB, for exec (qualified names, USE). Real servers."""

from __future__ import annotations

import time

import psycopg
import pymysql
import pytest

from gateway import pipeline
from gateway.services import connection_create_headless
from governance.errors import ConnectorError
from sessions.models import SessionStatus


def _run(actor, connection, text):
    session = pipeline.exec_start(actor=actor, connection_name=connection, input=text)
    deadline = time.monotonic() + 60
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.02)
        session.refresh_from_db()
    return session


@pytest.fixture
def pg_other(pg_target):
    name = f"{pg_target['database']}_other"
    admin = dict(host=pg_target["host"], port=pg_target["port"], user=pg_target["user"], dbname="postgres")
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")
        conn.execute(f"create database {name}")
    with psycopg.connect(**dict(admin, dbname=name), autocommit=True) as conn:
        conn.execute("create table payroll (id int, salary int)")
    yield name
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def my_other(mysql_target):
    name = f"{mysql_target['database']}_other"
    conn = pymysql.connect(host=mysql_target["host"], user=mysql_target["user"], autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
        cur.execute(f"CREATE TABLE {name}.payroll (id INT, salary INT)")
        cur.execute(f"INSERT INTO {name}.payroll VALUES (1, 100), (2, 200)")
    yield name, conn
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
    conn.close()


def test_postgres_schema_tools_stay_in_the_connection_database(cast, transactional_db, pg_target, pg_other):
    connection_create_headless(org=cast.acme, name="pg", kind="postgres", settings=pg_target, options={})
    bob = cast.bob.actor()
    names = [d["name"] for d in pipeline.schema_list(actor=bob, connection_name="pg", what="databases")]
    assert names == [pg_target["database"]]
    with pytest.raises(ConnectorError, match="outside this connection"):
        pipeline.schema_list(actor=bob, connection_name="pg", what="tables", database=pg_other)
    with pytest.raises(ConnectorError, match="outside this connection"):
        pipeline.schema_list(
            actor=bob, connection_name="pg", what="columns", database=pg_other, table="payroll"
        )
    own = pipeline.schema_list(actor=bob, connection_name="pg", what="tables")
    assert "items" in {t["name"] for t in own}
    # The admin lists the other database: now it may be read.
    connection_create_headless(
        org=cast.acme,
        name="pg2",
        kind="postgres",
        settings={**pg_target, "allowed_databases": [pg_other]},
        options={},
    )
    tables = pipeline.schema_list(actor=bob, connection_name="pg2", what="tables", database=pg_other)
    assert [t["name"] for t in tables] == ["payroll"]


def test_mysql_exec_and_schema_tools_stay_in_the_connection_database(
    cast, transactional_db, mysql_target, my_other
):
    other, conn = my_other
    connection_create_headless(org=cast.acme, name="my", kind="mysql", settings=mysql_target, options={})
    bob = cast.bob.actor()
    attacks = [
        f"SELECT * FROM {other}.payroll",
        f"UPDATE {other}.payroll SET salary = 0 WHERE id = 1",
        f"USE {other}; SELECT * FROM payroll",
        f"SELECT id FROM items WHERE id IN (SELECT id FROM `{other}`.`payroll`)",
        f"SHOW TABLES FROM {other}",
    ]
    for text in attacks:
        session = _run(bob, "my", text)
        assert session.status == SessionStatus.FAILED and "outside this connection" in session.error, (
            text,
            session.error,
        )
        assert "salary" not in session.output and "100" not in session.output
    with conn.cursor() as cur:
        cur.execute(f"SELECT SUM(salary) FROM {other}.payroll")
        assert cur.fetchone()[0] == 300
    # Benign: the connection's own database, qualified or not, and information_schema.
    for text in (
        "SELECT COUNT(*) FROM items",
        f"SELECT COUNT(*) FROM {mysql_target['database']}.items",
        "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()",
        "SELECT i.name FROM items i WHERE i.id = 1",
    ):
        session = _run(bob, "my", text)
        assert session.status == SessionStatus.DONE and session.exit_code == 0, (text, session.error)
    names = [d["name"] for d in pipeline.schema_list(actor=bob, connection_name="my", what="databases")]
    assert names == [mysql_target["database"]]
    with pytest.raises(ConnectorError, match="outside this connection"):
        pipeline.schema_list(actor=bob, connection_name="my", what="tables", database=other)
    connection_create_headless(
        org=cast.acme,
        name="my2",
        kind="mysql",
        settings={**mysql_target, "allowed_databases": [other]},
        options={},
    )
    session = _run(bob, "my2", f"SELECT SUM(salary) FROM {other}.payroll")
    assert session.status == SessionStatus.DONE and session.result["rows"][0][0] in (300, "300")
