"""`make run`'s seeding: the demo org, its admin, the SQLite shop and the local PostgreSQL."""

import sqlite3
from pathlib import Path

from gateway import pipeline
from gateway.demo import DEMO_ADMIN, seed
from gateway.models import Connection
from governance.policy import Actor
from governance.services import token_authenticate


def test_it_seeds_once_and_keeps_the_data(db, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    dsn = settings.DATABASES["default"]
    first = seed(
        postgres_dsn=f"host={dsn['HOST'] or '127.0.0.1'} port={dsn['PORT'] or 5432} user={dsn['USER']} dbname=postgres"
    )
    assert first["created"] is True and first["email"] == DEMO_ADMIN
    assert set(first["connections"]) == {"demo-sqlite", "demo-postgres"}
    user, _ = token_authenticate(first["token"])
    assert user.email == DEMO_ADMIN

    shop = Path(Connection.objects.get(name="demo-sqlite").config["path"])
    with sqlite3.connect(shop) as conn:
        customers = conn.execute("select count(*), count(distinct email) from customers").fetchone()
        orders = conn.execute("select count(*) from orders").fetchone()[0]
        card = conn.execute("select card_number from customers limit 1").fetchone()[0]
    assert customers == (200, 200) and orders == 1000 and len(card) == 16

    second = seed(postgres_dsn="host=127.0.0.1 port=1 dbname=postgres")
    assert second["created"] is False and "token" not in second and "password" not in second
    assert set(second["connections"]) == {"demo-sqlite", "demo-postgres"}


def test_an_unreachable_postgres_is_simply_left_out(db, tmp_path, settings):
    settings.DATA_DIR = tmp_path
    report = seed(postgres_dsn="host=127.0.0.1 port=1 dbname=postgres connect_timeout=1")
    assert report["connections"] == ["demo-sqlite"]


def test_the_demo_shop_answers_through_the_pipeline(transactional_db, tmp_path, settings):
    import time

    settings.DATA_DIR = tmp_path
    report = seed(postgres_dsn="host=127.0.0.1 port=1 dbname=postgres")
    user, _ = token_authenticate(report["token"])
    actor = Actor.for_user(user, surface="cli")
    session = pipeline.exec_start(
        actor=actor, connection_name="demo-sqlite", input="select country, count(*) from customers group by 1"
    )
    deadline = time.monotonic() + 10
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.05)
        session.refresh_from_db()
    envelope = pipeline.exec_envelope(session)
    assert envelope["status"] == "completed" and envelope["columns"] == ["country", "count(*)"]
    assert sum(row[1] for row in envelope["rows"]) == 200


def test_the_demo_phones_are_real_numbers_that_masking_finds(transactional_db, tmp_path, settings):
    """Issue 14: every demo phone is valid to libphonenumber, and a PHONE_NUMBER rule at the default
    threshold masks them all (the column name is the context word that lifts them over 0.5)."""
    import time

    import phonenumbers

    from governance import rules

    settings.DATA_DIR = tmp_path
    report = seed(postgres_dsn="host=127.0.0.1 port=1 dbname=postgres")
    shop = Path(Connection.objects.get(name="demo-sqlite").config["path"])
    with sqlite3.connect(shop) as conn:
        phones = [row[0] for row in conn.execute("select phone from customers")]
    assert phones and all(phonenumbers.is_valid_number(phonenumbers.parse(p, None)) for p in phones)
    user, _ = token_authenticate(report["token"])
    actor = Actor.for_user(user, surface="cli")
    rules.masking_rule_create(
        actor=actor, name="phones", spec={"entities": ["PHONE_NUMBER"]}, connections=["demo-sqlite"]
    )
    session = pipeline.exec_start(
        actor=actor, connection_name="demo-sqlite", input="select phone from customers"
    )
    deadline = time.monotonic() + 30
    while not session.is_final and time.monotonic() < deadline:
        time.sleep(0.05)
        session.refresh_from_db()
    cells = [row[0] for row in session.result["rows"]]
    assert len(cells) == len(phones) and all(c == "<PHONE_NUMBER>" for c in cells), cells[:5]
