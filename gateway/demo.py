"""The embedded demo: an organization, an admin, a SQLite shop database, and the local PostgreSQL
when one answers. Used by `make run`; idempotent."""

from __future__ import annotations

import random
import secrets
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from django.conf import settings
from django.db import transaction

from gateway.models import Connection
from gateway.services import connection_create_headless
from governance.models import Organization
from governance.services import org_create, token_issue, user_create

DEMO_ORG = "demo"
DEMO_ADMIN = "admin@demo.portcullis.local"

FIRST = (
    "Ada Alan Grace Linus Margaret Ken Barbara Dennis Frances Edsger Radia Guido Hedy John Katherine".split()
)
LAST = "Lovelace Turing Hopper Torvalds Hamilton Thompson Liskov Ritchie Allen Dijkstra Perlman Rossum Lamarr".split()
COUNTRIES = ["US", "GB", "DE", "FR", "NL", "SE", "JP", "BR", "IN", "CA"]
PRODUCTS = [
    ("Keyboard", 89.0),
    ("Monitor", 249.0),
    ("Mouse", 29.5),
    ("Laptop stand", 45.0),
    ("Headset", 119.0),
]


AREA_CODES = (212, 206, 303, 312, 404, 415, 512, 617)


def _luhn_complete(prefix: str) -> str:
    digits = [int(d) for d in prefix]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d -= 9 if d > 9 else 0
        total += d
    return prefix + str((10 - total % 10) % 10)


def build_demo_sqlite(path: Path, *, customers: int = 200, orders: int = 1000) -> None:
    """Write a small shop database: customers (with PII to mask later) and their orders."""
    rng = random.Random(42)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    conn.executescript(
        """
        create table customers (
            id integer primary key, name text not null, email text not null unique, phone text,
            card_number text, country text, created_at text not null);
        create table orders (
            id integer primary key, customer_id integer not null references customers(id),
            product text not null, quantity integer not null, amount real not null,
            status text not null, ordered_at text not null);
        create index orders_customer on orders(customer_id);
        """
    )
    start = datetime(2025, 1, 1)
    for cid in range(1, customers + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        conn.execute(
            "insert into customers values (?, ?, ?, ?, ?, ?, ?)",
            (
                cid,
                f"{first} {last}",
                f"{first.lower()}.{last.lower()}{cid}@example.com",
                # Real-shaped, valid to libphonenumber, and fictional: 555-0100..0199 is reserved
                # for fiction in the North American plan (the old +1-555-xxx-xxxx is no number at
                # all, so phone masking appeared not to work on the demo).
                f"+1 {rng.choice(AREA_CODES)}-555-01{rng.randint(0, 99):02d}",
                _luhn_complete("4" + "".join(str(rng.randint(0, 9)) for _ in range(14))),
                rng.choice(COUNTRIES),
                (start + timedelta(days=rng.randint(0, 600))).isoformat(),
            ),
        )
    for oid in range(1, orders + 1):
        product, price = rng.choice(PRODUCTS)
        quantity = rng.randint(1, 4)
        conn.execute(
            "insert into orders values (?, ?, ?, ?, ?, ?, ?)",
            (
                oid,
                rng.randint(1, customers),
                product,
                quantity,
                round(price * quantity, 2),
                rng.choice(["paid", "paid", "paid", "shipped", "refunded"]),
                (start + timedelta(minutes=rng.randint(0, 600 * 24 * 60))).isoformat(),
            ),
        )
    conn.commit()
    conn.close()
    tmp.replace(path)


def _postgres_reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def seed(*, postgres_dsn: str) -> dict:
    """Create the demo once. Returns what to tell the user; credentials only on the first run."""
    report = {"created": False, "connections": []}
    org = Organization.objects.filter(name=DEMO_ORG).first()
    demo_db = Path(settings.DATA_DIR) / "demo" / "shop.sqlite3"
    if not demo_db.exists():
        build_demo_sqlite(demo_db)
    if org is None:
        password = secrets.token_urlsafe(12)
        with transaction.atomic():
            org = org_create(name=DEMO_ORG)
            admin = user_create(
                org=org, email=DEMO_ADMIN, name="Demo Admin", groups=["admin"], password=password
            )
            _, token = token_issue(user=admin, name="make-run", capability="admin")
        report.update(created=True, email=DEMO_ADMIN, password=password, token=token)
    if not Connection.objects.filter(org=org, name="demo-sqlite").exists():
        connection_create_headless(
            org=org,
            name="demo-sqlite",
            kind="sqlite",
            settings={"path": str(demo_db)},
            options={"description": "Demo shop: customers (emails, phones, card numbers) and orders"},
        )
    if not Connection.objects.filter(org=org, name="demo-postgres").exists() and _postgres_reachable(
        postgres_dsn
    ):
        params = psycopg.conninfo.conninfo_to_dict(postgres_dsn)
        values = {
            "host": params.get("host", "127.0.0.1"),
            "port": int(params.get("port", 5432)),
            "database": params.get("dbname", "postgres"),
            "user": params.get("user", "postgres"),
        }
        if params.get("password"):
            values["password"] = params["password"]
        connection_create_headless(
            org=org,
            name="demo-postgres",
            kind="postgres",
            settings=values,
            options={"description": "The local PostgreSQL server"},
        )
    report["connections"] = list(Connection.objects.filter(org=org).values_list("name", flat=True))
    return report
