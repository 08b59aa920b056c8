"""The cast, the real targets, a live gateway process and an MCP client.

Cast (org "acme" unless said otherwise):
  alice  - admin
  bob    - standard user, in group "engineering"
  carol  - auditor
  dave   - standard user, in no group
  eve    - admin of the other org, "globex" (the outsider)

Targets are real: a SQLite file per org, a PostgreSQL database and a MariaDB database created for
the run. The live gateway is a daphne subprocess on the test database; tests that talk to it use
`transactional_db` so what they create is committed and visible to it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psycopg
import pymysql
import pytest
from django.conf import settings as django_settings
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.services import connection_create_headless
from governance.policy import Actor
from governance.services import org_create, token_issue, user_create

ROOT = Path(__file__).resolve().parent.parent
MYSQL_HOST = os.environ.get("PORTCULLIS_TEST_MYSQL_HOST", "127.0.0.1")


@pytest.fixture(scope="session", autouse=True)
def _relay_only_when_kicked():
    """This process's outbox relay delivers what this process commits, when it commits; its
    periodic retry would also pick up rows a live gateway process wrote, with this process's
    settings. Tests that need the retry call `outbox.relay_once()` themselves."""
    django_settings.SWEEP_SECONDS = 3600
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_exec_pool(django_db_setup):
    """Close the exec workers' database connections before the test database is dropped."""
    yield
    from django.db import connections

    from gateway import runner, upstream
    from gateway.connectors.mcp_pool import POOL
    from sessions import outbox

    outbox.stop()
    runner.shutdown()
    POOL.close_all()  # pooled stdio upstreams exit
    upstream.close_contract_threads()  # their database connections
    for connection in connections.all():
        connection.close()
        if hasattr(connection, "close_pool"):  # PostgreSQL's psycopg pool keeps idle connections
            connection.close_pool()


@pytest.fixture(autouse=True)
def _settle_background_writers(request):
    """Tests on committed data (transactional_db): before their tables are flushed, let this
    process's background writers (the exec pool, the outbox relay, embedded-mode analyses) finish,
    so the flush never races them into a deadlock or leaves rows behind for the next test."""
    if "transactional_db" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("transactional_db")  # set up first, so this tears down first
    yield
    from gateway import runner
    from sessions import outbox
    from sessions.services import analyses_in_background

    deadline = time.monotonic() + 120  # cleanup only
    while runner.running_here() and time.monotonic() < deadline:
        time.sleep(0.05)
    outbox.stop()  # after its current round, which may start analyses
    while analyses_in_background() and time.monotonic() < deadline:
        time.sleep(0.05)


# --- the cast ----------------------------------------------------------------------------------


@dataclass
class Person:
    user: object
    token: str

    def actor(self, surface: str = "mcp") -> Actor:
        return Actor.for_user(self.user, surface=surface, client="pytest")


@dataclass
class Cast:
    acme: object
    globex: object
    alice: Person
    bob: Person
    carol: Person
    dave: Person
    eve: Person


def _person(org, email, groups):
    user = user_create(org=org, email=email, name=email.split("@")[0].title(), groups=groups)
    # The cast's tokens carry no ceiling (capability admin), so each person acts with their own role.
    _, raw = token_issue(user=user, name="pytest", capability="admin")
    return Person(user=user, token=raw)


@pytest.fixture
def cast(db) -> Cast:
    acme = org_create(name="acme")
    globex = org_create(name="globex")
    return Cast(
        acme=acme,
        globex=globex,
        alice=_person(acme, "alice@acme.test", ["admin"]),
        bob=_person(acme, "bob@acme.test", ["engineering"]),
        carol=_person(acme, "carol@acme.test", ["auditor"]),
        dave=_person(acme, "dave@acme.test", []),
        eve=_person(globex, "eve@globex.test", ["admin"]),
    )


# --- targets -----------------------------------------------------------------------------------


