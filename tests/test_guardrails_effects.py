"""Issue 14 attacks on real PostgreSQL and MariaDB, through exec: statements judged by what the
server will run (escapes decoded as the server decodes them), by effect (upserts, MERGE, REPLACE,
multi-table forms, CREATE OR REPLACE TABLE, stored bodies), server-side side effects denied by
default, and the affected-rows ceiling.

Every attack is run by a standard user against a connection whose rule denies DROP/TRUNCATE/ALTER
and requires a real WHERE; each must be blocked, leave the target exactly as it was (rows,
tables, rules, triggers, events), and `guardrails_test` / `exec_explain` must say the same as
exec. The benign look-alikes must pass all three and run.
"""

from __future__ import annotations

import time

import psycopg
import pymysql
import pytest

from gateway import pipeline
from gateway.services import connection_create_headless
from governance import rules
from sessions.models import SessionStatus

RULE = {"input": {"sql": {"deny_statements": ["drop", "truncate", "alter"], "require_where": True}}}

ATTACKS = {
    "postgres": [
        # Escapes the server decodes: \xHH, octal, \u, \U in E'' strings; U&'' with UESCAPE.
        r"DO E'BEGIN \x44ELETE FROM items; END'",
        r"DO E'BEGIN \104ELETE FROM items; END'",
        r"DO E'BEGIN \u0044ELETE FROM items; END'",
        r"DO E'BEGIN \U00000044ELETE FROM items; END'",
        r"DO U&'BEGIN \0044ELETE FROM items; END'",
        r"DO U&'BEGIN !0044ELETE FROM items; END' UESCAPE '!'",
        r"DO U&'BEGIN \+000044ELETE FROM items; END'",
        "DO 'BEGIN DELETE '\n'FROM items; END'",
        r"DO $$BEGIN EXECUTE E'\x44ELETE FROM items'; END$$",
        r"DO $x$BEGIN EXECUTE U&'\0054RUNCATE items'; END$x$",
        r"SELECT query_to_xml(E'\x44ELETE FROM items RETURNING 1', true, true, '')",
        r"CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS E'\x44ELETE FROM items'",
        r"PREPARE p AS DELETE FROM items; EXECUTE p",
        "CREATE PROCEDURE wipe() LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DELETE FROM ' || 'items'; END $$",
        r"CREATE PROCEDURE wipe() LANGUAGE sql AS E'UPDATE items SET price = \x30'",
        # Writes in disguise.
        "MERGE INTO items t USING (SELECT 1 AS id) s ON true WHEN MATCHED THEN UPDATE SET price = NULL",
        "MERGE INTO items t USING items s ON t.id = s.id WHEN MATCHED THEN DELETE",
        "MERGE INTO items t USING items s ON t.id = s.id WHEN MATCHED AND 1 = 1 THEN UPDATE SET price = 0",
        "INSERT INTO items (id, name) SELECT id, name FROM items ON CONFLICT (id) DO UPDATE SET price = NULL",
        "UPDATE items SET price = 0 FROM (SELECT 1 AS one) o WHERE o.one = 1",
        "UPDATE items SET price = 0 FROM side WHERE side.id = 1",
        "DELETE FROM items USING (SELECT 1 AS one) o WHERE o.one = 1",
        # Stored for later.
        "CREATE RULE sneaky AS ON INSERT TO side DO ALSO DELETE FROM items",
        "CREATE OR REPLACE RULE sneaky AS ON UPDATE TO side DO ALSO UPDATE items SET price = 0",
        # Side effects on the server, denied by default.
        "COPY items TO PROGRAM 'true'",
        "COPY (SELECT 1) TO '/tmp/portcullis-i14-copy'",
        "SELECT lo_import('/etc/hostname')",
        "SELECT pg_read_file('/etc/hostname')",
        "ALTER SYSTEM SET work_mem = '5MB'",
        "CREATE FUNCTION sh() RETURNS int LANGUAGE c AS 'libc', 'system'",
    ],
    "mysql": [
        r"PREPARE s FROM 'DEL\ETE FROM items'; EXECUTE s",
        "PREPARE s FROM 'DELETE ' 'FROM items'; EXECUTE s",
        "PREPARE s FROM X'44454C4554452046524F4D206974656D73'; EXECUTE s",
        "SET @q = 'SELECT 1'; SELECT @q := 'DELETE FROM items'; PREPARE s FROM @q; EXECUTE s",
        "REPLACE INTO items SELECT id, name, NULL FROM items",
        "INSERT INTO items (id, name) SELECT id, name FROM items ON DUPLICATE KEY UPDATE price = NULL",
        "UPDATE items JOIN side ON 1 = 1 SET items.price = 0",
        "DELETE items FROM items JOIN side ON side.id = side.id",
        "UPDATE items JOIN side ON side.id = side.id SET items.price = 0 WHERE side.id = 1",
        "DELETE items FROM items JOIN side ON 1 = 1 WHERE side.id = 1",
        "CREATE OR REPLACE TABLE items (id INT)",
        "CREATE TRIGGER sneaky AFTER INSERT ON side FOR EACH ROW DELETE FROM items",
        "CREATE TRIGGER sneaky AFTER INSERT ON side FOR EACH ROW BEGIN DELETE FROM items; END",
        "CREATE EVENT sneaky ON SCHEDULE AT CURRENT_TIMESTAMP DO DELETE FROM items",
        "CREATE PROCEDURE wipe() DELETE FROM items",
        "SET GLOBAL max_connections = 11",
        "SELECT load_file('/etc/hostname')",
    ],
}

