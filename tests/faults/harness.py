"""The production shape on one machine, with every piece under the test's control.

`Harness` starts, in a temporary folder and on free loopback ports:

* a private PostgreSQL cluster (`initdb` + `pg_ctl`) for the gateway database, and a second one
  for the target database (table `execs`, see `TARGET_SCHEMA`; every statement logged), so that
  restarting the gateway's database does not touch the target and the target can be stopped alone;
* a private `redis-server` (broker, channel layer, cache);
* a TCP proxy in front of the target, so the target can be made unreachable on its own;
* two daphne replicas of `gateway.asgi` and a round-robin TCP balancer in front of them;
* a Celery worker (`-Q portcullis`) and Celery beat;

all with `DJANGO_SETTINGS_MODULE=tests.faults.fault_settings` (production settings, short beat
intervals) and the JSON-lines event sink on. Each piece can be killed (`kill9`), stopped and
started again. Nothing here touches the machine's shared PostgreSQL or Redis.

The cast (org acme): alice (admin), bob (engineering, the requester), frank (dba, the reviewer).
Connections: `target` (runs at once), `edge-target` (agent queue `edge`) and `reviewed` (an access
request rule makes every exec wait for a dba's approval); all reach the target database through
the proxy.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
import psycopg
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

TARGET_SCHEMA = """
create table execs (id bigserial primary key, marker text not null, at timestamptz not null default now());
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a condition that cannot be evaluated yet is "not yet"
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last error: {last_exc!r}")
        time.sleep(interval)


def pg_bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and Path(out, "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("no PostgreSQL server binaries (initdb) on this machine")
    return Path(candidates[-1]).parent


# --- processes ----------------------------------------------------------------------------------


class Proc:
    """A child process in its own session (process group), with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict, log: Path, ready: Callable[[Proc], bool]):
        self.name, self.argv, self.env, self.log, self._ready = name, argv, env, log, ready
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self, since_start: bool = False) -> str:
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return ""
        return data[self._log_offset if since_start else 0 :].decode(errors="replace")

    def start(self, wait: bool = True, timeout: float = 60) -> Proc:
        assert not self.alive, f"{self.name} is already running"
        self._log_offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as fh:
            fh.write(f"\n===== start #{self.starts + 1} of {self.name} =====\n".encode())
            self.process = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready():
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.log_text(True)[-3000:]}")
            return self._ready(self)

        try:
            wait_for(ready, timeout=timeout, what=f"{self.name} to be ready", interval=0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.log_text(True)[-3000:]}") from None

    def kill9(self) -> None:
        """SIGKILL the whole process group: no cleanup, no goodbye, like a crashed machine."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if not self.alive:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()


class PrivatePostgres:
    """A PostgreSQL cluster of our own: its own folder, port and socket folder."""

    def __init__(self, base: Path, port: int, extra_options: str = ""):
        self.bindir = pg_bindir()
        self.base, self.port, self.extra_options = base, port, extra_options
        self.data, self.sock, self.log = base / "data", base / "sock", base / "postgres.log"

    def _as_postgres(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, **kwargs)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            shutil.chown(self.sock, "postgres")
        done = self._as_postgres(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-N"]
        )
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off " + self.extra_options
        )
        done = self._as_postgres(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-o",
                options,
                "start",
            ],
            start_new_session=True,
        )
        if done.returncode:
            raise RuntimeError(
                f"pg_ctl start failed: {done.stdout}{done.stderr}\n{self.log.read_text()[-2000:]}"
            )

    def stop(self, mode: str = "fast") -> None:
        done = self._as_postgres(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
        )
        if done.returncode and "not running" not in done.stderr + done.stdout:
            raise RuntimeError(f"pg_ctl stop failed: {done.stdout}{done.stderr}")

    def kill9(self) -> None:
        """SIGKILL the postmaster; its backends notice and exit on their own."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="the postmaster to die")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres", **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=5, **kwargs)


class PrivateRedis:
    def __init__(self, base: Path, port: int):
        self.base, self.port = base, port
        self.log = base / "redis.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.base)]
        argv += ["--save", "", "--appendonly", "no"]
        with open(self.log, "ab") as fh:
            self.process = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ping, timeout=30, what="redis to answer PING")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """`SHUTDOWN NOSAVE`: the outage (the same command line brings it back, empty)."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown", "nosave"], capture_output=True)
        if self.process is not None:
            self.process.wait(timeout=30)

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class TcpForwarder:
    """A TCP forwarder on an asyncio loop in a background thread.

    As the balancer: round robin over `backends`, a backend that refuses the connection is skipped
    (like haproxy's redispatch), so a killed replica costs the client only the requests it had in
    flight. As the target's proxy: one backend, and `cut()` makes the target unreachable (no
    listener, live connections reset) until `restore()`.
    """

    def __init__(self, name: str, port: int, backends: list[tuple[str, int]]):
        self.name, self.port, self.backends = name, port, list(backends)
        self._rr = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Transport] = set()
        self.picks: list[int] = []  # which backend each accepted connection went to
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fwd-{name}", daemon=True)
        self._thread.start()
        self.restore()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _handle(self, reader, writer):
        self._conns.add(writer.transport)
        upstream = None
        for _ in range(len(self.backends)):
            index = self._rr % len(self.backends)
            self._rr += 1
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*self.backends[index]), 5)
                self.picks.append(index)
                break
            except (OSError, TimeoutError):
                continue
        if upstream is None:
            writer.transport.abort()
            self._conns.discard(writer.transport)
            return
        up_reader, up_writer = upstream
        self._conns.add(up_writer.transport)

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                try:
                    dst.write_eof() if dst.can_write_eof() else dst.close()
                except OSError:
                    pass

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                self._conns.discard(w.transport)

    async def _start(self):
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self):
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._conns):
            transport.abort()
        self._conns.clear()

    def restore(self) -> None:
        self._call(self._start())

    def cut(self) -> None:
        self._call(self._cut())

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