def make_shop_sqlite(path: Path, marker: str) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(
        f"""
        create table customers (id integer primary key, name text, email text);
        insert into customers (name, email) values ('{marker} one', 'one@{marker}.test'),
                                                   ('{marker} two', 'two@{marker}.test'),
                                                   ('{marker} three', 'three@{marker}.test');
        """
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
def shops(cast, tmp_path):
    """A connection named "shop" in each org, on different files with different data."""
    acme_file = make_shop_sqlite(tmp_path / "acme.sqlite3", "acme")
    globex_file = make_shop_sqlite(tmp_path / "globex.sqlite3", "globex")
    return {
        "acme": connection_create_headless(
            org=cast.acme, name="shop", kind="sqlite", settings={"path": str(acme_file)}, options={}
        ),
        "globex": connection_create_headless(
            org=cast.globex, name="shop", kind="sqlite", settings={"path": str(globex_file)}, options={}
        ),
    }


def _pg_admin_dsn() -> dict:
    params = psycopg.conninfo.conninfo_to_dict(django_settings.DATABASE_URL)
    params["dbname"] = "postgres"
    return params


def _target_name() -> str:
    """Named after this run's test database, so runs on different DATABASE_URLs never collide."""
    return f"{django_settings.DATABASES['default']['NAME']}_target"


@pytest.fixture(scope="session")
def pg_target(django_db_setup):
    """A real PostgreSQL database with a few tables, and the settings to reach it."""
    PG_TARGET_DB = _target_name()
    admin = _pg_admin_dsn()
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {PG_TARGET_DB} with (force)")
        conn.execute(f"create database {PG_TARGET_DB}")
    target = dict(admin, dbname=PG_TARGET_DB)
    with psycopg.connect(**target, autocommit=True) as conn:
        conn.execute(
            """
            create table items (id serial primary key, name text not null, price numeric(10,2), created timestamptz
                                default '2026-01-01T00:00:00Z');
            insert into items (name, price) select 'item ' || g, g * 1.5 from generate_series(1, 50) g;
            create schema billing;
            create table billing.invoices (id int primary key, total numeric);
            """
        )
    settings = {
        "host": admin.get("host", "127.0.0.1"),
        "port": int(admin.get("port", 5432)),
        "database": PG_TARGET_DB,
        "user": admin.get("user", "postgres"),
    }
    if admin.get("password"):
        settings["password"] = admin["password"]
    yield settings
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f"drop database if exists {PG_TARGET_DB} with (force)")


@pytest.fixture(scope="session")
def mysql_target(django_db_setup):
    """A real MariaDB database. Skipped (loudly) when MariaDB is not running, except in CI."""
    MYSQL_TARGET_DB = _target_name()
    try:
        conn = pymysql.connect(host=MYSQL_HOST, user="root", password="", connect_timeout=3, autocommit=True)
    except pymysql.Error as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"MariaDB is not reachable at {MYSQL_HOST}:3306 ({exc}); CI runs these")
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_TARGET_DB}")
        cur.execute(f"CREATE DATABASE {MYSQL_TARGET_DB}")
        cur.execute(f"USE {MYSQL_TARGET_DB}")
        cur.execute(
            "CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(50), price DECIMAL(10,2))"
        )
        cur.execute("INSERT INTO items (name, price) VALUES ('alpha', 1.50), ('beta', 2.25), ('gamma', 3.00)")
    yield {"host": MYSQL_HOST, "port": 3306, "database": MYSQL_TARGET_DB, "user": "root"}
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {MYSQL_TARGET_DB}")
    conn.close()


# --- the live gateway --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def mcp_url(self) -> str:
        return f"{self.url}/api/mcp"


def gateway_env(port: int | None = None) -> dict:
    """The environment of a gateway process (daphne or a Celery worker) on this run's test database."""
    db = django_settings.DATABASES["default"]
    params = psycopg.conninfo.conninfo_to_dict(django_settings.DATABASE_URL)
    user = params.get("user", "postgres")
    password = f":{params['password']}" if params.get("password") else ""
    host, db_port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"postgresql://{user}{password}@{host}:{db_port}/{db['NAME']}",
        PORTCULLIS_COMMAND_CONNECTIONS="true",
        PORTCULLIS_EXEC_HANDOFF_SECONDS="2",
        PORTCULLIS_PROGRESS_INTERVAL_SECONDS="1",
        PYTHONUNBUFFERED="1",  # the process log is complete even when the test stops it
        # No periodic sweep: it would relay this run's outbox rows (the pytest process's too) with
        # its own settings, under the feet of tests that watch their own process deliver them.
        # The sweep is tested in-process (test_durable_core) and in the fault suite.
        PORTCULLIS_SWEEP_SECONDS="3600",
    )
    if port is not None:
        env["PORT"] = str(port)
    return env