BENIGN = {
    "postgres": [
        "SELECT name FROM items WHERE name LIKE '%DELETE%' OR name = E'\\x44ROP'",
        "SELECT 'MERGE INTO items ... WHEN MATCHED THEN DELETE' AS text",
        "INSERT INTO items (id, name, price) VALUES (1, 'item 1', 1.5) "
        "ON CONFLICT (id) DO UPDATE SET price = excluded.price",
        "MERGE INTO items t USING (VALUES (2, 'item 2')) s(id, name) ON t.id = s.id "
        "WHEN MATCHED THEN UPDATE SET name = s.name",
        "UPDATE items SET price = price FROM (SELECT 3 AS id) o WHERE items.id = o.id",
        r"DO E'BEGIN PERFORM 1; END'",
        "SELECT 'COPY items TO PROGRAM rm' AS text, 'lo_import' AS fn",
    ],
    "mysql": [
        "SELECT name FROM items WHERE name LIKE '%DELETE%'",
        "REPLACE INTO items (id, name, price) VALUES (1, 'alpha', 1.50)",
        "INSERT INTO items (id, name, price) VALUES (2, 'beta', 2.25) ON DUPLICATE KEY UPDATE price = 2.25",
        "PREPARE s FROM 'SELECT COUNT(*) FROM items WHERE name = ''DELETE'''; EXECUTE s",
        "UPDATE items JOIN side ON side.id = items.id SET items.price = items.price WHERE items.id = 1",
    ],
}


def _pg_fingerprint(settings) -> tuple:
    with psycopg.connect(
        host=settings["host"], port=settings["port"], dbname=settings["database"], user=settings["user"]
    ) as conn:
        rows = conn.execute(
            "select md5(coalesce(string_agg(t::text, ',' order by id), '')) from items t"
        ).fetchone()
        rules_ = conn.execute("select count(*) from pg_rules where schemaname = 'public'").fetchone()
        funcs = conn.execute(
            "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace where nspname = 'public'"
        ).fetchone()
        tables = conn.execute(
            "select string_agg(tablename, ',' order by tablename) from pg_tables"
        ).fetchone()
        setting = conn.execute("select count(*) from pg_file_settings where name = 'work_mem'").fetchone()
        los = conn.execute("select count(*) from pg_largeobject_metadata").fetchone()
    return rows + rules_ + funcs + tables + setting + los