# --- the MCP client ---------------------------------------------------------------------------


@dataclass
class Answer:
    """What one tool call answered, classified the way the fault assertions count it."""

    kind: str  # ok | tool_error | internal_error | http_error | jsonrpc_error | transport
    data: dict | None = None
    text: str = ""
    status_code: int | None = None
    retry_after: str | None = None
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Agent:
    """The official MCP SDK client over real HTTP, one connection per call (agents reconnect).

    `call` never raises for what the gateway answers: it returns an `Answer`, so a scenario can
    count `internal error` answers, plain 500s and transport errors instead of stopping at the first.
    """

    def __init__(self, url: str, token: str, name: str = "agent"):
        self.url, self.token, self.name = url, token, name
        self.answers: list[tuple[str, Answer]] = []

    async def _call(self, tool: str, arguments: dict, timeout: float):
        from mcp.client import Client
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=httpx2.Timeout(30, read=timeout),
            event_hooks={"response": [self._remember_response]},
        )
        async with http, Client(streamable_http_client(self.url, http_client=http)) as client:
            await client.list_tools()
            return await client.call_tool(tool, arguments)

    async def _remember_response(self, response):
        if response.status_code >= 400:
            await response.aread()
            self._last_http = response

    def call(self, tool: str, arguments: dict | None = None, *, timeout: float = 60) -> Answer:
        self._last_http = None
        try:
            result = asyncio.run(self._call(tool, arguments or {}, timeout))
        except BaseException as group:  # noqa: BLE001 - classified below
            exc = _unwrap(group)
            if isinstance(exc, KeyboardInterrupt):
                raise exc from None
            answer = self._classify_exception(exc)
        else:
            if result.is_error:
                text = result.content[0].text if result.content else ""
                kind = "internal_error" if "internal error" in text.lower() else "tool_error"
                answer = Answer(kind, text=text)
            else:
                answer = Answer("ok", data=result.structured_content, text="")
        self.answers.append((tool, answer))
        return answer

    def _classify_exception(self, exc: BaseException) -> Answer:
        from mcp.shared.exceptions import MCPError

        response = getattr(self, "_last_http", None)
        if isinstance(exc, httpx2.HTTPStatusError):
            response = exc.response
        if response is not None and response.status_code >= 500:
            return Answer(
                "http_error",
                text=response.text[:500],
                status_code=response.status_code,
                retry_after=response.headers.get("retry-after"),
                content_type=response.headers.get("content-type"),
            )
        if isinstance(exc, MCPError):
            text = str(exc)
            kind = "internal_error" if "internal error" in text.lower() else "jsonrpc_error"
            return Answer(kind, text=text)
        return Answer("transport", text=f"{type(exc).__name__}: {exc}"[:500])

    def tool_arguments(self, tool: str) -> set[str]:
        """The argument names `tool` accepts (to use `idempotency_key` only where it exists)."""

        async def run():
            from mcp.client import Client
            from mcp.client.streamable_http import streamable_http_client

            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
            async with http, Client(streamable_http_client(self.url, http_client=http)) as client:
                listed = await client.list_tools()
                return next(t for t in listed.tools if t.name == tool).input_schema

        schema = asyncio.run(run())
        return set(schema.get("properties", {}))