# The two ASGI servers the gateway is run under (docs/operations.md, "The ASGI server"): the same
# flags as `make run` (SERVER=daphne|uvicorn).
SERVER_ARGV = {
    "daphne": lambda port: ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"],
    "uvicorn": lambda port: [
        "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers",
        "--no-access-log", "--timeout-graceful-shutdown", "10", "gateway.asgi:application",
    ],
}  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 15 s."""
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def start_server(kind: str, log: Path, **extra_env: str) -> LiveServer:
    """`kind` (daphne or uvicorn) serving gateway.asgi on the test database, with command
    connections on and a short handoff (and `extra_env`), once it answers /healthz."""
    port = _free_port()
    env = {**gateway_env(port), **extra_env}
    with open(log, "wb") as fh:
        process = subprocess.Popen(
            [sys.executable, *SERVER_ARGV[kind](port)], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(f"{url}/healthz", timeout=2).status_code == 200:
                return LiveServer(url=url, process=process, log=log)
        except httpx2.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the live gateway ({kind}) did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextmanager
def live_server(kind: str, log: Path, **extra_env: str):
    """`start_server`, stopped at the end (`stop`)."""
    server = start_server(kind, log, **extra_env)
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture(scope="session")
def gateway_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """daphne serving gateway.asgi on the test database, with command connections on and a short handoff."""
    with live_server("daphne", tmp_path_factory.mktemp("live") / "daphne.log") as server:
        yield server


@contextmanager
def celery_worker_process(queue: str, log_dir: Path, *, purge: bool = False):
    """A real `celery -A gateway worker -Q <queue>` on this run's test database and Redis broker."""
    if not django_settings.REDIS_URL:
        pytest.skip("a Celery worker needs a Redis broker (REDIS_URL)")
    log = log_dir / "worker.log"
    argv = [sys.executable, "-m", "celery", "-A", "gateway", "worker", "-Q", queue, "-c", "2", "-l", "info"]
    argv += ["--without-heartbeat", "--without-gossip", "--without-mingle"] + (["--purge"] if purge else [])
    with open(log, "wb") as fh:
        process = subprocess.Popen(argv, cwd=ROOT, env=gateway_env(), stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "ready" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield process
    finally:
        stop(process)


class MCP:
    """The official SDK client against the live gateway, one connection per call (as agents reconnect)."""

    def __init__(self, server: LiveServer, token: str | None, mode: str = "auto"):
        self.server = server
        self.token = token
        self.mode = mode

    def _http(self, timeout: float = 60):
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=timeout))

    async def _session(self, fn, timeout: float = 60):
        http = self._http(timeout)
        async with (
            http,
            Client(streamable_http_client(self.server.mcp_url, http_client=http), mode=self.mode) as c,
        ):
            await c.list_tools()  # the modern-era client validates results against the listing
            return await fn(c)

    def run(self, fn, timeout: float = 60):
        try:
            return asyncio.run(self._session(fn, timeout))
        except BaseExceptionGroup as group:  # the client's task group wraps what went wrong
            while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
                group = group.exceptions[0]
            raise group from None

    def call(self, tool: str, arguments: dict | None = None, *, progress=None, timeout: float = 60):
        return self.run(lambda c: c.call_tool(tool, arguments or {}, progress_callback=progress), timeout)

    def tools(self) -> list[str]:
        return self.run(lambda c: _names(c))


async def _names(client):
    result = await client.list_tools()
    return [t.name for t in result.tools]


@pytest.fixture
def mcp(gateway_server, transactional_db):
    """`mcp(person_or_token, mode="auto"|"legacy")` -> a client for that caller."""

    def make(who, mode: str = "auto") -> MCP:
        token = who.token if isinstance(who, Person) else who
        return MCP(gateway_server, token, mode)

    yield make
    _settle_live_sessions()


def _settle_live_sessions() -> None:
    """Before the test's tables are flushed: stop what the live gateway still runs for this test and
    wait until it has written its last record, so the flush never races (and deadlocks with) it."""
    from sessions.models import ACTIVE_STATUSES, Session

    active = Session.objects.filter(status__in=ACTIVE_STATUSES)
    active.update(cancel_requested=True)
    deadline = time.monotonic() + 120  # cleanup only: a live gateway cancels within a second or two
    while active.exists() and time.monotonic() < deadline:
        time.sleep(0.2)


def structured(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error, f"expected an error, got {result.structured_content}"
    return result.content[0].text
