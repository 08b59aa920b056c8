"""How much latency does the gateway add to `exec`? Self-contained; `make bench` runs it.

One run:
  1. creates its own gateway database (dropped again at the end), migrates it and seeds an org,
     an admin, a token and a postgres connection `bench-pg` with the management commands;
  2. starts daphne on a free port, as `make run` does;
  3. measures sequential latency: `SELECT 1` over a persistent psycopg connection (the baseline),
     then MCP `exec` of `SELECT 1` on `bench-pg` and MCP `me_get`, through the official SDK
     client over real HTTP in the modern era (mode="auto") and the handshake era
     (mode="legacy"), and as plain JSON-RPC POSTs (the same calls without the SDK client);
  4. measures `exec` and `me_get` interleaved call by call on one SDK session (exec p50 / me_get p50);
  5. measures throughput: C concurrent clients for D seconds looping `me_get`, then `exec`, in a
     separate load-generator process that sends plain JSON-RPC POSTs;
  6. measures CPU: daphne's CPU per `exec`, and a real Celery worker's CPU per analysis (the worker
     is started for this phase only), both from /proc/<pid>/stat;
  7. stops daphne and the worker, drops the database, prints a summary and writes JSON to
     bench/results/. It asserts no time limits: the figures are for reading.

bench/README.md explains what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import psycopg
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

ORG = "bench"
EMAIL = "bench@bench.test"
CONNECTION = "bench-pg"
QUERY = "SELECT 1"
EXEC_ARGS = {"connection_name": CONNECTION, "input": QUERY}
MODERN_VERSION = "2026-07-28"
DIRECT = "direct psycopg SELECT 1"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="measured sequential calls per series (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured calls before each series (default 20)")
    p.add_argument("--concurrency", type=int, default=20, help="concurrent clients for throughput (20)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run (default 10)")
    p.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="load-generator processes sharing the concurrent clients (default 1, separate from daphne)",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server holding the gateway database; the target is its `postgres` database",
    )
    p.add_argument("--db-name", default="portcullis_bench", help="gateway database (dropped and recreated)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    p.add_argument("--target-ms", type=float, default=5.0, help="exec overhead target at p50 (default 5 ms)")
    p.add_argument("--skip-legacy", action="store_true", help="skip the handshake-era (mode='legacy') series")
    p.add_argument("--skip-throughput", action="store_true", help="only the sequential latency series")
    p.add_argument("--cpu-n", type=int, default=100, help="execs measured for the CPU figures (0 skips)")
    p.add_argument(
        "--analysis-wait", type=float, default=300.0, help="longest wait for the worker's analyses (s)"
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (n 30, 3 s throughput, no legacy)")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/exec_latency-*.json")
    p.add_argument("--keep-log", action="store_true", help="copy daphne's output to bench/results/")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.warmup, args.duration, args.cpu_n, args.skip_legacy = 30, 5, 3.0, 20, True
    if args.n < 1 or args.warmup < 0 or args.concurrency < 1 or args.duration <= 0 or args.loadgen_procs < 1:
        p.error("--n, --concurrency, --duration and --loadgen-procs must be positive, --warmup not negative")
    if args.cpu_n < 0 or args.analysis_wait <= 0:
        p.error("--cpu-n must not be negative and --analysis-wait must be positive")
    return args


# --- setup ---------------------------------------------------------------------------------------


def pg_params(pg_url: str, dbname: str) -> dict:
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    params["dbname"] = dbname
    params.setdefault("host", "127.0.0.1")
    params.setdefault("port", 5432)
    params.setdefault("user", "postgres")
    return params


def pg_url_for(params: dict) -> str:
    """A URL for dj-database-url, which wants a URL rather than a conninfo string."""
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{params['user']}{password}@{params['host']}:{params['port']}/{params['dbname']}"


def recreate_database(pg_url: str, name: str, *, create: bool = True) -> None:
    with psycopg.connect(**pg_params(pg_url, "postgres"), autocommit=True) as conn:  # the maintenance db
        # WITH (FORCE): connections a gateway left behind must not keep the database alive.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def manage(env: dict, *args: str, stdin: str | None = None, root: Path = ROOT) -> str:
    """Run `manage.py <args>` as an operator would (of the checkout `root`); return its stdout, or
    fail with its stderr."""
    proc = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=root, env=env, input=stdin, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout.strip()


def seed(env: dict, target: dict) -> str:
    """Migrate, then create the org, its admin, a token and `bench-pg`. Returns the raw token."""
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "org_create", ORG)
    manage(env, "user_create", "--org", ORG, "--email", EMAIL, "--groups", "admin")
    token = manage(env, "token_issue", "--email", EMAIL, "--name", "bench")
    config = {
        "host": target["host"],
        "port": int(target["port"]),
        "database": target["dbname"],
        "user": target["user"],
    }
    if target.get("password"):
        config["password"] = target["password"]
    manage(
        env,
        *("connection_create", "--org", ORG, "--name", CONNECTION, "--kind", "postgres", "--config-stdin"),
        stdin=json.dumps(config),
    )
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(env: dict, port: int, log_path: Path, root: Path = ROOT):
    """daphne serving gateway.asgi, as `make run` does; stopped (SIGTERM, then SIGKILL) on exit.
    BENCH_SERVER=uvicorn serves it with uvicorn instead (its httptools parser and uvloop when they
    are installed), for comparing the two servers. `root`: the checkout served (a baseline's)."""
    if env.get("BENCH_SERVER") == "uvicorn":
        cmd = [sys.executable, "-m", "uvicorn", "--no-access-log", "--log-level", "warning"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "gateway.asgi:application"]
    else:
        cmd = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port)]
        cmd.append("gateway.asgi:application")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx2.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daphne did not become healthy (its log follows)")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def describe_environment(pg_url: str) -> dict:
    """What the numbers depend on: the code revision, the machine and how busy it already was."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    with psycopg.connect(**pg_params(pg_url, "postgres")) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
        max_connections = int(conn.execute("SHOW max_connections").fetchone()[0])
    return {
        "revision": git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0],
        "postgres": pg_version,
        "postgres_max_connections": max_connections,
    }


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux), None elsewhere. Shows which side saturated."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def process_tree_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process and its live descendants (a prefork Celery worker runs tasks in
    its children), None when /proc cannot say."""
    total, seen, todo = 0.0, set(), [pid]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        cpu = process_cpu_seconds(current)
        if cpu is None:
            if current == pid:
                return None
            continue  # a child that just exited
        total += cpu
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in children.read_text().split())
            except OSError:
                pass
    return total