# --- the harness --------------------------------------------------------------------------------


CAST_SCRIPT = """
import json
from governance.policy import Actor
from governance.services import org_create, token_issue, user_create
from gateway.services import connection_create_headless
from reviews import services as reviews

target = TARGET
acme = org_create(name="acme")
people = {
    "alice": user_create(org=acme, email="alice@acme.test", name="Alice", groups=["admin"]),
    "bob": user_create(org=acme, email="bob@acme.test", name="Bob", groups=["engineering"]),
    "frank": user_create(org=acme, email="frank@acme.test", name="Frank", groups=["dba"]),
}
tokens = {name: token_issue(user=user, name="faults", capability="admin")[1] for name, user in people.items()}
for name in ("target", "reviewed"):
    connection_create_headless(org=acme, name=name, kind="postgres", settings=dict(target), options={})
connection_create_headless(
    org=acme, name="edge-target", kind="postgres", settings=dict(target), options={"agent_queue": "edge"}
)
alice = Actor.for_user(people["alice"], surface="web", client="faults")
reviews.access_rule_create(
    actor=alice, name="reviewed-writes", access_type="command", connections=["reviewed"], reviewer_groups=["dba"]
)
reviews.review_settings_update(actor=alice, mcp_decisions_enabled=True)
print("CAST=" + json.dumps({"tokens": tokens, "org_id": str(acme.pk)}))
"""


