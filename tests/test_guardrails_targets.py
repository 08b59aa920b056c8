"""Guardrails against real PostgreSQL, MariaDB and SQLite targets, through the pipeline.

The engine's own suite (test_guardrail_engine) holds the full bypass and benign corpora; here a
representative part of each runs for real: every bypass is blocked and leaves the target
untouched, and every benign statement passes the same rules and actually runs on the target.
"""

import sqlite3
import time

import pytest

from gateway import pipeline
from gateway.services import connection_create_headless
from governance import rules
from sessions.models import Session, SessionStatus

RULES = {
    "input": {
        "sql": {
            "deny_statements": ["drop", "truncate", "alter", "grant", "create"],
            "require_where": True,
            "deny_tables": ["secrets", "*.secrets"],
        }
    }
}

BYPASS = {
    "common": [
        "DROP TABLE items",
        "/* routine */ dRoP/**/TABLE items",
        "select 1; drop table items",
        "SELECT 1;\n-- harmless\nDROP TABLE items",
        "update items set price = 0",
        "delete from items where 1=1",
        "delete from items where 'a' = 'a' or id = 1",
        "select * from secrets",
        "select * from items where id in (select id from secrets)",
        "ＤＲＯＰ TABLE items",
        "create table copied as select * from items",
        "SELEC * FRM items",
    ],
    "postgres": [
        "WITH d AS (DELETE FROM items RETURNING *) SELECT count(*) FROM d",
        "DO $$ BEGIN EXECUTE 'DROP TABLE items'; END $$",
        'select * from "public"."secrets"',
        "BEGIN; TRUNCATE items; COMMIT",
        "explain analyze delete from items",
    ],
    "mysql": [
        "select * from `secrets`",
        "PREPARE s FROM 'DROP TABLE items'; EXECUTE s",
        "/*!50000 DROP TABLE items */",
    ],
    "sqlite": [
        'select * from "SECRETS"',
        "select * from main.secrets",
        "ALTER TABLE items RENAME TO gone",
    ],
}

BENIGN = {
    "common": [
        "select name from items where name like '%DROP%'",
        "select 'drop table items' as text",
        "with t as (select id from items) select count(*) from t",
        "select name, row_number() over (order by price) from items",
        "update items set price = price where id = 1",
        "select count(*) from items where price is not null",
    ],
    "postgres": [
        "select percentile_cont(0.5) within group (order by price) from items",
        "explain select * from items",
    ],
    "mysql": ["show tables", "explain select * from items"],
    "sqlite": ["explain query plan select * from items", "pragma table_info(items)"],
}


def _sqlite_target(path):
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        create table items (id integer primary key, name text, price real);
        insert into items (name, price) values ('a', 1.0), ('b', 2.0), ('DROP me', 3.0);
        create table secrets (id integer primary key, value text);
        insert into secrets (value) values ('s3cr3t');
        """
    )
    conn.commit()
    conn.close()
    return {"path": str(path)}


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request, cast, transactional_db, tmp_path):
    kind = request.param
    if kind == "postgres":
        settings = request.getfixturevalue("pg_target")
        setup = ["create table if not exists secrets (id int, value text)"]
    elif kind == "mysql":
        settings = request.getfixturevalue("mysql_target")
        setup = ["create table if not exists secrets (id int, value text)"]
    else:
        settings, setup = _sqlite_target(tmp_path / "t.sqlite3"), []
    admin = cast.alice.actor()
    setup_conn = connection_create_headless(
        org=cast.acme, name="setup", kind=kind, settings=settings, options={}
    )
    for statement in setup:
        _run(admin, "setup", statement)
    connection_create_headless(org=cast.acme, name="t", kind=kind, settings=settings, options={})
    rules.guardrail_create(actor=admin, name="strict", connections=["t"], **RULES)
    assert setup_conn
    yield kind
    if setup:  # the shared targets go back to how other suites expect them
        _run(admin, "setup", "drop table secrets")


def _run(actor, connection, text):
    session = pipeline.exec_start(actor=actor, connection_name=connection, input=text)
    deadline = time.monotonic() + 30
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.02)
        session.refresh_from_db()
    return session


def _count(actor, kind):
    session = _run(actor, "setup", "select count(*) from items")
    assert session.status == SessionStatus.DONE and session.exit_code == 0, session.output
    return session.result["rows"][0][0]


def test_every_bypass_is_blocked_and_nothing_runs(cast, target):
    bob = cast.bob.actor()
    before = _count(cast.alice.actor(), target)
    for text in BYPASS["common"] + BYPASS[target]:
        session = _run(bob, "t", text)
        assert session.status == SessionStatus.BLOCKED, (target, text, session.status, session.output)
        assert session.started_at is None, text
    assert _count(cast.alice.actor(), target) == before
    assert Session.objects.filter(connection_name="t", status=SessionStatus.BLOCKED).count() == len(
        BYPASS["common"] + BYPASS[target]
    )


def test_every_benign_statement_passes_and_runs_on_the_target(cast, target):
    bob = cast.bob.actor()
    for text in BENIGN["common"] + BENIGN[target]:
        session = _run(bob, "t", text)
        assert session.status == SessionStatus.DONE, (target, text, session.status, session.error)
        assert session.exit_code == 0, (target, text, session.output)