def cpu_per_call(pid: int, before: float | None, calls: int) -> float | None:
    """daphne's CPU milliseconds per call since `before`: how much of a call's latency is CPU."""
    after = process_cpu_seconds(pid)
    return None if before is None or after is None else 1000 * (after - before) / calls


def machine_cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies over all CPUs from /proc/stat (Linux), None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


class ConnectionSampler:
    """Peak PostgreSQL connections of the gateway during a run, polled from pg_stat_activity.

    `gateway_db` counts connections to the gateway's own database; `target` counts the
    connector's connections to the target (they announce application_name 'portcullis').
    """

    QUERY = """
        SELECT count(*) FILTER (WHERE datname = %(gateway)s),
               count(*) FILTER (WHERE datname = %(target)s AND application_name = 'portcullis')
        FROM pg_stat_activity
    """

    def __init__(self, pg_url: str, gateway_db: str, target_db: str):
        self.params = pg_params(pg_url, "postgres")
        self.names = {"gateway": gateway_db, "target": target_db}
        self.peak = {"gateway_db": 0, "target": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with psycopg.connect(**self.params, autocommit=True) as conn:
            while not self._stop.is_set():
                gateway_db, target = conn.execute(self.QUERY, self.names).fetchone()
                self.peak["gateway_db"] = max(self.peak["gateway_db"], gateway_db)
                self.peak["target"] = max(self.peak["target"], target)
                self._stop.wait(0.25)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


# --- statistics ----------------------------------------------------------------------------------


def summarize(series: dict) -> dict:
    """Percentiles of `series["samples"]` (seconds) in ms, plus daphne's CPU per call if measured."""
    ms = sorted(s * 1000 for s in series["samples"])
    q = ms * 99 if len(ms) == 1 else statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "mean": statistics.fmean(ms),
        "max": ms[-1],
        "server_cpu_ms": series.get("server_cpu_ms"),
    }


# --- plain JSON-RPC over HTTP (modern era, stateless) ----------------------------------------------


