"""How much latency does the gateway add to a call of an upstream MCP tool?

One run:
  1. creates its own gateway database (dropped at the end), seeds an org, an admin, a token and
     an `mcp` connection to the test upstream server (`tests/upstream_server.py`, an SDK server
     under uvicorn on loopback, started here);
  2. starts daphne on a free port, as `make run` does;
  3. measures p50/p95 of a trivial tool call (`echo`), in the same run, interleaved in rounds (the
     series take turns, so a change in machine load hits both):
       * direct: the official SDK client -> the upstream, one connected client, `call_tool` timed;
       * through the gateway: the same client -> /api/mcp/c/<connection> -> the pipeline -> the
         upstream (a pooled upstream session: list, check the pinned contract, call);
  4. prints the overhead (gateway p50 - direct p50) and each server's CPU per measured call (from
     /proc: daphne for the proxied series, the upstream for the direct one; on a loaded machine a
     steadier figure than the latency), and writes JSON to bench/results/.

    .venv/bin/python bench/upstream_overhead.py [--n 200] [--warmup 20] [--rounds 20] [--mode auto|legacy]
        [--servers daphne,uvicorn] [--baseline PATH]

`--servers` serves this checkout under each server named, and `--baseline` adds the same setup
served from another checkout (a git worktree of an earlier revision, run with this venv): every
gateway runs at once on its own database, and their series take turns call block by call block
with the direct one, so a comparison of servers or revisions sees the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exec_latency import (  # noqa: E402  (the same setup as the exec bench)
    EMAIL,
    ORG,
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
CONNECTION = "bench-mcp"
BEARER = "bench-upstream-bearer"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="measured calls per series (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured calls before each series (default 20)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    p.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="client protocol era")
    p.add_argument(
        "--pg-url", default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14"))
    p.add_argument("--db-name", default="portcullis_bench_upstream")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    p.add_argument(
        "--servers", default="daphne", help="comma-separated ASGI servers for this checkout (daphne, uvicorn)"
    )
    p.add_argument("--baseline", type=Path, help="another checkout to serve beside this one (its daphne)")
    return p.parse_args(argv)


def start_upstream(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream_server", str(port), BEARER],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx2.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the upstream server did not start") from None
            time.sleep(0.1)


def seed(env: dict, upstream_url: str, root: Path = ROOT) -> str:
    manage(env, "migrate", "--noinput", "-v", "0", root=root)
    manage(env, "org_create", ORG, root=root)
    manage(env, "user_create", "--org", ORG, "--email", EMAIL, "--groups", "admin", root=root)
    token = manage(env, "token_issue", "--email", EMAIL, "--name", "bench", root=root)
    config = {"url": upstream_url, "bearer_token": BEARER, "allow_private_network": True}
    manage(
        env,
        *("connection_create", "--org", ORG, "--name", CONNECTION, "--kind", "mcp", "--config-stdin"),
        stdin=json.dumps(config),
        root=root,
    )
    return token


async def _call(client, samples: list | None) -> None:
    started = time.perf_counter()
    result = await client.call_tool("echo", {"text": "ping"})
    elapsed = time.perf_counter() - started
    if result.is_error or result.content[0].text != "ping":
        raise RuntimeError(f"unexpected result: {result}")
    if samples is not None:
        samples.append(elapsed)


async def measure(series: dict, mode: str, n: int, warmup: int, rounds: int, pids: dict) -> dict:
    """Interleaved A/B: both clients connected at once, `rounds` rounds of n/rounds calls each,
    the series taking turns (which goes first alternates), so drift in machine load hits both.
    `pids`: series name -> the server process whose CPU (from /proc) its measured calls cost."""
    samples: dict = {name: [] for name in series}
    per_round: dict = {name: [] for name in series}
    cpu: dict = {name: 0.0 for name in series}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, (url, headers) in series.items():
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=60))
            )
            clients[name] = await stack.enter_async_context(
                Client(streamable_http_client(url, http_client=http), mode=mode)
            )
            await clients[name].list_tools()
            for _ in range(warmup):
                await _call(clients[name], None)
        names = list(series)
        per = max(n // rounds, 1)
        for r in range(rounds):
            for name in names if r % 2 == 0 else reversed(names):
                block: list = []
                before = process_cpu_seconds(pids[name])
                for _ in range(per):
                    await _call(clients[name], block)
                after = process_cpu_seconds(pids[name])
                if cpu[name] is not None and before is not None and after is not None:
                    cpu[name] += after - before
                else:
                    cpu[name] = None
                samples[name] += block
                per_round[name].append(statistics.median(block) * 1000)
    return {name: (samples[name], per_round[name], cpu[name]) for name in series}


def summarize(samples: list[float], round_p50s: list[float], cpu: float | None) -> dict:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return {
        "n": len(ms),
        "server_cpu_ms": None if cpu is None else round(1000 * cpu / len(ms), 2),
        "p50": round(q[49], 2),
        "p95": round(q[94], 2),
        "mean": round(statistics.fmean(ms), 2),
        "round_p50_min": round(min(round_p50s), 2),
        "round_p50_max": round(max(round_p50s), 2),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    if not servers or any(name not in ("daphne", "uvicorn") for name in servers):
        raise SystemExit("--servers takes daphne and/or uvicorn")
    # (label, checkout, server): this checkout's first server is "gateway", as before.
    gateways = [("gateway" if i == 0 else f"gateway ({name})", ROOT, name) for i, name in enumerate(servers)]
    if args.baseline is not None:
        gateways.append(("baseline", args.baseline.resolve(), "daphne"))
    data_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-"))
    upstream_port = free_port()
    upstream_url = f"http://127.0.0.1:{upstream_port}/mcp"
    upstream = start_upstream(upstream_port)
    results = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": describe_environment(args.pg_url),
    }
    databases = [args.db_name if i == 0 else f"{args.db_name}_{i}" for i in range(len(gateways))]
    try:
        series = {"direct": (upstream_url, {"Authorization": f"Bearer {BEARER}"})}
        pids = {"direct": upstream.pid}
        with contextlib.ExitStack() as stack:
            for (label, checkout, server), db_name in zip(gateways, databases, strict=True):
                port = free_port()
                env = dict(os.environ)
                env.update(
                    DATABASE_URL=pg_url_for(pg_params(args.pg_url, db_name)),
                    REDIS_URL=args.redis_url,
                    PORT=str(port),
                    PORTCULLIS_DATA_DIR=str(data_dir / db_name),
                    BENCH_SERVER=server,
                )
                # The MCP rate limits (600/minute per token, 3000/minute per org by default) would refuse a
                # bench's calls. A rate no bench reaches keeps the limiter's Redis round trips in the
                # measured path without refusing.
                env.setdefault("PORTCULLIS_MCP_RATE_PER_TOKEN", "1000000/second")
                env.setdefault("PORTCULLIS_MCP_RATE_PER_ORG", "1000000/second")
                recreate_database(args.pg_url, db_name)
                token = seed(env, upstream_url, checkout)
                url, proc = stack.enter_context(gateway(env, port, data_dir / f"{db_name}.log", checkout))
                series[label] = (f"{url}/api/mcp/c/{CONNECTION}", {"Authorization": f"Bearer {token}"})
                pids[label] = proc.pid
            measured = asyncio.run(measure(series, args.mode, args.n, args.warmup, args.rounds, pids))
        rows = {name: summarize(*measured[name]) for name in series}
        direct = rows["direct"]
        results.update(
            direct=direct,
            gateway=rows["gateway"],
            overhead_p50_ms=round(rows["gateway"]["p50"] - direct["p50"], 2),
            series={
                name: {**row, "overhead_p50_ms": round(row["p50"] - direct["p50"], 2)}
                for name, row in rows.items()
            },
        )
        print(
            f"{'series':<34}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}{'round p50 min-max':>22}"
            f"{'server CPU ms/call':>20}"
        )
        for name, row in rows.items():
            label = {"direct": "direct (SDK client -> upstream)", "gateway": "through /api/mcp/c/<conn>"}.get(
                name, f"{name} /api/mcp/c/<conn>"
            )
            spread = f"{row['round_p50_min']}-{row['round_p50_max']}"
            print(
                f"{label:<34}{row['n']:>5}{row['p50']:>10}{row['p95']:>10}{row['mean']:>10}{spread:>22}"
                f"{row['server_cpu_ms'] if row['server_cpu_ms'] is not None else '-':>20}"
            )
        print(f"overhead at p50: {results['overhead_p50_ms']} ms")
        for name, row in results["series"].items():
            if name not in ("direct", "gateway"):
                print(f"overhead at p50, {name}: {row['overhead_p50_ms']} ms")
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"upstream_overhead-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"results written to {path.relative_to(ROOT)}")
        return 0
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
        for db_name in databases:
            try:
                recreate_database(args.pg_url, db_name, create=False)
            except Exception as exc:
                print(f"warning: could not drop database {db_name}: {exc}", file=sys.stderr)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
