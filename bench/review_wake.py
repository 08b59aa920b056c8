"""How long after a reviewer decides in one gateway process does `reviews_wait` return in another?

One run:
  1. creates its own gateway database (dropped at the end) and seeds an org with an admin, a
     requester (a standard user), a reviewer in group `dba`, tokens for the requester and the
     reviewer, a sqlite connection `bench-sqlite`, an access request rule (`command`, reviewed by
     `dba`) on it, and the org setting that allows decisions over MCP;
  2. starts two daphne processes, A and B, on the same database and Redis, as `make run` does;
  3. per trial: the requester calls `exec` on A (answer: pending_approval with a review id), starts
     `reviews_wait` on A, waits `--settle-ms` so A has subscribed, then the reviewer calls
     `reviews_update` APPROVED on B. The wake-up latency is the time from B's answer to A's;
  4. prints p50/p95/max against the aim (100 ms) and writes JSON to bench/results/.

    .venv/bin/python bench/review_wake.py [--n 50] [--settle-ms 200] [--aim-ms 100]

Calls are plain JSON-RPC POSTs (exec_latency.py's helpers) on one keep-alive client per person:
the SDK client would add its own cost to both ends of the interval. bench/README.md explains.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exec_latency import (  # noqa: E402  (the same setup as the exec bench)
    ORG,
    bearer_client,
    describe_environment,
    free_port,
    gateway,
    manage,
    pg_params,
    pg_url_for,
    recreate_database,
    rpc_message,
    rpc_request,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"

ADMIN_EMAIL = "admin@bench.test"
REQUESTER_EMAIL = "requester@bench.test"
REVIEWER_EMAIL = "reviewer@bench.test"
REVIEWER_GROUP = "dba"
CONNECTION = "bench-sqlite"
RULE = "bench-review"
INPUT = "delete from items where id = 1"

# The series, in the order they are printed; the first is the one held against the aim.
WAKE = "decided (B answered) -> woke (A answered)"
FROM_SENT = "decision sent to B -> woke"
FROM_DECIDED_AT = "decided_at (B's clock) -> woke"
UPDATE_RTT = "reviews_update round trip on B"
EXEC_RTT = "exec -> pending_approval on A"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=50, help="measured trials (default 50)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured trials first (default 2)")
    p.add_argument(
        "--settle-ms",
        type=float,
        default=200.0,
        help="pause between starting reviews_wait on A and deciding on B, so A has subscribed (default 200)",
    )
    p.add_argument(
        "--wait-timeout", type=float, default=30.0, help="reviews_wait timeout_seconds (default 30)"
    )
    p.add_argument("--aim-ms", type=float, default=100.0, help="wake-up latency aim at p95 (default 100 ms)")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server holding the gateway database",
    )
    p.add_argument(
        "--db-name", default="portcullis_bench_review", help="gateway database (dropped and recreated)"
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REVIEW_REDIS_URL", "redis://127.0.0.1:6379/12"),
        help="Redis for the channel layer both processes share (default db 12; BENCH_REVIEW_REDIS_URL)",
    )
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/review_wake-*.json")
    p.add_argument("--keep-log", action="store_true", help="copy both daphne logs to bench/results/")
    args = p.parse_args(argv)
    if args.n < 1 or args.warmup < 0 or args.settle_ms < 0 or not 1 <= args.wait_timeout <= 300:
        p.error("--n must be positive, --warmup and --settle-ms not negative, --wait-timeout within 1..300")
    return args


# --- setup ---------------------------------------------------------------------------------------

# Access request rules and review settings have no management command: call the services, as an
# admin on the cli surface, so they are validated and audited as any other change would be.
SEED_RULE = f"""
from governance.models import User
from governance.policy import Actor
from reviews import services