def rpc_request(tool: str, arguments: dict, request_id: int) -> tuple[dict, dict]:
    """Headers and body of one modern-era `tools/call`, as the SDK client sends them."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "portcullis-bench", "version": "0"},
            },
        },
    }
    return headers, body


def rpc_message(response: httpx2.Response, request_id: int) -> dict | None:
    """The JSON-RPC response for `request_id`, whether it came as JSON or as SSE `data:` lines."""
    if response.headers.get("content-type", "").startswith("application/json"):
        message = response.json()
        return message if message.get("id") == request_id else None
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
    return None


async def raw_call(
    client: httpx2.AsyncClient, url: str, tool: str, arguments: dict, request_id: int
) -> str | None:
    """POST one `tools/call`. None when it succeeded, else a short reason (tallied in the results)."""
    headers, body = rpc_request(tool, arguments, request_id)
    try:
        response = await client.post(url, headers=headers, json=body)
    except httpx2.HTTPError as exc:
        return f"transport: {type(exc).__name__}"
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:100]}"
    message = rpc_message(response, request_id)
    if message is None:
        return "no JSON-RPC response in the body"
    if "error" in message:
        return f"JSON-RPC error: {message['error'].get('message', '')[:100]}"
    result = message["result"]
    if result.get("isError"):
        return f"tool error: {(result.get('content') or [{}])[0].get('text', '')[:100]}"
    envelope = result.get("structuredContent") or {}
    if tool == "exec" and envelope.get("status") != "completed":
        return f"exec {envelope.get('status')}: {(envelope.get('output') or envelope.get('message') or '')[:100]}"
    return None


def bearer_client(token: str, **kwargs) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300), **kwargs
    )


# --- sequential latency --------------------------------------------------------------------------


def measure_direct(target: dict, n: int, warmup: int) -> list[float]:
    """The floor: `SELECT 1` on one persistent autocommit connection, no gateway."""
    samples = []
    with psycopg.connect(**target, autocommit=True) as conn, conn.cursor() as cur:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            cur.execute(QUERY)
            cur.fetchone()
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    return samples


def check_exec(structured: dict) -> None:
    if structured.get("status") != "completed" or structured.get("rows") != [[1]]:
        raise RuntimeError(f"exec did not complete as expected: {structured}")


async def measure_sdk(url: str, token: str, mode: str, n: int, warmup: int, server_pid: int) -> dict:
    """`exec` and `me_get` through one SDK client session, kept open for all calls."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    out = {}
    http = bearer_client(token)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        await client.list_tools()  # the modern-era client validates results against the listing
        for tool, arguments in (("exec", EXEC_ARGS), ("me_get", {})):
            samples, connector_ms = [], []
            cpu_before = process_cpu_seconds(server_pid)
            for i in range(warmup + n):
                t0 = time.perf_counter()
                result = await client.call_tool(tool, arguments)
                elapsed = time.perf_counter() - t0
                if result.is_error:
                    raise RuntimeError(f"{tool} (mode={mode}) failed: {result.content[0].text}")
                if tool == "exec":
                    check_exec(result.structured_content)
                if i >= warmup:
                    samples.append(elapsed)
                    if tool == "exec":
                        connector_ms.append(result.structured_content["execution_time_ms"])
            out[tool] = {
                "samples": samples,
                "server_cpu_ms": cpu_per_call(server_pid, cpu_before, warmup + n),
            }
            if connector_ms:
                out[tool]["connector_ms_mean"] = statistics.fmean(connector_ms)
    return out


async def measure_plain(url: str, token: str, n: int, warmup: int, server_pid: int) -> dict:
    """The same calls as plain POSTs on one keep-alive connection: the gateway without the SDK client."""
    out = {}
    async with bearer_client(token) as http:
        for tool, arguments in (("exec", EXEC_ARGS), ("me_get", {})):
            samples = []
            cpu_before = process_cpu_seconds(server_pid)
            for i in range(warmup + n):
                t0 = time.perf_counter()
                failure = await raw_call(http, url, tool, arguments, i + 1)
                elapsed = time.perf_counter() - t0
                if failure is not None:
                    raise RuntimeError(f"plain JSON-RPC {tool} failed: {failure}")
                if i >= warmup:
                    samples.append(elapsed)
            out[tool] = {
                "samples": samples,
                "server_cpu_ms": cpu_per_call(server_pid, cpu_before, warmup + n),
            }
    return out