@dataclass
class Harness:
    base: Path
    pg: PrivatePostgres = field(init=False)
    target_pg: PrivatePostgres = field(init=False)
    redis: PrivateRedis = field(init=False)
    target_proxy: TcpForwarder = field(init=False)
    balancer: TcpForwarder = field(init=False)
    replicas: list[Proc] = field(init=False, default_factory=list)
    worker: Proc = field(init=False)
    beat: Proc = field(init=False)
    tokens: dict = field(init=False, default_factory=dict)
    runner_stale_seconds: int = 10
    agent_expiry_seconds: int = 8
    analysis_lease_seconds: int = 10

    def __post_init__(self):
        self.pg = PrivatePostgres(self.base / "pg", free_port())
        # The target aborts a statement whose client is gone (checked every 200 ms) instead of running
        # it to the end: a gateway killed mid-statement then leaves nothing half-known behind, and an
        # approved execution killed that way must be run again (or be executable again), never lost.
        # It logs every statement it receives: how often a marker's statement was attempted.
        self.target_pg = PrivatePostgres(
            self.base / "target-pg",
            free_port(),
            extra_options="-c client_connection_check_interval=200ms -c log_statement=all",
        )
        self.redis = PrivateRedis(self.base / "redis", free_port())
        self.events_path = self.base / "events.jsonl"
        self.logs = self.base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.replica_ports = [free_port(), free_port()]
        self.balancer_port = free_port()
        self.target_port = free_port()
        self._env = self._make_env()

    # -- environment

    def _make_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTCULLIS_", "PYTEST"))}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.faults.fault_settings",
            DATABASE_URL=self.pg.dsn("portcullis"),
            REDIS_URL=self.redis.url,
            PORTCULLIS_SECRET_KEY=Fernet.generate_key().decode() + "-faults-secret",
            PORTCULLIS_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
            PORTCULLIS_MASKING_KEY=Fernet.generate_key().decode(),
            PORTCULLIS_PUBLIC_URL=f"http://127.0.0.1:{self.balancer_port}",
            PORTCULLIS_ALLOWED_HOSTS="127.0.0.1,localhost",
            PORTCULLIS_DATA_DIR=str(self.base / "data"),
            PORTCULLIS_EVENTS_JSONL_PATH=str(self.events_path),
            PORTCULLIS_AUDIT_HEADS_INTERVAL_SECONDS="0",
            PORTCULLIS_EXEC_HANDOFF_SECONDS="5",
            PORTCULLIS_PROGRESS_INTERVAL_SECONDS="1",
            # main: the orphan sweep's heartbeat staleness; i12: leases on the database clock.
            PORTCULLIS_RUNNER_STALE_SECONDS=str(self.runner_stale_seconds),
            PORTCULLIS_SESSION_LEASE_SECONDS=str(self.runner_stale_seconds),
            PORTCULLIS_SESSION_DISPATCH_LEASE_SECONDS="5",
            PORTCULLIS_SWEEP_SECONDS="2",
            # A worker killed mid-batch: its analysis requests are claimed again this soon.
            PORTCULLIS_ANALYSIS_LEASE_SECONDS=str(self.analysis_lease_seconds),
            PORTCULLIS_AGENT_QUEUE_EXPIRY_SECONDS=str(self.agent_expiry_seconds),
            PORTCULLIS_LOG_LEVEL="INFO",
            # The suite's agents are not what the rate limits are for.
            PORTCULLIS_MCP_RATE_PER_TOKEN="100000/minute",
            PORTCULLIS_API_RATE_PER_TOKEN="100000/minute",
            PORTCULLIS_API_RATE_PER_ORG="100000/minute",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        return env

    def env(self, **extra) -> dict:
        return {**self._env, **extra}

    def manage(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode:
            raise RuntimeError(
                f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done

    # -- start and stop

    def start(self) -> Harness:
        for cluster in (self.pg, self.target_pg):
            cluster.init()
            cluster.start()
        self.redis.start()
        with self.pg.connect() as conn:
            conn.execute("create database portcullis")
        with self.target_pg.connect() as conn:
            conn.execute("create database target")
        with self.target_pg.connect("target") as conn:
            conn.execute(TARGET_SCHEMA)
        self.target_proxy = TcpForwarder("target", self.target_port, [("127.0.0.1", self.target_pg.port)])
        self.manage("migrate", "--noinput", "-v", "0")
        self._make_cast()
        self.replicas = [self._daphne(i) for i in range(2)]
        self.worker = Proc(
            "worker",
            [PYTHON, "-m", "celery", "-A", "gateway", "worker", "-Q", "portcullis", "-c", "2", "-l", "info"],
            self._env,
            self.logs / "worker.log",
            ready=lambda p: " ready." in p.log_text(True),
        )
        self.beat = Proc(
            "beat",
            [PYTHON, "-m", "celery", "-A", "gateway", "beat", "-l", "info"]
            + ["--schedule", str(self.base / "celerybeat-schedule"), "--pidfile", ""],
            self._env,
            self.logs / "beat.log",
            ready=lambda p: "beat: Starting" in p.log_text(True),
        )
        # An agent near the target, for `edge-target` (queue agent.<org id>.edge); not started here.
        self.agent_worker = Proc(
            "agent-worker",
            [PYTHON, "-m", "celery", "-A", "gateway", "worker", "-Q", f"agent.{self.org_id}.edge", "-c", "1"]
            + ["-l", "info", "-n", "agent@%h"],
            self._env,
            self.logs / "agent-worker.log",
            ready=lambda p: " ready." in p.log_text(True),
        )
        for proc in (*self.replicas, self.worker, self.beat):
            proc.start(wait=False)
        for proc in (*self.replicas, self.worker, self.beat):
            proc.wait_ready(90)
        self.balancer = TcpForwarder(
            "balancer", self.balancer_port, [("127.0.0.1", port) for port in self.replica_ports]
        )
        return self

    def _daphne(self, index: int) -> Proc:
        port = self.replica_ports[index]

        def healthy(_proc) -> bool:
            return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200

        return Proc(
            f"replica-{'ab'[index]}",
            [PYTHON, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"],
            self.env(PORT=str(port)),
            self.logs / f"replica-{'ab'[index]}.log",
            ready=healthy,
        )

    def _make_cast(self) -> None:
        target = {"host": "127.0.0.1", "port": self.target_port, "database": "target", "user": "postgres"}
        done = self.manage("shell", "-c", CAST_SCRIPT.replace("TARGET", repr(target)))
        line = next(line for line in done.stdout.splitlines() if line.startswith("CAST="))
        cast = json.loads(line[len("CAST=") :])
        self.tokens, self.org_id = cast["tokens"], cast["org_id"]

    def close(self) -> None:
        pieces = ("worker", "beat", "agent_worker")
        for proc in (*self.replicas, *(getattr(self, name, None) for name in pieces)):
            if proc is not None:
                proc.kill9()
        for closer in (
            lambda: self.balancer.close(),
            lambda: self.target_proxy.close(),
            self.redis.kill9,
            lambda: self.pg.stop("immediate"),
            lambda: self.target_pg.stop("immediate"),
        ):
            try:
                closer()
            except Exception:  # noqa: BLE001 - stop everything we can
                pass

    def keep_logs(self, dest: Path) -> None:
        """Copy the process logs and the event file somewhere that outlives the run (for FINDINGS)."""
        dest.mkdir(parents=True, exist_ok=True)
        for path in [*self.logs.glob("*.log"), self.events_path, self.pg.log, self.redis.log]:
            if path.exists():
                shutil.copy(path, dest / path.name)

    # -- clients

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.balancer_port}/api/mcp"

    def replica_url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.replica_ports[index]}/api/mcp"

    def agent(self, who: str, replica: int | None = None) -> Agent:
        url = self.url if replica is None else self.replica_url(replica)
        return Agent(url, self.tokens[who], name=who)

    def ensure_replicas(self) -> None:
        """Start the replicas that are down (after a kill) and wait until all answer /healthz."""
        for proc in self.replicas:
            if not proc.alive:
                proc.start(wait=False)
        for proc in self.replicas:
            proc.wait_ready(90)

    def replica_running(self, runner: str) -> int | None:
        """Which replica a session's runner id (`host:pid:random`) belongs to."""
        try:
            pid = int(runner.split(":")[1])
        except (IndexError, ValueError):
            return None
        for index, proc in enumerate(self.replicas):
            if proc.pid == pid:
                return index
        return None

    # -- reading the truth

    def gateway_rows(self, sql: str, params=()) -> list[tuple]:
        with self.pg.connect("portcullis") as conn:
            return conn.execute(sql, params).fetchall()

    def target_rows(self, sql: str, params=()) -> list[tuple]:
        with self.target_pg.connect("target") as conn:
            return conn.execute(sql, params).fetchall()

    def target_count(self, marker: str) -> int:
        """How often the statement carrying `marker` took effect (committed) on the target."""
        return self.target_rows("select count(*) from execs where marker = %s", (marker,))[0][0]

    def target_attempts(self, marker: str) -> int:
        """How often the target received the statement carrying `marker` (its statement log)."""
        needle = f"values ('{marker}')"
        text = self.target_pg.log.read_text(errors="replace") if self.target_pg.log.exists() else ""
        return sum(1 for line in text.splitlines() if "statement: " in line and needle in line)

    def target_running(self, marker: str) -> bool:
        """Whether the statement carrying `marker` is running on the target right now."""
        rows = self.target_rows(
            "select count(*) from pg_stat_activity where state = 'active' and pid <> pg_backend_pid() "
            "and query like %s",
            (f"%values ('{marker}')%",),
        )
        return rows[0][0] > 0

    def session(self, session_id: str) -> dict:
        rows = self.gateway_rows(
            "select id, status, error, runner, ended_at, verb from records_session where id = %s",
            (session_id,),
        )
        if not rows:
            return {}
        keys = ("id", "status", "error", "runner", "ended_at", "verb")
        return dict(zip(keys, rows[0], strict=True))

    def sessions_since(self, since) -> list[dict]:
        """Every session created at or after `since` (a datetime from `db_now`)."""
        keys = ("id", "status", "error", "runner", "started_at", "ended_at", "verb", "input", "exit_code")
        rows = self.gateway_rows(
            f"select {', '.join(keys)} from records_session where created_at >= %s order by created_at",
            (since,),
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def db_now(self):
        return self.gateway_rows("select now()")[0][0]

    def review(self, review_id: str) -> dict:
        rows = self.gateway_rows(
            "select id, status, session_id from reviews_review where id = %s", (review_id,)
        )
        return dict(zip(("id", "status", "session_id"), rows[0], strict=True)) if rows else {}

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    def audit_verify(self) -> subprocess.CompletedProcess:
        return self.manage("audit_verify", check=False)


def make_harness() -> Harness:
    base = Path(tempfile.mkdtemp(prefix="portcullis-faults-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")  # the cluster's folder lives under it
        os.chmod(base, 0o755)
    return Harness(base)