admin = Actor.for_user(User.objects.get(email={ADMIN_EMAIL!r}), surface="cli", client="bench")
services.access_rule_create(
    actor=admin, name={RULE!r}, access_type="command", connections=[{CONNECTION!r}],
    reviewer_groups=[{REVIEWER_GROUP!r}],
)
services.review_settings_update(actor=admin, mcp_decisions_enabled=True)
"""


def seed(env: dict, target_path: Path) -> dict:
    """Migrate, then create the org, its people, their tokens, the connection and the rule.
    Returns the requester's and the reviewer's raw tokens."""
    manage(env, "migrate", "--noinput", "-v", "0")
    manage(env, "org_create", ORG)
    manage(env, "user_create", "--org", ORG, "--email", ADMIN_EMAIL, "--groups", "admin")
    manage(env, "user_create", "--org", ORG, "--email", REQUESTER_EMAIL)
    manage(env, "user_create", "--org", ORG, "--email", REVIEWER_EMAIL, "--groups", REVIEWER_GROUP)
    tokens = {
        "requester": manage(env, "token_issue", "--email", REQUESTER_EMAIL, "--name", "bench"),
        "reviewer": manage(env, "token_issue", "--email", REVIEWER_EMAIL, "--name", "bench"),
    }
    conn = sqlite3.connect(target_path)  # nothing runs on it: every exec waits for its review
    conn.execute("create table items (id integer primary key, name text)")
    conn.close()
    manage(
        env,
        *("connection_create", "--org", ORG, "--name", CONNECTION, "--kind", "sqlite", "--config-stdin"),
        stdin=json.dumps({"path": str(target_path)}),
    )
    manage(env, "shell", "-c", SEED_RULE)
    return tokens


# Celery's queue keys (CELERY_TASK_DEFAULT_QUEUE): no worker runs here, so every decision leaves its
# notification tasks behind in the bench's Redis database.
CELERY_KEYS = ("portcullis", "_kombu.binding.portcullis", "_kombu.binding_permanent.portcullis")


def redis_is_empty(url: str) -> bool:
    with redis.Redis.from_url(url) as r:
        return r.dbsize() == 0


def redis_drop_queue(url: str) -> None:
    with redis.Redis.from_url(url) as r:
        r.delete(*CELERY_KEYS)


# --- one call, one trial -------------------------------------------------------------------------


async def call(http: httpx2.AsyncClient, url: str, tool: str, arguments: dict, request_id: int) -> dict:
    """POST one `tools/call` and return its structured result; raise on any kind of failure."""
    headers, body = rpc_request(tool, arguments, request_id)
    response = await http.post(url, headers=headers, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"{tool}: HTTP {response.status_code}: {response.text[:200]}")
    message = rpc_message(response, request_id)
    if message is None or "error" in message:
        raise RuntimeError(f"{tool}: no JSON-RPC result: {message}")
    result = message["result"]
    if result.get("isError"):
        raise RuntimeError(f"{tool}: tool error: {(result.get('content') or [{}])[0].get('text', '')[:200]}")
    return result.get("structuredContent") or {}


async def trial(people: dict, url_a: str, url_b: str, number: int, args) -> dict:
    """exec on A -> reviews_wait on A -> reviews_update APPROVED on B; times in seconds."""
    requester, reviewer = people["requester"], people["reviewer"]
    base = number * 10
    t0 = time.perf_counter()
    envelope = await call(requester, url_a, "exec", {"connection_name": CONNECTION, "input": INPUT}, base + 1)
    exec_rtt = time.perf_counter() - t0
    if envelope.get("status") != "pending_approval" or not envelope.get("review_id"):
        raise RuntimeError(f"trial {number}: exec did not wait for review: {envelope}")
    review_id = envelope["review_id"]

    async def wait() -> tuple[dict, float, float]:
        result = await call(
            requester,
            url_a,
            "reviews_wait",
            {"id": review_id, "timeout_seconds": args.wait_timeout},
            base + 2,
        )
        # Stamped here, as the answer arrives, not when the trial gets round to awaiting it.
        return result, time.perf_counter(), time.time()

    waiting = asyncio.create_task(wait())
    await asyncio.sleep(args.settle_ms / 1000)
    if waiting.done():
        raise RuntimeError(f"trial {number}: reviews_wait returned before the decision: {waiting.result()}")
    t_sent = time.perf_counter()
    decided = await call(reviewer, url_b, "reviews_update", {"id": review_id, "status": "APPROVED"}, base + 3)
    t_decided = time.perf_counter()
    woke, t_woke, wall_woke = await waiting

    if decided.get("status") != "APPROVED" or not decided.get("decided_at"):
        raise RuntimeError(f"trial {number}: reviews_update did not approve: {decided}")
    if woke.get("status") != "APPROVED" or woke.get("timed_out") is not False:
        raise RuntimeError(
            f"trial {number}: reviews_wait answered {woke.get('status')}, timed_out={woke.get('timed_out')}"
        )
    decided_at = datetime.fromisoformat(decided["decided_at"]).timestamp()
    return {
        "review_id": review_id,
        WAKE: t_woke - t_decided,
        FROM_SENT: t_woke - t_sent,
        FROM_DECIDED_AT: wall_woke - decided_at,
        UPDATE_RTT: t_decided - t_sent,
        EXEC_RTT: exec_rtt,
        "waited_seconds": woke.get("waited_seconds"),
    }


async def run_trials(tokens: dict, url_a: str, url_b: str, args) -> list[dict]:
    # One keep-alive client per person; the requester's holds two connections (exec, then the wait).
    async with bearer_client(tokens["requester"]) as requester, bearer_client(tokens["reviewer"]) as reviewer:
        people = {"requester": requester, "reviewer": reviewer}
        trials = []
        for i in range(args.warmup + args.n):
            result = await trial(people, url_a, url_b, i, args)
            if i >= args.warmup:
                trials.append(result)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.warmup + args.n} trials", flush=True)
        return trials


# --- reporting -----------------------------------------------------------------------------------


def report(results: dict, args) -> None:
    env = results["environment"]
    load_start, load_end = env["load_average_at_start"], results["load_average_at_end"]
    dirty = " (with uncommitted changes)" if env["uncommitted_changes"] else ""
    print()
    print(
        f"Portcullis {env['revision']}{dirty}, Python {env['python']}, PostgreSQL {env['postgres']},"
        f" {env['cpus']} CPUs"
    )
    if load_start and load_end:
        print(f"load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    print()
    print(
        f"Review wake-up across processes, ms (n={args.n} trials after {args.warmup} warm-up,"
        f" reviews_wait started {args.settle_ms:g} ms before the decision)"
    )
    print(f"  {'series':<44} {'p50':>8} {'p95':>8} {'max':>8} {'mean':>8}")
    for label, s in results["latency"].items():
        print(f"  {label:<44} {s['p50']:8.2f} {s['p95']:8.2f} {s['max']:8.2f} {s['mean']:8.2f}")
    print()
    s = results["latency"][WAKE]
    verdict = "met" if s["p95"] < args.aim_ms else "NOT met"
    beyond = sum(1 for t in results["trials"] if t[WAKE] * 1000 >= args.aim_ms)
    early = sum(1 for t in results["trials"] if t[WAKE] < 0)
    print(
        f"decision in B -> reviews_wait returned in A: p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms,"
        f" max {s['max']:.1f} ms; aim < {args.aim_ms:g} ms at p95: {verdict}"
        f" ({beyond} of {s['n']} trials at or over the aim)"
    )
    if early:
        print(
            f"  in {early} trial(s) A answered before B's answer arrived (a negative interval): B was still"
            " rendering its answer after the commit had woken A"
        )


# --- main ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-review-"))
    # The sqlite connector refuses files in the gateway's data directory: keep the target beside it.
    data_dir = work_dir / "data"
    target_path = work_dir / "target.sqlite3"
    logs = {"A": work_dir / "daphne-a.log", "B": work_dir / "daphne-b.log"}
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg_url_for(pg_params(args.pg_url, args.db_name)),
        REDIS_URL=args.redis_url,
        # Generated development keys go to a throwaway directory, not the developer's .portcullis/.
        PORTCULLIS_DATA_DIR=str(data_dir),
    )
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "environment": describe_environment(args.pg_url),
    }
    # Leave Redis as found: drop the queued tasks at the end only if the database was unused.
    owns_redis = redis_is_empty(args.redis_url)
    try:
        print(f"creating and seeding database {args.db_name} ...", flush=True)
        recreate_database(args.pg_url, args.db_name)
        tokens = seed(env, target_path)
        ports = {"A": free_port(), "B": free_port()}
        # Started one after the other: B comes up once A is healthy, both on the same DB and Redis.
        with (
            gateway({**env, "PORT": str(ports["A"])}, ports["A"], logs["A"]) as (url_a, proc_a),
            gateway({**env, "PORT": str(ports["B"])}, ports["B"], logs["B"]) as (url_b, proc_b),
        ):
            print(
                f"daphne A is up at {url_a} (pid {proc_a.pid}), B at {url_b} (pid {proc_b.pid})", flush=True
            )
            print(f"trials: {args.warmup} warm-up + {args.n} measured ...", flush=True)
            trials = asyncio.run(run_trials(tokens, f"{url_a}/api/mcp", f"{url_b}/api/mcp", args))
        results["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        results["latency"] = {
            label: summarize({"samples": [t[label] for t in trials]})
            for label in (WAKE, FROM_SENT, FROM_DECIDED_AT, UPDATE_RTT, EXEC_RTT)
        }
        results["trials"] = trials
        report(results, args)
        if not args.no_json:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = RESULTS_DIR / f"review_wake-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
            path.write_text(json.dumps(results, indent=2) + "\n")
            print(f"\nresults written to {path.relative_to(ROOT)}")
        return 0
    except BaseException:
        for name, log in logs.items():
            if log.exists() and log.stat().st_size:
                print(
                    f"--- daphne {name} log (last 3000 characters) ---\n{log.read_text()[-3000:]}",
                    file=sys.stderr,
                )
        raise
    finally:
        try:
            recreate_database(args.pg_url, args.db_name, create=False)
        except Exception as exc:  # say so, without hiding the original error
            print(f"warning: could not drop database {args.db_name}: {exc}", file=sys.stderr)
        if owns_redis:
            try:
                redis_drop_queue(args.redis_url)
            except Exception as exc:
                print(f"warning: could not drop the Celery queue in {args.redis_url}: {exc}", file=sys.stderr)
        else:
            print(f"note: {args.redis_url} was in use before the run: its Celery queue was left alone")
        if args.keep_log:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            for name, log in logs.items():
                if log.exists():
                    kept = RESULTS_DIR / f"review_wake-daphne-{name.lower()}-{stamp}.log"
                    shutil.copyfile(log, kept)
                    print(f"daphne {name}'s log kept in {kept.relative_to(ROOT)}")
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