async def measure_interleaved(url: str, token: str, n: int, warmup: int) -> dict:
    """`exec` and `me_get` alternating call by call on one SDK session: the same machine for both."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    samples = {"exec": [], "me_get": []}
    http = bearer_client(token)
    async with http, Client(streamable_http_client(url, http_client=http), mode="auto") as client:
        await client.list_tools()
        for i in range(warmup + n):
            for tool, arguments in (("exec", EXEC_ARGS), ("me_get", {})):
                t0 = time.perf_counter()
                result = await client.call_tool(tool, arguments)
                elapsed = time.perf_counter() - t0
                if result.is_error:
                    raise RuntimeError(f"{tool} failed: {result.content[0].text}")
                if tool == "exec":
                    check_exec(result.structured_content)
                if i >= warmup:
                    samples[tool].append(elapsed)
    return samples


# --- CPU per exec and per analysis -----------------------------------------------------------------

# Celery's queue keys in the bench's Redis database (CELERY_TASK_DEFAULT_QUEUE).
CELERY_KEYS = (
    "portcullis",
    "_kombu.binding.portcullis",
    "_kombu.binding_permanent.portcullis",
    "_kombu.binding_deadlines",
)


@contextmanager
def celery_worker(env: dict, log_path: Path):
    """A real worker, as the deployment runs it (`celery -A gateway worker`); stopped on exit."""
    cmd = [sys.executable, "-m", "celery", "-A", "gateway", "worker", "-l", "info"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()  # warm shutdown: the worker finishes its current task and its children exit
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def analyses_count(gateway_db: dict, session_ids: list[str] | None = None) -> int:
    with psycopg.connect(**gateway_db, autocommit=True) as conn:
        if session_ids is None:
            return conn.execute("SELECT count(*) FROM records_analysis").fetchone()[0]
        return conn.execute(
            "SELECT count(*) FROM records_analysis WHERE session_id = ANY(%s::uuid[])", [session_ids]
        ).fetchone()[0]


def wait_for_analyses(gateway_db: dict, session_ids: list[str], deadline: float, worker) -> int:
    """Poll until every session has its analysis (or the deadline, or the worker died); the count."""
    while True:
        done = analyses_count(gateway_db, session_ids)
        if done >= len(session_ids) or time.monotonic() > deadline or worker.poll() is not None:
            return done
        time.sleep(0.2)


async def exec_series(url: str, token: str, n: int) -> list[str]:
    """`n` sequential execs on one SDK session; returns their session ids."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    ids = []
    http = bearer_client(token)
    async with http, Client(streamable_http_client(url, http_client=http), mode="auto") as client:
        await client.list_tools()
        for _ in range(n):
            result = await client.call_tool("exec", EXEC_ARGS)
            if result.is_error:
                raise RuntimeError(f"exec failed: {result.content[0].text}")
            check_exec(result.structured_content)
            ids.append(result.structured_content["session_id"])
    return ids


