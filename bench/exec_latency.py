"""How much latency does the gateway add to `exec`? Self-contained: `make bench`.

One run:
  1. creates its own gateway database (dropped again at the end), migrates it and seeds an org,
     an admin, a token and a postgres connection `bench-pg` through the management commands;
  2. starts daphne on a free port, as production would;
  3. measures sequential latency: `SELECT 1` over a persistent psycopg connection (the baseline),
     then MCP `exec` of `SELECT 1` on `bench-pg` and MCP `me_get` through the official SDK client
     over real HTTP, in the modern era (mode="auto") and the handshake era (mode="legacy");
  4. measures throughput: C concurrent clients for D seconds looping `me_get`, then `exec`, from a
     separate load-generator process speaking plain JSON-RPC over HTTP;
  5. stops daphne, drops the database, prints a summary and writes JSON to bench/results/.

See bench/README.md for what each number means.
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
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

ORG = "bench"
EMAIL = "bench@bench.test"
CONNECTION = "bench-pg"
QUERY = "SELECT 1"
MODERN_VERSION = "2026-07-28"


# --- setup ---------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="measured sequential calls per series (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured calls before each series (default 20)")
    p.add_argument("--concurrency", type=int, default=20, help="concurrent clients in the throughput runs")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run (default 10)")
    p.add_argument(
        "--loadgen-procs",
        type=int,
        default=1,
        help="load-generator processes sharing the concurrent clients (default 1; each is separate from daphne)",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server for both the gateway database and the target (database `postgres`)",
    )
    p.add_argument("--db-name", default="portcullis_bench", help="gateway database, dropped and recreated")
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    p.add_argument("--target-ms", type=float, default=5.0, help="exec overhead target at p50 (default 5 ms)")
    p.add_argument("--skip-legacy", action="store_true", help="skip the handshake-era (mode='legacy') series")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    p.add_argument("--keep-log", action="store_true", help="keep daphne's output in bench/results/")
    args = p.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.concurrency < 1 or args.duration <= 0 or args.loadgen_procs < 1:
        p.error("--n, --concurrency, --duration and --loadgen-procs must be positive, --warmup not negative")
    return args


def pg_params(pg_url: str, dbname: str) -> dict:
    params = psycopg.conninfo.conninfo_to_dict(pg_url)
    params["dbname"] = dbname
    params.setdefault("host", "127.0.0.1")
    params.setdefault("port", 5432)
    params.setdefault("user", "postgres")
    return params


def pg_url_for(params: dict) -> str:
    """A URL for dj-database-url (which wants a URL, not a conninfo string)."""
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{params['user']}{password}@{params['host']}:{params['port']}/{params['dbname']}"


def recreate_database(pg_url: str, name: str, *, create: bool = True) -> None:
    admin = pg_params(pg_url, "postgres")  # the maintenance database
    with psycopg.connect(**admin, autocommit=True) as conn:
        # WITH (FORCE): a daphne that did not exit cleanly must not keep the database alive.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def manage(env: dict, *args: str, stdin: str | None = None) -> str:
    """Run `manage.py <args>` as an operator would; return its stdout, or fail with its stderr."""
    proc = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout.strip()


def seed(env: dict, target: dict) -> str:
    """Org, admin, token and the `bench-pg` connection. Returns the raw token."""
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "org_create", ORG)
    manage(env, "user_create", "--org", ORG, "--email", EMAIL, "--groups", "admin")
    token = manage(env, "token_issue", "--email", EMAIL, "--name", "bench")
    config = {"host": target["host"], "port": int(target["port"]), "database": target["dbname"], "user": target["user"]}
    if target.get("password"):
        config["password"] = target["password"]
    manage(
        env,
        "connection_create",
        "--org",
        ORG,
        "--name",
        CONNECTION,
        "--kind",
        "postgres",
        "--config-stdin",
        stdin=json.dumps(config),
    )
    return token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gateway(env: dict, port: int, log_path: Path):
    """daphne serving gateway.asgi, as `make run` does; stopped (SIGTERM, then SIGKILL) on exit."""
    cmd = [sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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
                raise RuntimeError(f"daphne did not become healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process from /proc (Linux); None elsewhere. Used to spot a saturated side."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# --- statistics ----------------------------------------------------------------------------------


def summarize(samples_s: list[float]) -> dict:
    ms = sorted(s * 1000 for s in samples_s)
    if len(ms) == 1:
        q = ms * 99
    else:
        q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "n": len(ms),
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "mean": statistics.fmean(ms),
        "min": ms[0],
        "max": ms[-1],
    }


# --- sequential latency --------------------------------------------------------------------------


def measure_direct(target: dict, n: int, warmup: int) -> list[float]:
    """The floor: `SELECT 1` on one persistent autocommit connection, no gateway."""
    samples = []
    with psycopg.connect(**target, autocommit=True) as conn, conn.cursor() as cur:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            cur.execute(QUERY)
            cur.fetchone()
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                samples.append(elapsed)
    return samples


async def measure_sdk(url: str, token: str, mode: str, n: int, warmup: int) -> dict:
    """`exec SELECT 1` and `me_get` through one open SDK client session, sequentially."""
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    out: dict = {}
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        await client.list_tools()  # the modern-era client validates results against the listing
        calls = {
            "exec": ("exec", {"connection_name": CONNECTION, "input": QUERY}),
            "me_get": ("me_get", {}),
        }
        for label, (tool, arguments) in calls.items():
            samples, server_ms = [], []
            for i in range(warmup + n):
                t0 = time.perf_counter()
                result = await client.call_tool(tool, arguments)
                elapsed = time.perf_counter() - t0
                if result.is_error:
                    raise RuntimeError(f"{tool} ({mode}) failed: {result.content[0].text}")
                if tool == "exec":
                    body = result.structured_content
                    if body["status"] != "completed" or body.get("rows") != [[1]]:
                        raise RuntimeError(f"exec ({mode}) did not complete as expected: {body}")
                if i >= warmup:
                    samples.append(elapsed)
                    if tool == "exec":
                        server_ms.append(result.structured_content["execution_time_ms"])
            out[label] = {"samples": samples}
            if server_ms:
                # What the connector itself took (connect + query), as recorded on the session.
                out[label]["connector_ms_mean"] = statistics.fmean(server_ms)
    return out


# --- throughput (plain JSON-RPC over HTTP, modern era) -------------------------------------------


def rpc_request(tool: str, arguments: dict, request_id: int) -> tuple[dict, dict]:
    """Headers and body of one stateless modern-era `tools/call`, as the SDK client sends them."""
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


async def raw_call(client: httpx2.AsyncClient, url: str, tool: str, arguments: dict, request_id: int) -> str | None:
    """POST one `tools/call`; None when it succeeded, else a short reason (tallied in the results)."""
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


def rpc_message(response: httpx2.Response, request_id: int) -> dict | None:
    """The JSON-RPC response for `request_id`, whether sent as JSON or as SSE `data:` lines."""
    if response.headers.get("content-type", "").startswith("application/json"):
        message = response.json()
        return message if message.get("id") == request_id else None
    for line in response.text.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if message.get("id") == request_id and ("result" in message or "error" in message):
                return message
    return None


async def _load(url: str, token: str, tool: str, arguments: dict, clients: int, duration: float) -> dict:
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300), limits=limits
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
    """Entry point of one load-generator process (spawned, so it shares no state with us)."""
    return asyncio.run(_load(url, token, tool, arguments, clients, duration))


def merge_counts(dicts) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, n in d.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def measure_throughput(url, token, server_pid, tool, arguments, concurrency, duration, procs) -> dict:
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    shares = [s for s in shares if s]
    ctx = multiprocessing.get_context("spawn")
    server_cpu_before = process_cpu_seconds(server_pid)
    with ctx.Pool(len(shares)) as pool:
        parts = pool.starmap(load_worker, [(url, token, tool, arguments, s, duration) for s in shares])
    server_cpu_after = process_cpu_seconds(server_pid)
    latencies = [x for part in parts for x in part["latencies"]]
    elapsed = max(part["elapsed"] for part in parts)
    result = {
        "tool": tool,
        "concurrency": concurrency,
        "loadgen_procs": len(shares),
        "elapsed_s": elapsed,
        "ok": len(latencies),
        "failures": sum(n for part in parts for n in part["failures"].values()),
        "failure_reasons": merge_counts(part["failures"] for part in parts),
        "rps": len(latencies) / elapsed,
        # Share of one core each side used; near 100% means that side was the bottleneck.
        "loadgen_cpu_pct": 100 * sum(part["cpu"] for part in parts) / elapsed,
        "server_cpu_pct": (
            100 * (server_cpu_after - server_cpu_before) / elapsed
            if server_cpu_before is not None and server_cpu_after is not None
            else None
        ),
    }
    if latencies:
        result["latency"] = summarize(latencies)
    return result


# --- reporting -----------------------------------------------------------------------------------


def latency_row(label: str, stats: dict) -> str:
    return (
        f"  {label:<28} {stats['p50']:8.2f} {stats['p95']:8.2f} {stats['p99']:8.2f} {stats['mean']:8.2f}"
        f" {stats['max']:8.2f}"
    )


def report(results: dict, args) -> None:
    lat = results["latency"]
    print()
    print(f"Sequential latency, ms (n={args.n} after {args.warmup} warm-up calls each)")
    print(f"  {'series':<28} {'p50':>8} {'p95':>8} {'p99':>8} {'mean':>8} {'max':>8}")
    for label, stats in lat.items():
        print(latency_row(label, stats))
    for mode, extra in results["connector_ms_mean"].items():
        print(f"  exec ({mode}): the connector itself took {extra:.2f} ms on average (session execution_time_ms)")

    direct = lat["direct psycopg SELECT 1"]["p50"]
    print()
    for mode in results["modes"]:
        overhead = lat[f"exec SELECT 1 ({mode})"]["p50"] - direct
        results["overhead_p50_ms"][mode] = overhead
        verdict = "MET" if overhead < args.target_ms else "NOT MET"
        print(
            f"exec overhead over direct psycopg at p50 ({mode}): {overhead:.2f} ms"
            f" (target < {args.target_ms:g} ms: {verdict})"
        )

    if results["throughput"]:
        print()
        print(f"Throughput: {args.concurrency} concurrent clients, {args.duration:g} s each, plain JSON-RPC POSTs")
        print(
            f"  {'tool':<10} {'req/s':>8} {'ok':>7} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'daphne CPU':>11} {'loadgen CPU':>12}"
        )
        for run in results["throughput"]:
            stats = run.get("latency") or {"p50": float("nan"), "p99": float("nan")}
            server = f"{run['server_cpu_pct']:.0f}%" if run["server_cpu_pct"] is not None else "n/a"
            print(
                f"  {run['tool']:<10} {run['rps']:8.1f} {run['ok']:7d} {run['failures']:7d} {stats['p50']:8.2f}"
                f" {stats['p99']:8.2f} {server:>11} {run['loadgen_cpu_pct']:11.0f}%"
            )
        for run in results["throughput"]:
            for reason, n in sorted(run["failure_reasons"].items(), key=lambda kv: -kv[1]):
                print(f"  {run['tool']} failure x{n}: {reason}")
        print(
            f"  ({os.cpu_count()} CPUs; daphne is one process, the load generator ran in"
            f" {results['throughput'][0]['loadgen_procs']} separate process(es); CPU is % of one core)"
        )
        busy = [r for r in results["throughput"] if r["server_cpu_pct"] and r["server_cpu_pct"] > 85]
        if busy:
            print("  daphne was CPU-bound (one core): these rates are the single-process ceiling.")
        if any(r["loadgen_cpu_pct"] > 85 for r in results["throughput"]):
            print("  the load generator was CPU-bound: rerun with --loadgen-procs 2 or on another machine.")


# --- main ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    gateway_db = pg_params(args.pg_url, args.db_name)
    target = pg_params(args.pg_url, "postgres")
    data_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    port = free_port()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url_for(gateway_db),
        REDIS_URL=args.redis_url,
        PORT=str(port),
        # Generated secrets (Django key, Fernet key) go to a throwaway directory, not the
        # developer's .portcullis/.
        PORTCULLIS_DATA_DIR=str(data_dir),
    )
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "latency": {},
        "connector_ms_mean": {},
        "overhead_p50_ms": {},
        "modes": ["auto"] if args.skip_legacy else ["auto", "legacy"],
        "throughput": [],
    }
    log_path = data_dir / "daphne.log"
    try:
        print(f"setting up database {args.db_name} and seeding it ...", flush=True)
        recreate_database(args.pg_url, args.db_name)
        token = seed(env, target)
        with gateway(env, port, log_path) as (url, proc):
            mcp_url = f"{url}/api/mcp"
            print(f"daphne is up on {url} (pid {proc.pid})", flush=True)

            print("direct psycopg ...", flush=True)
            results["latency"]["direct psycopg SELECT 1"] = summarize(measure_direct(target, args.n, args.warmup))
            for mode in results["modes"]:
                print(f"SDK client, mode={mode} ...", flush=True)
                sdk = asyncio.run(measure_sdk(mcp_url, token, mode, args.n, args.warmup))
                results["latency"][f"exec SELECT 1 ({mode})"] = summarize(sdk["exec"]["samples"])
                results["latency"][f"me_get ({mode})"] = summarize(sdk["me_get"]["samples"])
                results["connector_ms_mean"][mode] = sdk["exec"]["connector_ms_mean"]

            if not args.skip_throughput:
                # One checked call first: a load test that counts only failures proves nothing.
                async def probe():
                    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                        for i, (tool, arguments) in enumerate(
                            [("me_get", {}), ("exec", {"connection_name": CONNECTION, "input": QUERY})]
                        ):
                            failure = await raw_call(http, mcp_url, tool, arguments, i + 1)
                            if failure is not None:
                                raise RuntimeError(f"plain JSON-RPC {tool} did not succeed: {failure}")

                asyncio.run(probe())
                for tool, arguments in [("me_get", {}), ("exec", {"connection_name": CONNECTION, "input": QUERY})]:
                    print(f"throughput: {tool}, {args.concurrency} clients for {args.duration:g} s ...", flush=True)
                    results["throughput"].append(
                        measure_throughput(
                            mcp_url, token, proc.pid, tool, arguments, args.concurrency, args.duration, args.loadgen_procs
                        )
                    )
        report(results, args)
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            path = RESULTS_DIR / f"exec_latency-{stamp}.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nresults written to {path.relative_to(ROOT)}")
        return 0
    except BaseException:
        if log_path.exists() and log_path.stat().st_size:
            print(f"--- daphne log (tail) ---\n{log_path.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        try:
            recreate_database(args.pg_url, args.db_name, create=False)
        except Exception as exc:  # report, but do not hide the original error
            print(f"warning: could not drop {args.db_name}: {exc}", file=sys.stderr)
        if args.keep_log and log_path.exists():
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            kept = RESULTS_DIR / f"daphne-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.log"
            shutil.copyfile(log_path, kept)
            print(f"daphne log kept in {kept.relative_to(ROOT)}")
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
