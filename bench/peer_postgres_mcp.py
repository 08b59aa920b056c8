"""Portcullis `exec` against its ungoverned peer, postgres-mcp, on the same PostgreSQL target.

One run:
  1. makes sure postgres-mcp (PyPI `postgres-mcp`, pinned below) is installed in its own venv under
     bench/.venvs/ (git-ignored; created on the first run with a Python >= 3.12, reused after);
  2. creates its own gateway database (dropped at the end), seeds an org, an admin, a token and a
     postgres connection `bench-pg` on the server's `postgres` database, with row, byte and time
     limits raised so a 100k-row result fits;
  3. starts, each in its own process on loopback: daphne (as `make run` does), postgres-mcp as
     shipped (its SSE transport, once per `--access-mode`), and a bare SDK server with one `echo`
     tool (bench/echo_server.py, streamable HTTP under uvicorn);
  4. calls `SELECT 1` interleaved call by call (exec, execute_sql, psycopg, echo, exec, ...) for
     several rounds, each MCP contender through the official SDK client on one long-lived session;
     then the same with a fresh connection per call; then a 100k-row SELECT through exec and
     through the peer, interleaved;
  5. prints p50/p95 per contender, the ratios with their spread across rounds, and writes JSON to
     bench/results/. It asserts nothing about time: the figures are for reading (bench/README.md).

    .venv/bin/python bench/peer_postgres_mcp.py [--quick] [--rounds 5] [--n 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import redis
from mcp.client import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exec_latency import (  # noqa: E402  (the same setup as the exec bench)
    EMAIL,
    ORG,
    bearer_client,
    describe_environment,
    free_port,
    gateway,
    manage,
    pg_params,
    pg_url_for,
    process_cpu_seconds,
    recreate_database,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
VENVS_DIR = ROOT / "bench" / ".venvs"

PEER_PACKAGE = "postgres-mcp"
PEER_VERSION = "0.3.0"
# The stack it was released with (its uv.lock at the tag), as pip constraints: `--peer-deps release`.
PEER_RELEASE_CONSTRAINTS = ROOT / "bench" / f"{PEER_PACKAGE}-{PEER_VERSION}.constraints.txt"
# Its declared requirements. Its exact pglast pin (7.2.0) may be missing from the index; the
# fallback install relaxes it to the same major (libpg_query 17), used only to parse SQL in
# restricted mode. `--peer-deps latest` also caps mcp below 2: the package imports
# mcp.server.fastmcp, which mcp 2 removed, though its own pin allows any mcp >= 1.5.
PEER_REQUIREMENTS = [
    "attrs>=25.3.0",
    "humanize>=4.8.0",
    "instructor>=1.7.9",
    "mcp[cli]>=1.5.0,<2",
    "pglast>=7.2,<8",
    "psycopg-pool>=3.2.6",
    "psycopg[binary]>=3.2.6",
]

CONNECTION = "bench-pg"
SELECT_1 = "SELECT 1"
BIG_ROWS = 100_000
BIG_QUERY = f"SELECT g AS id, md5(g::text) AS h FROM generate_series(1, {BIG_ROWS}) AS g"
# Limits of `bench-pg`, raised so the 100k-row answer is neither cut nor timed out (the defaults are
# 1000 rows and a few MiB; these are the model's maxima for rows and bytes).
CONNECTION_LIMITS = {"max_rows": 1_000_000, "max_output_bytes": 64 * 1024 * 1024, "timeout_seconds": 600}
# The 100k-row SSE events are several MiB; the SDK's SSE client caps an event at 1 MiB and has no knob.
BIG_EVENT_BYTES = 256 * 1024 * 1024

EXEC = "portcullis exec"
PSYCOPG = "direct psycopg"
ECHO = "bare SDK echo"
# Celery's queue keys in the bench's Redis database: no worker runs here, so the analysis tasks the
# execs enqueue stay behind (see review_wake.py).
CELERY_KEYS = (
    "portcullis",
    "_kombu.binding.portcullis",
    "_kombu.binding_permanent.portcullis",
    "_kombu.binding_deadlines",
)


def peer_label(mode: str) -> str:
    return f"postgres-mcp ({mode})"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--n", type=int, default=40, help="measured calls per contender per round (default 40)")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured calls per contender first (default 10)")
    p.add_argument(
        "--fresh-n", type=int, default=15, help="calls per contender with a fresh connection each (0 skips)"
    )
    p.add_argument("--big-runs", type=int, default=3, help="100k-row SELECTs per contender (0 skips)")
    p.add_argument(
        "--access-mode",
        action="append",
        choices=["unrestricted", "restricted"],
        help="postgres-mcp's --access-mode; repeat for both (default: both; unrestricted is its default)",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run: 2 rounds of 8 calls, 1 big run")
    p.add_argument(
        "--peer-python",
        default=os.environ.get("BENCH_PEER_PYTHON"),
        help="Python >= 3.12 for postgres-mcp's venv (default: python3.13/python3.12 on PATH or pyenv)",
    )
    p.add_argument(
        "--peer-deps",
        choices=["release", "latest"],
        default="release",
        help="postgres-mcp's dependencies: the versions it was released with (default) or today's newest",
    )
    p.add_argument("--peer-venv", type=Path, help="default bench/.venvs/postgres-mcp-0.3.0-<peer-deps>")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server of the gateway database; the target of all contenders is its `postgres` db",
    )
    p.add_argument("--db-name", default="portcullis_bench_peer", help="gateway database (dropped at the end)")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.n, args.warmup, args.fresh_n, args.big_runs = 2, 8, 3, 3, 1
    if args.rounds < 1 or args.n < 2 or args.warmup < 0 or args.fresh_n < 0 or args.big_runs < 0:
        p.error("--rounds >= 1, --n >= 2; --warmup, --fresh-n and --big-runs not negative")
    args.access_mode = list(dict.fromkeys(args.access_mode or ["unrestricted", "restricted"]))
    args.peer_venv = args.peer_venv or VENVS_DIR / f"{PEER_PACKAGE}-{PEER_VERSION}-{args.peer_deps}"
    return args


# --- the peer's venv -----------------------------------------------------------------------------


def find_peer_python(explicit: str | None) -> str:
    """A Python >= 3.12 (postgres-mcp's floor): the one given, else on PATH, else pyenv's newest."""
    candidates = [explicit] if explicit else []
    candidates += [shutil.which(name) for name in ("python3.13", "python3.12")]
    pyenv = shutil.which("pyenv") or str(Path.home() / ".pyenv" / "bin" / "pyenv")
    if not explicit and Path(pyenv).exists():
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True).stdout.strip()
        versions = sorted(Path(root, "versions").glob("3.1[2-9]*"), reverse=True) if root else []
        candidates += [str(v / "bin" / "python3") for v in versions]
    for python in filter(None, candidates):
        check = subprocess.run(
            [python, "-c", "import sys; sys.exit(sys.version_info < (3, 12))"], capture_output=True
        )
        if check.returncode == 0:
            return python
    raise SystemExit(
        "postgres-mcp needs Python >= 3.12 and none was found: pass --peer-python or set BENCH_PEER_PYTHON"
    )


def ensure_peer(venv: Path, python: str | None, deps: str) -> dict:
    """Install postgres-mcp into its own venv once; returns what was installed (for the results).

    `release`: the versions of its release lock (mcp 1.6.0 ...), which is how it shipped.
    `latest`: the newest versions its requirements allow today (mcp 1.x, since 2 lacks FastMCP).
    """
    marker = venv / "bench-installed.json"
    if marker.exists():
        return json.loads(marker.read_text())
    print(
        f"installing {PEER_PACKAGE}=={PEER_VERSION} ({deps} deps) into {venv} ...",
        flush=True,
    )
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([find_peer_python(python), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraints = ["-c", str(PEER_RELEASE_CONSTRAINTS)] if deps == "release" else []
    package = f"{PEER_PACKAGE}=={PEER_VERSION}"
    how = f"{deps} versions, as declared"
    first = subprocess.run([*pip, *constraints, package, "mcp[cli]<2"], capture_output=True, text=True)
    if first.returncode != 0:
        # The index lacks its exact pglast pin: the package alone, then its requirements with
        # pglast relaxed to the same major. Recorded, so a reader can tell.
        subprocess.run([*pip, "--no-deps", package], check=True)
        subprocess.run([*pip, *constraints, *PEER_REQUIREMENTS], check=True)
        how = f"{deps} versions, with pglast relaxed to >=7.2,<8 (7.2.0 is not on the index)"
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    wanted = ("postgres-mcp", "mcp", "pglast", "psycopg", "psycopg-pool", "starlette", "uvicorn")
    info = {
        "install": how,
        "python": subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        "packages": [line for line in freeze if line.split("==")[0].lower() in wanted],
    }
    marker.write_text(json.dumps(info, indent=2) + "\n")
    return info


# --- servers -------------------------------------------------------------------------------------


def wait_for_port(proc: subprocess.Popen, port: int, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start listening on port {port}:\n{tail}")
        time.sleep(0.1)


@contextmanager
def server_process(cmd: list[str], port: int, what: str, log: Path, env: dict | None = None):
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, what, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def seed(env: dict, target: dict) -> str:
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "org_create", ORG)
    manage(env, "user_create", "--org", ORG, "--email", EMAIL, "--groups", "admin")
    token = manage(env, "token_issue", "--email", EMAIL, "--name", "bench")
    config = {
        "host": target["host"],
        "port": int(target["port"]),
        "database": target["dbname"],
        "user": target["user"],
        **CONNECTION_LIMITS,
    }
    if target.get("password"):
        config["password"] = target["password"]
    manage(
        env,
        *("connection_create", "--org", ORG, "--name", CONNECTION, "--kind", "postgres", "--config-stdin"),
        stdin=json.dumps(config),
    )
    return token


def raise_sse_event_cap() -> None:
    """Let the SDK's SSE client take the peer's 100k-row answer, one event of several MiB.

    `sse_client` opens its stream through `sse_within_origin` without passing `max_event_size`, so
    the 1 MiB default is the only knob; the streamable HTTP client takes `max_sse_event_size`.
    """
    import mcp.shared._httpx_utils as utils

    target = getattr(utils.sse_within_origin, "__wrapped__", utils.sse_within_origin)
    if target.__kwdefaults__ and "max_event_size" in target.__kwdefaults__:
        target.__kwdefaults__["max_event_size"] = BIG_EVENT_BYTES


# --- contenders ----------------------------------------------------------------------------------


class McpContender:
    """One MCP server, reached with the official SDK client; `call` returns seconds, or raises."""

    def __init__(
        self, label: str, transport, tool: str, arguments: dict, check, pid: int, mode: str = "auto"
    ):
        self.label, self.transport, self.tool, self.arguments = label, transport, tool, arguments
        self.check, self.pid, self.mode = check, pid, mode
        self.client: Client | None = None
        self._stack = AsyncExitStack()

    async def open(self) -> None:
        self.client = await self._stack.enter_async_context(Client(self.transport(), mode=self.mode))
        await self.client.list_tools()  # as an agent does; the modern client checks results against it

    async def close(self) -> None:
        await self._stack.aclose()

    async def call(self, tool: str | None = None, arguments: dict | None = None, check=None):
        started = time.perf_counter()
        result = await self.client.call_tool(tool or self.tool, arguments or self.arguments)
        elapsed = time.perf_counter() - started
        (check or self.check)(result)
        return elapsed, result

    async def fresh_call(self) -> float:
        """Connect, call once, disconnect: what a client without a kept session pays."""
        started = time.perf_counter()
        async with Client(self.transport(), mode=self.mode) as client:
            result = await client.call_tool(self.tool, self.arguments)
        elapsed = time.perf_counter() - started
        self.check(result)
        return elapsed


def text_of(result) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def check_exec_select_1(result) -> None:
    envelope = result.structured_content or {}
    if result.is_error or envelope.get("status") != "completed" or envelope.get("rows") != [[1]]:
        raise RuntimeError(f"exec SELECT 1 did not complete as expected: {text_of(result)[:300]}")


def check_peer_select_1(result) -> None:
    text = text_of(result)
    if result.is_error or text.startswith("Error") or "1}" not in text:
        raise RuntimeError(f"postgres-mcp SELECT 1 did not answer as expected: {text[:300]}")


def check_echo(result) -> None:
    if result.is_error or text_of(result) != "ping":
        raise RuntimeError(f"echo did not answer as expected: {text_of(result)[:300]}")


def check_exec_big(result) -> None:
    envelope = result.structured_content or {}
    if (
        result.is_error
        or envelope.get("status") != "completed"
        or envelope.get("row_count") != BIG_ROWS
        or envelope.get("truncated")
    ):
        summary = {k: envelope.get(k) for k in ("status", "row_count", "truncated", "message")}
        raise RuntimeError(
            f"exec of {BIG_ROWS} rows did not complete in full: {summary} {text_of(result)[:300]}"
        )


def check_peer_big(result) -> None:
    text = text_of(result)
    if result.is_error or text.count("'id': ") != BIG_ROWS:
        raise RuntimeError(f"postgres-mcp did not return {BIG_ROWS} rows: {text[:300]}")


class Psycopg:
    """The floor: `SELECT 1` on one open autocommit connection, no MCP and no gateway."""

    label = PSYCOPG

    def __init__(self, target: dict):
        self.target = target
        self.conn = None

    async def open(self) -> None:
        self.conn = psycopg.connect(**self.target, autocommit=True)

    async def close(self) -> None:
        self.conn.close()

    async def call(self, query: str = SELECT_1):
        started = time.perf_counter()
        rows = self.conn.execute(query).fetchall()
        return time.perf_counter() - started, rows

    async def fresh_call(self) -> float:
        started = time.perf_counter()
        with psycopg.connect(**self.target, autocommit=True) as conn:
            conn.execute(SELECT_1).fetchall()
        return time.perf_counter() - started


# --- statistics ----------------------------------------------------------------------------------


def pct(samples: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {"n": len(ms), "p50": q[49], "p95": q[94], "mean": statistics.fmean(ms), "max": ms[-1]}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- the phases ----------------------------------------------------------------------------------


async def interleaved(contenders: list, rounds: int, n: int, warmup: int) -> dict:
    """A, B, C, D, A, B, ... so every contender sees the same machine at the same moment."""
    for _ in range(warmup):
        for c in contenders:
            await c.call()
    per_round = {c.label: [] for c in contenders}
    cpu = {}
    cpu_before = {c.label: process_cpu_seconds(c.pid) for c in contenders if getattr(c, "pid", None)}
    for r in range(rounds):
        print(f"  round {r + 1}/{rounds} ...", flush=True)
        samples = {c.label: [] for c in contenders}
        for _ in range(n):
            for c in contenders:
                elapsed, _ = await c.call()
                samples[c.label].append(elapsed)
        for label, values in samples.items():
            per_round[label].append(values)
    for c in contenders:
        if c.label in cpu_before and cpu_before[c.label] is not None:
            after = process_cpu_seconds(c.pid)
            cpu[c.label] = None if after is None else 1000 * (after - cpu_before[c.label]) / (rounds * n)
    return {"per_round": per_round, "server_cpu_ms_per_call": cpu}


async def fresh(contenders: list, n: int) -> dict:
    samples = {c.label: [] for c in contenders}
    for c in contenders:  # one unmeasured call each, so imports and first connections are done
        await c.fresh_call()
    for _ in range(n):
        for c in contenders:
            samples[c.label].append(await c.fresh_call())
    return samples


async def big(exec_c: McpContender, peers: list[McpContender], psy: Psycopg, runs: int) -> dict:
    """The same 100k rows through exec, through each peer, and over psycopg, interleaved."""
    out: dict[str, dict] = {}
    exec_args = {
        "connection_name": CONNECTION,
        "input": BIG_QUERY,
        "max_rows": BIG_ROWS,
        "timeout_seconds": 300,
    }
    jobs = [(EXEC, lambda: exec_c.call("exec", exec_args, check_exec_big))]
    for p in peers:
        jobs.append((p.label, lambda p=p: p.call("execute_sql", {"sql": BIG_QUERY}, check_peer_big)))
    jobs.append((PSYCOPG, lambda: psy.call(BIG_QUERY)))
    for label, _ in jobs:
        out[label] = {"samples": [], "errors": []}
    for i in range(runs):
        print(f"  100k rows, run {i + 1}/{runs} ...", flush=True)
        for label, job in jobs:
            try:
                elapsed, result = await job()
            except Exception as exc:  # a failure is a finding; print it, keep the others going
                out[label]["errors"].append(f"{type(exc).__name__}: {str(exc)[:300]}")
                continue
            out[label]["samples"].append(elapsed)
            if label == EXEC:
                out[label]["bytes_text"] = len(text_of(result).encode())
            elif label != PSYCOPG:
                out[label]["bytes_text"] = len(text_of(result).encode())
    return out


# --- reporting -----------------------------------------------------------------------------------


def analyse(results: dict, args) -> dict:
    per_round = results["interleaved"]["per_round"]
    peers = [peer_label(m) for m in args.access_mode]
    summary = {"contenders": {}, "ratios": {}}
    for label, rounds in per_round.items():
        summary["contenders"][label] = pct([s for r in rounds for s in r])
        summary["contenders"][label]["round_p50s"] = [pct(r)["p50"] for r in rounds]
    exec_p50s = summary["contenders"][EXEC]["round_p50s"]
    for peer in peers:
        peer_p50s = summary["contenders"][peer]["round_p50s"]
        summary["ratios"][f"exec p50 / {peer} p50"] = spread(
            [a / b for a, b in zip(exec_p50s, peer_p50s, strict=True)]
        )
    for other in (ECHO,):
        p50s = summary["contenders"][other]["round_p50s"]
        summary["ratios"][f"exec p50 / {other} p50"] = spread(
            [a / b for a, b in zip(exec_p50s, p50s, strict=True)]
        )
    psy = summary["contenders"][PSYCOPG]["round_p50s"]
    summary["overhead_over_psycopg_ms"] = spread([a - b for a, b in zip(exec_p50s, psy, strict=True)])
    for peer in peers:
        p50s = summary["contenders"][peer]["round_p50s"]
        summary[f"{peer} overhead over psycopg ms"] = spread([a - b for a, b in zip(p50s, psy, strict=True)])
    if results.get("fresh"):
        summary["fresh"] = {label: pct(s) for label, s in results["fresh"].items()}
    if results.get("big"):
        b = {}
        for label, row in results["big"].items():
            b[label] = {"errors": row["errors"], "bytes_text": row.get("bytes_text")}
            if row["samples"]:
                b[label].update(median_s=statistics.median(row["samples"]), runs_s=row["samples"])
        summary["big"] = b
        for peer in peers:
            if b.get(EXEC, {}).get("median_s") and b.get(peer, {}).get("median_s"):
                summary["ratios"][f"100k rows: exec / {peer}"] = {
                    "median": b[EXEC]["median_s"] / b[peer]["median_s"]
                }
    return summary


def fmt_spread(s: dict, unit: str = "x") -> str:
    if "min" not in s:
        return f"{s['median']:.2f}{unit}"
    return f"{s['median']:.2f}{unit} (rounds: {s['min']:.2f} to {s['max']:.2f})"


def report(results: dict, summary: dict, args) -> None:
    env = results["environment"]
    load = env["load_average_at_start"]
    print()
    dirty = " (with uncommitted changes)" if env["uncommitted_changes"] else ""
    print(
        f"{results['started_at']}: Portcullis {env['revision']}{dirty} vs {PEER_PACKAGE} {PEER_VERSION},"
        f" Python {env['python']},"
        f" PostgreSQL {env['postgres']}, {env['cpus']} CPUs, load average at start"
        f" {' '.join(f'{x:.2f}' for x in load)}, at end {' '.join(f'{x:.2f}' for x in results['load_at_end'])}"
    )
    print(f"postgres-mcp venv: {results['peer']['install']}; {', '.join(results['peer']['packages'])}")
    print()
    print(
        f"SELECT 1, interleaved call by call, one long-lived session each: {args.rounds} round(s) x {args.n}"
        f" calls per contender after {args.warmup} warm-up calls (ms)"
    )
    cpu = results["interleaved"]["server_cpu_ms_per_call"]
    print(
        f"  {'contender':<30} {'p50':>8} {'p95':>8} {'mean':>8} {'max':>8} {'server CPU/call':>16}  round p50s"
    )
    for label, s in summary["contenders"].items():
        c = f"{cpu[label]:.2f}" if cpu.get(label) is not None else "-"
        rounds = " ".join(f"{x:.1f}" for x in s["round_p50s"])
        print(
            f"  {label:<30} {s['p50']:8.2f} {s['p95']:8.2f} {s['mean']:8.2f} {s['max']:8.2f} {c:>16}  {rounds}"
        )
    print()
    print("Ratios (median of the per-round values, and their range):")
    for name, s in summary["ratios"].items():
        print(f"  {name:<48} {fmt_spread(s)}")
    print(f"  {'exec p50 - psycopg p50':<48} {fmt_spread(summary['overhead_over_psycopg_ms'], ' ms')}")
    for mode in args.access_mode:
        key = f"{peer_label(mode)} overhead over psycopg ms"
        print(f"  {peer_label(mode) + ' p50 - psycopg p50':<48} {fmt_spread(summary[key], ' ms')}")
    print(
        "  aims (bench/README.md): exec p50 <= 1.5x postgres-mcp's; exec - psycopg <= 5 ms p50 on an idle"
        " machine; 100k rows within 2x the peer"
    )
    if summary.get("fresh"):
        print()
        print(f"SELECT 1 with a fresh connection per call (connect, call, close), {args.fresh_n} each (ms):")
        for label, s in summary["fresh"].items():
            print(f"  {label:<30} p50 {s['p50']:8.2f}  p95 {s['p95']:8.2f}")
    if summary.get("big"):
        print()
        print(f"{BIG_ROWS} rows ({BIG_QUERY}), {args.big_runs} run(s) each, interleaved (seconds):")
        for label, row in summary["big"].items():
            size = f"  text {row['bytes_text'] / 1e6:.1f} MB" if row.get("bytes_text") else ""
            runs = " ".join(f"{x:.2f}" for x in row.get("runs_s", []))
            median = f"{row['median_s']:8.2f}" if row.get("median_s") is not None else "       -"
            print(f"  {label:<30} median {median}  runs {runs}{size}")
            for error in row["errors"]:
                print(f"    failed: {error}")


# --- main ----------------------------------------------------------------------------------------


async def measure(mcp_url: str, token: str, peer_urls: dict, echo_url: str, pids: dict, target: dict, args):
    def portcullis_transport():
        http = bearer_client(token)
        return streamable_http_client(mcp_url, http_client=http, max_sse_event_size=None)

    exec_c = McpContender(
        EXEC,
        portcullis_transport,
        "exec",
        {"connection_name": CONNECTION, "input": SELECT_1},
        check_exec_select_1,
        pids[EXEC],
    )
    peers = [
        McpContender(
            peer_label(mode),
            lambda url=url: sse_client(url, timeout=30, sse_read_timeout=600),
            "execute_sql",
            {"sql": SELECT_1},
            check_peer_select_1,
            pids[peer_label(mode)],
            # The handshake era: mcp 1.6 (its release stack) drops the connection on the modern
            # client's `server/discover` probe instead of answering an error the client falls back on.
            mode="legacy",
        )
        for mode, url in peer_urls.items()
    ]
    psy = Psycopg(target)
    echo = McpContender(
        ECHO, lambda: streamable_http_client(echo_url), "echo", {"text": "ping"}, check_echo, pids[ECHO]
    )
    contenders = [exec_c, *peers, psy, echo]
    out: dict = {}
    try:
        for c in contenders:
            await c.open()
        print("SELECT 1, interleaved ...", flush=True)
        out["interleaved"] = await interleaved(contenders, args.rounds, args.n, args.warmup)
        if args.fresh_n:
            print("SELECT 1, a fresh connection per call ...", flush=True)
            out["fresh"] = await fresh(contenders, args.fresh_n)
        if args.big_runs:
            print(f"{BIG_ROWS} rows ...", flush=True)
            out["big"] = await big(exec_c, peers, psy, args.big_runs)
    finally:
        for c in reversed(contenders):
            try:
                await c.close()
            except Exception as exc:  # closing must not hide what went wrong before
                print(f"warning: closing {c.label}: {exc}", file=sys.stderr)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    peer_info = ensure_peer(args.peer_venv, args.peer_python, args.peer_deps)
    raise_sse_event_cap()
    target = pg_params(args.pg_url, "postgres")
    data_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-peer-"))
    port, echo_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url_for(pg_params(args.pg_url, args.db_name)),
        REDIS_URL=args.redis_url,
        PORT=str(port),
        PORTCULLIS_DATA_DIR=str(data_dir),
    )
    # The MCP rate limits (600/minute per token, 3000/minute per org by default) would refuse a
    # bench's calls. A rate no bench reaches keeps the limiter's Redis round trips in the measured
    # path without refusing.
    env.setdefault("PORTCULLIS_MCP_RATE_PER_TOKEN", "1000000/second")
    env.setdefault("PORTCULLIS_MCP_RATE_PER_ORG", "1000000/second")
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": describe_environment(args.pg_url),
        "peer": peer_info,
    }
    with redis.Redis.from_url(args.redis_url) as r:
        owns_redis = all(
            key.decode() in CELERY_KEYS or key.startswith(b"LIMITS:") for key in r.scan_iter(count=100)
        )
    try:
        print(f"creating and seeding database {args.db_name} ...", flush=True)
        recreate_database(args.pg_url, args.db_name)
        token = seed(env, target)
        with ExitStack() as stack:
            url, daphne = stack.enter_context(gateway(env, port, data_dir / "daphne.log"))
            pids = {EXEC: daphne.pid}
            peer_urls = {}
            peer_bin = str(args.peer_venv / "bin" / "postgres-mcp")
            for mode in args.access_mode:
                peer_port = free_port()
                cmd = [peer_bin, "--access-mode", mode, "--transport", "sse", "--sse-host", "127.0.0.1"]
                cmd += ["--sse-port", str(peer_port), pg_url_for(target)]
                proc = stack.enter_context(
                    server_process(cmd, peer_port, peer_label(mode), data_dir / f"peer-{mode}.log")
                )
                pids[peer_label(mode)] = proc.pid
                peer_urls[mode] = f"http://127.0.0.1:{peer_port}/sse"
            echo = stack.enter_context(
                server_process(
                    [sys.executable, "bench/echo_server.py", str(echo_port)],
                    echo_port,
                    "the echo server",
                    data_dir / "echo.log",
                )
            )
            pids[ECHO] = echo.pid
            print(
                f"daphne {url}, postgres-mcp {', '.join(peer_urls.values())}, echo :{echo_port}", flush=True
            )
            results.update(
                asyncio.run(
                    measure(
                        f"{url}/api/mcp",
                        token,
                        peer_urls,
                        f"http://127.0.0.1:{echo_port}/mcp",
                        pids,
                        target,
                        args,
                    )
                )
            )
        results["load_at_end"] = os.getloadavg()
        summary = analyse(results, args)
        results["summary"] = summary
        report(results, summary, args)
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"peer_postgres_mcp-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
            serialisable = dict(results)
            serialisable["interleaved"] = {
                "per_round_ms": {
                    k: [[round(s * 1000, 3) for s in r] for r in v]
                    for k, v in results["interleaved"]["per_round"].items()
                },
                "server_cpu_ms_per_call": results["interleaved"]["server_cpu_ms_per_call"],
            }
            serialisable.pop("fresh", None)
            path.write_text(json.dumps(serialisable, indent=2, default=str) + "\n")
            print(f"\nresults written to {path.relative_to(ROOT)}")
        return 0
    except BaseException:
        for log in sorted(data_dir.glob("*.log")):
            if log.stat().st_size:
                print(
                    f"--- {log.name} (last 2000 characters) ---\n{log.read_text()[-2000:]}", file=sys.stderr
                )
        raise
    finally:
        try:
            recreate_database(args.pg_url, args.db_name, create=False)
        except Exception as exc:
            print(f"warning: could not drop database {args.db_name}: {exc}", file=sys.stderr)
        if owns_redis:
            try:
                with redis.Redis.from_url(args.redis_url) as r:
                    r.delete(*CELERY_KEYS)
            except Exception as exc:
                print(f"warning: could not drop the Celery queue in {args.redis_url}: {exc}", file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