def measure_cpu(
    env: dict, url: str, token: str, server_pid: int, gateway_db: dict, args, log_path: Path, owns_redis: bool
) -> dict:
    """daphne's CPU per exec, then a Celery worker's CPU per analysis, from /proc.

    The earlier phases' analysis requests (no worker ran for them) are dropped first, so the worker
    analyses only this phase's sessions: the outbox's rows (the worker claims them there) and, when
    the bench owns its Redis database, Celery's queue (where a worker of an older revision gets
    them). A warm-up batch proves the worker is up and warms its imports. Worker CPU
    is counted from before the measured execs until their last analysis is stored, and divided by
    the number of analyses stored in that window (any backlog left in the queue counts on both
    sides). Idle polling while it waits is included: it is small, and a real worker pays it too.
    """
    if owns_redis:
        with redis.Redis.from_url(args.redis_url) as r:
            r.delete(*CELERY_KEYS)  # the earlier phases' tasks: no worker ran to take them
    with psycopg.connect(**gateway_db, autocommit=True) as conn:
        dropped = conn.execute("DELETE FROM records_outboxmessage WHERE kind = 'analysis'").rowcount
    out: dict = {"n": args.cpu_n, "queue_emptied_first": owns_redis, "outbox_requests_dropped": dropped}
    with celery_worker(env, log_path) as worker:
        warm = asyncio.run(exec_series(url, token, 5))
        done = wait_for_analyses(gateway_db, warm, time.monotonic() + args.analysis_wait, worker)
        if done < len(warm):
            raise RuntimeError(f"the Celery worker analysed {done} of {len(warm)} warm-up sessions")
        worker_before = process_tree_cpu_seconds(worker.pid)
        analyses_before = analyses_count(gateway_db)
        daphne_before = process_cpu_seconds(server_pid)
        started = time.monotonic()
        ids = asyncio.run(exec_series(url, token, args.cpu_n))
        daphne_after = process_cpu_seconds(server_pid)
        out["exec_wall_s"] = time.monotonic() - started
        done = wait_for_analyses(gateway_db, ids, time.monotonic() + args.analysis_wait, worker)
        worker_after = process_tree_cpu_seconds(worker.pid)
        analysed = analyses_count(gateway_db) - analyses_before
        out["analysis_wall_s"] = time.monotonic() - started
        out["worker_alive"] = worker.poll() is None
    out["analysed_of_measured"] = done
    out["analyses_in_window"] = analysed
    if daphne_before is not None and daphne_after is not None:
        out["daphne_cpu_ms_per_exec"] = 1000 * (daphne_after - daphne_before) / args.cpu_n
    if worker_before is not None and worker_after is not None and analysed:
        out["worker_cpu_ms_per_analysis"] = 1000 * (worker_after - worker_before) / analysed
    return out


# --- throughput ----------------------------------------------------------------------------------


async def _load(url: str, token: str, tool: str, arguments: dict, clients: int, duration: float) -> dict:
    async with bearer_client(
        token, limits=httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    ) as http:
        # Open the keep-alive connections before the clock starts.
        await asyncio.gather(*(raw_call(http, url, tool, arguments, i) for i in range(clients)))
        latencies: list[float] = []
        failures: dict[str, int] = {}
        start = time.perf_counter()
        cpu_start = time.process_time()
        deadline = start + duration

        async def one_client(worker: int):
            request_id = worker * 1_000_000
            while time.perf_counter() < deadline:
                request_id += 1
                t0 = time.perf_counter()
                failure = await raw_call(http, url, tool, arguments, request_id)
                if failure is None:
                    latencies.append(time.perf_counter() - t0)
                else:
                    failures[failure] = failures.get(failure, 0) + 1

        await asyncio.gather(*(one_client(i) for i in range(clients)))
        return {
            "latencies": latencies,
            "failures": failures,
            "elapsed": time.perf_counter() - start,
            "cpu": time.process_time() - cpu_start,
        }


def load_worker(url: str, token: str, tool: str, arguments: dict, clients: int, duration: float) -> dict:
    """Entry point of one load-generator process (spawned, so it shares nothing with this one)."""
    return asyncio.run(_load(url, token, tool, arguments, clients, duration))