def _my_fingerprint(settings) -> tuple:
    conn = pymysql.connect(host=settings["host"], user=settings["user"], database=settings["database"])
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT MD5(COALESCE(GROUP_CONCAT(CONCAT_WS('|', id, name, price) ORDER BY id), '')) FROM items"
            )
            rows = cur.fetchone()
            cur.execute("SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE()")
            trig = cur.fetchone()
            cur.execute("SELECT COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE()")
            ev = cur.fetchone()
            cur.execute(
                "SELECT GROUP_CONCAT(CONCAT(table_name, ':', create_time) ORDER BY table_name) "
                "FROM information_schema.tables WHERE table_schema = DATABASE()"
            )
            tables = cur.fetchone()
            cur.execute("SELECT @@GLOBAL.max_connections")
            conf = cur.fetchone()
    finally:
        conn.close()
    return rows + trig + ev + tables + conf


@pytest.fixture(params=["postgres", "mysql"])
def target(request, cast, transactional_db):
    kind = request.param
    settings = request.getfixturevalue("pg_target" if kind == "postgres" else "mysql_target")
    connection_create_headless(org=cast.acme, name="setup", kind=kind, settings=settings, options={})
    connection_create_headless(org=cast.acme, name="t", kind=kind, settings=settings, options={})
    admin = cast.alice.actor()
    _run(admin, "setup", "create table side (id int primary key)")
    _run(admin, "setup", "insert into side values (1), (2)")
    rules.guardrail_create(actor=admin, name="strict", connections=["t"], **RULE)
    yield kind, settings
    _run(admin, "setup", "drop table side")


def _run(actor, connection, text):
    session = pipeline.exec_start(actor=actor, connection_name=connection, input=text)
    deadline = time.monotonic() + 60
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.02)
        session.refresh_from_db()
    return session


def _fingerprint(kind, settings):
    return _pg_fingerprint(settings) if kind == "postgres" else _my_fingerprint(settings)


def _verdicts(cast, text):
    tested = rules.guardrail_test(actor=cast.alice.actor(), input=text, connection_name="t")
    explained = pipeline.exec_explain(actor=cast.bob.actor(), connection_name="t", input=text)
    return tested["blocked"], not explained["would_run"]


def test_every_attack_is_blocked_and_the_target_is_unchanged(cast, target):
    kind, settings = target
    bob = cast.bob.actor()
    for text in ATTACKS[kind]:
        before = _fingerprint(kind, settings)
        session = _run(bob, "t", text)
        assert session.status == SessionStatus.BLOCKED, (
            kind,
            text,
            session.status,
            session.output,
            session.error,
        )
        assert _fingerprint(kind, settings) == before, (kind, text)
        assert _verdicts(cast, text) == (True, True), (kind, text)


def test_benign_look_alikes_pass_and_run(cast, target):
    kind, _ = target
    bob = cast.bob.actor()
    for text in BENIGN[kind]:
        assert _verdicts(cast, text) == (False, False), (kind, text)
        session = _run(bob, "t", text)
        assert session.status == SessionStatus.DONE, (kind, text, session.status, session.error)
        assert session.exit_code == 0, (kind, text, session.output)


def test_a_side_effect_runs_when_the_rule_allows_its_class_by_name(cast, target):
    kind, _ = target
    admin = cast.alice.actor()
    text = "SELECT pg_read_file('PG_VERSION')" if kind == "postgres" else "SELECT load_file('/etc/hostname')"
    assert _run(cast.bob.actor(), "t", text).status == SessionStatus.BLOCKED
    rules.guardrail_update(
        actor=admin,
        ref="strict",
        input={"sql": {**RULE["input"]["sql"], "allow_side_effects": ["file"]}},
    )
    assert _verdicts(cast, text) == (False, False)
    session = _run(cast.bob.actor(), "t", text)
    assert session.status == SessionStatus.DONE, session.error