def measure_throughput(
    url: str, token: str, server_pid: int, tool: str, arguments: dict, args, sampler_args
) -> dict:
    procs = min(args.loadgen_procs, args.concurrency)
    shares = [args.concurrency // procs + (1 if i < args.concurrency % procs else 0) for i in range(procs)]
    server_cpu_before = process_cpu_seconds(server_pid)
    machine_before = machine_cpu_times()
    with (
        multiprocessing.get_context("spawn").Pool(procs) as pool,
        ConnectionSampler(*sampler_args) as sampler,
    ):
        parts = pool.starmap(load_worker, [(url, token, tool, arguments, s, args.duration) for s in shares])
    server_cpu_after = process_cpu_seconds(server_pid)
    machine_after = machine_cpu_times()
    latencies = [x for part in parts for x in part["latencies"]]
    elapsed = max(part["elapsed"] for part in parts)
    reasons: dict[str, int] = {}
    for part in parts:
        for reason, count in part["failures"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    return {
        "tool": tool,
        "concurrency": args.concurrency,
        "loadgen_procs": procs,
        "elapsed_s": elapsed,
        "ok": len(latencies),
        "failed": sum(reasons.values()),
        "failure_reasons": reasons,
        "rps": len(latencies) / elapsed,  # successful calls only
        "latency": summarize({"samples": latencies}) if latencies else None,
        # Each side's CPU as a share of one core: near 100% means that side was the bottleneck.
        "loadgen_cpu_pct": 100 * sum(part["cpu"] for part in parts) / elapsed,
        "server_cpu_pct": (
            100 * (server_cpu_after - server_cpu_before) / elapsed
            if server_cpu_before is not None and server_cpu_after is not None
            else None
        ),
        # All cores together (PostgreSQL and Redis included): near 100% means the machine was full.
        "machine_cpu_pct": (
            100 * (machine_after[0] - machine_before[0]) / (machine_after[1] - machine_before[1])
            if machine_before and machine_after and machine_after[1] > machine_before[1]
            else None
        ),
        "peak_pg_connections": dict(sampler.peak),
    }


# --- reporting -----------------------------------------------------------------------------------


def report(results: dict, args) -> None:
    env = results["environment"]
    load = env["load_average_at_start"]
    print()
    dirty = " (with uncommitted changes)" if env["uncommitted_changes"] else ""
    busy = f", load average at start {load[0]:.2f}" if load else ""
    print(
        f"{results['started_at']}: Portcullis {env['revision']}{dirty}, Python {env['python']},"
        f" PostgreSQL {env['postgres']},"
        f" {env['cpus']} CPUs{busy}"
    )
    print()
    print(f"Sequential latency, ms (n={args.n} each, after {args.warmup} warm-up calls)")
    print(f"  {'series':<32} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'max':>8} {'daphne CPU/call':>16}")
    for label, s in results["latency"].items():
        cpu = f"{s['server_cpu_ms']:.2f}" if s["server_cpu_ms"] is not None else "-"
        print(
            f"  {label:<32} {s['p50']:8.2f} {s['p95']:8.2f} {s['p99']:8.2f} {s['mean']:8.2f} {s['max']:8.2f}"
            f" {cpu:>16}"
        )
    for mode, ms in results["connector_ms_mean"].items():
        print(f"  exec ({mode}): the sessions' execution_time_ms (connect + query) averaged {ms:.2f} ms")
    peak = results["sequential_peak_pg_connections"]
    print(
        f"  peak PostgreSQL connections while one client called in sequence: {peak['gateway_db']} to the"
        f" gateway database, {peak['target']} to the target"
    )
    print()
    for label, overhead in results["overhead_p50_ms"].items():
        verdict = "met" if overhead < args.target_ms else "NOT met"
        print(
            f"exec overhead over direct psycopg at p50, {label}: {overhead:.2f} ms"
            f" (target < {args.target_ms:g} ms: {verdict})"
        )

    inter = results.get("interleaved")
    if inter:
        print()
        print(
            f"exec and me_get interleaved on one SDK session (n={args.n} each): exec p50 {inter['exec']['p50']:.2f} ms,"
            f" me_get p50 {inter['me_get']['p50']:.2f} ms, exec p50 / me_get p50 = {inter['ratio_p50']:.2f}"
            " (aim <= 1.5)"
        )

    runs = results["throughput"]
    if not runs:
        report_cpu(results, args)
        return
    print()
    print(
        f"Throughput: {args.concurrency} concurrent clients, {args.duration:g} s per tool, plain JSON-RPC POSTs"
        f" from {runs[0]['loadgen_procs']} load-generator process(es)"
    )
    print(
        f"  {'tool':<8} {'req/s':>7} {'ok':>6} {'failed':>6} {'p50 ms':>8} {'p99 ms':>8} {'wall s':>7}"
        f" {'daphne CPU':>10} {'loadgen CPU':>11} {'machine CPU':>11} {'peak PG conns gateway/target':>29}"
    )
    for run in runs:
        s = run["latency"] or {"p50": float("nan"), "p99": float("nan")}
        server = f"{run['server_cpu_pct']:.0f}%" if run["server_cpu_pct"] is not None else "n/a"
        machine = f"{run['machine_cpu_pct']:.0f}%" if run["machine_cpu_pct"] is not None else "n/a"
        peak = run["peak_pg_connections"]
        print(
            f"  {run['tool']:<8} {run['rps']:7.1f} {run['ok']:6d} {run['failed']:6d} {s['p50']:8.2f} {s['p99']:8.2f}"
            f" {run['elapsed_s']:7.1f} {server:>10} {run['loadgen_cpu_pct']:10.0f}% {machine:>11}"
            f" {peak['gateway_db']:>24} / {peak['target']}"
        )
    for run in runs:
        for reason, count in sorted(run["failure_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {run['tool']} failed x{count}: {reason}")
    print(
        "  req/s counts successful calls over the wall time, which runs past the nominal duration while the"
        " last calls finish."
    )
    print(
        "  daphne and loadgen CPU are % of one core, machine CPU is % of all cores."
        f" daphne is one process; PostgreSQL allows {env['postgres_max_connections']}"
        " connections in all."
    )
    if any((r["server_cpu_pct"] or 0) > 85 for r in runs):
        print("  daphne was CPU-bound on one core: these rates are a single process's ceiling.")
    if any(r["loadgen_cpu_pct"] > 85 for r in runs):
        print("  The load generator was CPU-bound: rerun with --loadgen-procs 2, or from another machine.")
    if env["cpus"] and env["cpus"] <= 2:
        print(
            f"  With {env['cpus']} CPUs, daphne, PostgreSQL, Redis and the load generator share the cores:"
            " absolute rates are low."
        )
    rates = {run["tool"]: run["rps"] for run in runs}
    if rates.get("me_get"):
        print(
            f"  exec throughput / me_get throughput with {args.concurrency} clients:"
            f" {rates.get('exec', 0) / rates['me_get']:.2f} (aim >= 0.5)"
        )
    report_cpu(results, args)


def report_cpu(results: dict, args) -> None:
    cpu = results.get("cpu")
    if not cpu:
        return
    print()
    print(
        f"CPU from /proc/<pid>/stat (utime + stime), {cpu['n']} sequential execs with a Celery worker running:"
    )
    per_exec = cpu.get("daphne_cpu_ms_per_exec")
    print(
        f"  web process (daphne) CPU per exec: {per_exec:.2f} ms (aim <= 8)"
        if per_exec is not None
        else "  n/a"
    )
    per_analysis = cpu.get("worker_cpu_ms_per_analysis")
    if per_analysis is not None:
        print(
            f"  Celery worker CPU per analysis: {per_analysis:.2f} ms over {cpu['analyses_in_window']} analyses"
            f" (aim <= 5; {cpu['analysed_of_measured']} of the {cpu['n']} measured sessions analysed,"
            f" worker {'alive' if cpu['worker_alive'] else 'DEAD'} at the end)"
        )
    else:
        print(f"  Celery worker CPU per analysis: n/a ({cpu.get('analyses_in_window', 0)} analyses stored)")
    load = results.get("load_average_at_end")
    if load:
        print(f"  load average at the end of the run: {' '.join(f'{x:.2f}' for x in load)}")


# --- the two phases ------------------------------------------------------------------------------


def run_sequential(results: dict, mcp_url: str, token: str, server_pid: int, target: dict, args) -> None:
    latency = results["latency"]
    print("sequential: direct psycopg ...", flush=True)
    latency[DIRECT] = summarize({"samples": measure_direct(target, args.n, args.warmup)})
    modes = ["auto"] if args.skip_legacy else ["auto", "legacy"]
    with ConnectionSampler(args.pg_url, args.db_name, target["dbname"]) as sampler:
        for mode in modes:
            print(f"sequential: SDK client, mode={mode} ...", flush=True)
            sdk = asyncio.run(measure_sdk(mcp_url, token, mode, args.n, args.warmup, server_pid))
            latency[f"exec SELECT 1 (SDK, {mode})"] = summarize(sdk["exec"])
            latency[f"me_get (SDK, {mode})"] = summarize(sdk["me_get"])
            results["connector_ms_mean"][mode] = sdk["exec"]["connector_ms_mean"]
        print("sequential: plain JSON-RPC POSTs ...", flush=True)
        plain = asyncio.run(measure_plain(mcp_url, token, args.n, args.warmup, server_pid))
        latency["exec SELECT 1 (plain HTTP)"] = summarize(plain["exec"])
        latency["me_get (plain HTTP)"] = summarize(plain["me_get"])
    results["sequential_peak_pg_connections"] = dict(sampler.peak)
    print("sequential: exec and me_get interleaved ...", flush=True)
    inter = asyncio.run(measure_interleaved(mcp_url, token, args.n, args.warmup))
    results["interleaved"] = {tool: summarize({"samples": v}) for tool, v in inter.items()}
    results["interleaved"]["ratio_p50"] = (
        results["interleaved"]["exec"]["p50"] / results["interleaved"]["me_get"]["p50"]
    )
    floor = latency[DIRECT]["p50"]
    for label in [f"SDK, {mode}" for mode in modes] + ["plain HTTP"]:
        results["overhead_p50_ms"][label] = latency[f"exec SELECT 1 ({label})"]["p50"] - floor


def run_throughput(results: dict, mcp_url: str, token: str, server_pid: int, target: dict, args) -> None:
    sampler_args = (args.pg_url, args.db_name, target["dbname"])
    for tool, arguments in (("me_get", {}), ("exec", EXEC_ARGS)):
        print(f"throughput: {tool}, {args.concurrency} clients, {args.duration:g} s ...", flush=True)
        results["throughput"].append(
            measure_throughput(mcp_url, token, server_pid, tool, arguments, args, sampler_args)
        )


# --- main ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    target = pg_params(args.pg_url, "postgres")
    data_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    log_path = data_dir / "daphne.log"
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url_for(pg_params(args.pg_url, args.db_name)),
        REDIS_URL=args.redis_url,
        PORT=str(port),
        # Generated development keys go to a throwaway directory, not the developer's .portcullis/.
        PORTCULLIS_DATA_DIR=str(data_dir),
    )
    # The MCP rate limits (600/minute per token, 3000/minute per org by default) would refuse a
    # bench's calls. A rate no bench reaches keeps the limiter's Redis round trips in the measured
    # path without refusing.
    env.setdefault("PORTCULLIS_MCP_RATE_PER_TOKEN", "1000000/second")
    env.setdefault("PORTCULLIS_MCP_RATE_PER_ORG", "1000000/second")
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "environment": describe_environment(args.pg_url),
        "latency": {},
        "connector_ms_mean": {},
        "overhead_p50_ms": {},
        "throughput": [],
    }
    # Leave Redis as found: the Celery queue is emptied (before the CPU phase, and at the end) only
    # when the bench's Redis database held nothing else when the run started (a queue an earlier
    # bench run left behind is fair game, and the rate limiter's counters expire by themselves;
    # anybody else's keys are not).
    with redis.Redis.from_url(args.redis_url) as r:
        owns_redis = all(
            key.decode() in CELERY_KEYS or key.startswith(b"LIMITS:") for key in r.scan_iter(count=100)
        )
    try:
        print(f"creating and seeding database {args.db_name} ...", flush=True)
        recreate_database(args.pg_url, args.db_name)
        token = seed(env, target)
        with gateway(env, port, log_path) as (url, proc):
            mcp_url = f"{url}/api/mcp"
            print(f"daphne is up at {url} (pid {proc.pid})", flush=True)
            run_sequential(results, mcp_url, token, proc.pid, target, args)
            if not args.skip_throughput:
                run_throughput(results, mcp_url, token, proc.pid, target, args)
            if args.cpu_n:
                print(f"CPU: {args.cpu_n} execs with a Celery worker running ...", flush=True)
                results["cpu"] = measure_cpu(
                    env,
                    mcp_url,
                    token,
                    proc.pid,
                    pg_params(args.pg_url, args.db_name),
                    args,
                    data_dir / "celery.log",
                    owns_redis,
                )
        results["load_average_at_end"] = os.getloadavg()
        report(results, args)
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"exec_latency-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nresults written to {path.relative_to(ROOT)}")
        return 0
    except BaseException:
        for log in (log_path, data_dir / "celery.log"):
            if log.exists() and log.stat().st_size:
                print(
                    f"--- {log.name} (last 3000 characters) ---\n{log.read_text()[-3000:]}", file=sys.stderr
                )
        raise
    finally:
        try:
            recreate_database(args.pg_url, args.db_name, create=False)
        except Exception as exc:  # say so, without hiding the original error
            print(f"warning: could not drop database {args.db_name}: {exc}", file=sys.stderr)
        if owns_redis:
            try:
                with redis.Redis.from_url(args.redis_url) as r:
                    r.delete(*CELERY_KEYS)
            except Exception as exc:
                print(f"warning: could not drop the Celery queue in {args.redis_url}: {exc}", file=sys.stderr)
        if args.keep_log and log_path.exists():
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            kept = RESULTS_DIR / f"daphne-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
            shutil.copyfile(log_path, kept)
            print(f"daphne's log kept in {kept.relative_to(ROOT)}")
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