def test_the_affected_rows_ceiling_rolls_back_and_blocks(cast, target):
    """WHEREs that are always true in ways no parser can prove: the server counts the rows."""
    kind, settings = target
    admin, bob = cast.alice.actor(), cast.bob.actor()
    rules.guardrail_create(
        actor=admin, name="ceiling", connections=["t"], input={"sql": {"max_affected_rows": 2}}
    )
    sneaky = [
        "UPDATE items SET price = price + 1 WHERE id IN (SELECT id FROM items)",
        "DELETE FROM items WHERE price >= 0 OR price < 5 OR price IS NULL",
    ]
    if kind == "postgres":
        sneaky.append(
            "WITH d AS (UPDATE items SET price = 0 WHERE id >= 0 RETURNING 1) SELECT count(*) FROM d"
        )
        sneaky.append(
            "UPDATE items SET price = 1 WHERE id = 1; UPDATE items SET price = 2 WHERE id BETWEEN 2 AND 9"
        )
    for text in sneaky:
        before = _fingerprint(kind, settings)
        assert _verdicts(cast, text) == (False, False), text  # no parser sees it
        session = _run(bob, "t", text)
        assert session.status == SessionStatus.BLOCKED, (text, session.status, session.error, session.output)
        assert "rolled back" in session.error and "ceiling" in session.error
        assert session.guardrail_findings[0]["condition"] == "sql.max_affected_rows"
        assert _fingerprint(kind, settings) == before, text
    # Within the ceiling: runs and commits.
    session = _run(bob, "t", "UPDATE items SET name = name WHERE id IN (1, 2)")
    assert session.status == SessionStatus.DONE and session.exit_code == 0, (session.error, session.output)
    # What would end or escape the counted transaction is refused up front.
    for text in ("COMMIT", "UPDATE items SET price = price WHERE id = 1; COMMIT"):
        assert _verdicts(cast, text)[0] is True
        assert _run(bob, "t", text).status == SessionStatus.BLOCKED


PG_LITERALS = [
    r"E'\x44\x4fx\x4'",
    r"E'\104\1010\7'",
    r"E'\u00e9\U0001F600 \q\'\\'",
    r"E'\xc3\xa9'",
    r"E'\uD83D\uDE00'",
    r"U&'d\0061t\+000061 \\'",
    r"U&'d!0061t!!' UESCAPE '!'",
    "'a''b'\n  'c'",
    "E'\\x41'\n-- comment\n'\\x42'",
    "$q$it's $$ raw$q$",
]
MY_LITERALS = [
    r"'a\'b\%\_\q\Z\t'",
    "'DEL' 'ETE' \"x\"",
    r'"q""\""',
    "X'44524F50'",
    "_utf8mb4'caf\\u00e9'",
]


def test_string_literals_are_decoded_exactly_as_the_servers_decode_them(pg_target, mysql_target):
    from governance.guardrails.lexer import _lex

    with psycopg.connect(
        host=pg_target["host"], port=pg_target["port"], dbname=pg_target["database"], user=pg_target["user"]
    ) as conn:
        for literal in PG_LITERALS:
            server = conn.execute(f"select ({literal})::text").fetchone()[0]
            ours = [t.text for t in _lex(f"select {literal}", "postgres")[0] if t.kind == "str"]
            assert ours == [server], literal
    conn = pymysql.connect(host=mysql_target["host"], user=mysql_target["user"], charset="utf8mb4")
    try:
        with conn.cursor() as cur:
            for literal in MY_LITERALS:
                cur.execute(f"SELECT CONVERT({literal} USING utf8mb4)")
                server = cur.fetchone()[0]
                ours = [t.text for t in _lex(f"SELECT {literal}", "mysql")[0] if t.kind == "str"]
                assert ours[-1] == server, literal
    finally:
        conn.close()


@pytest.mark.parametrize(
    "literal",
    [r"E'\u12'", r"E'\uD83D'", r"E'\xff'", r"E'\000'", r"U&'\00'", r"U&'x' UESCAPE '+'", r"E'\v'"],
)
def test_literals_the_server_rejects_or_reads_ambiguously_fail_closed(literal):
    from governance.guardrails import Rule, evaluate_input, validate_conditions

    rule = Rule("r", validate_conditions({"sql": {"require_where": True}}, direction="input"), {})
    findings = evaluate_input([rule], f"DO {literal}", dialect="postgres")
    assert [f.condition for f in findings] == ["sql.parse_error"], literal
