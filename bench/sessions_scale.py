"""sessions_list and sessions_stats with a million sessions in PostgreSQL. `make bench-sessions` runs it.

One run:
  1. makes sure its own gateway database exists (`portcullis_bench_scale`, kept between runs) and
     is migrated; when it does not hold the data of this --seed and --count yet, it is dropped,
     recreated and loaded: 3 orgs, 50 users, 20 connections through the services, then the sessions
     and their analyses with COPY (a few minutes for a million);
  2. measures p50/p95/p99 over --runs calls of each case, in this process, through the real
     services (`sessions.services.session_list` and `session_stats`, as the MCP tools call them)
     with a real `Actor`: an admin, an auditor and a standard user (who sees only their own);
  3. with --mcp, measures a few of the cases again through `/api/mcp` on a daphne process;
  4. prints a table with each p95 against the aim (--aim-ms, 100 ms) and writes JSON to
     bench/results/.

--explain prints EXPLAIN (ANALYZE, BUFFERS) of every query a case sends, once, instead of timing it.
bench/README.md explains the data and the cases.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import exec_latency as common  # noqa: E402  (the shared bench helpers: databases, daphne, percentiles)

RESULTS_DIR = ROOT / "bench" / "results"
GENERATOR_VERSION = 2  # bump when the generated data changes, so old databases are reloaded
META_TABLE = "bench_scale_meta"

# Who works where: (org, share of all sessions, users, connections). 50 users, 20 connections.
ORGS = (("acme", 0.70, 30, 12), ("globex", 0.22, 14, 6), ("initech", 0.08, 6, 2))
CONNECTION_NAMES = (
    "prod-postgres", "prod-mysql", "analytics", "billing-db", "staging-postgres", "orders-replica",
    "bastion-db", "warehouse", "crm-db", "search-index", "legacy-mysql", "reports",
)  # fmt: skip
KINDS = {"prod-mysql": "mysql", "legacy-mysql": "mysql"}
# Weights of the day's hours (UTC) and weekdays (Monday first): office hours and weekdays dominate.
HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 6, 10, 14, 14, 12, 9, 12, 14, 13, 11, 8, 5, 4, 3, 2, 2, 1)
WEEKDAY_WEIGHTS = (10, 11, 11, 10, 8, 2, 1)
STATUSES = (("done", 86.0), ("failed", 6.0), ("blocked", 5.5), ("cancelled", 2.5))
RECENT_STATUSES = (("pending_review", 1.0), ("running", 0.5), ("open", 0.2))  # the last two days only
VERBS = (("exec", 78), ("schema", 12), ("runbook", 6), ("tool", 4))
SURFACES = (("mcp", 55), ("web", 25), ("api", 12), ("cli", 8))
CLIENTS = {"mcp": ("claude-code", "cursor", "mcp-inspector"), "web": ("firefox", "chrome"), "api": ("ci",)}
RISKS = (("low", 78), ("medium", 14), ("high", 6), ("critical", 2))
BLOCKED_RISKS = (("low", 10), ("medium", 30), ("high", 40), ("critical", 20))
ANALYSED_SHARE = 0.97  # of finished sessions; the rest are waiting for theirs (or lost it)
STATEMENTS = (
    "SELECT id, email, created_at FROM customers WHERE id = {n}",
    "SELECT count(*) FROM orders WHERE created_at > now() - interval '{m} days'",
    "UPDATE orders SET status = 'shipped' WHERE id = {n}",
    "DELETE FROM sessions_cache WHERE expires_at < now()",
    "SELECT * FROM invoices ORDER BY total DESC LIMIT {m}",
    "INSERT INTO audit_notes (note) VALUES ('ticket {n}')",
    "ALTER TABLE orders ADD COLUMN note_{m} text",
    "kubectl get pods -n shop-{m}",
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1_000_000, help="sessions to load (default 1,000,000)")
    p.add_argument("--seed", type=int, default=20261122, help="random seed of the generated data")
    p.add_argument("--runs", type=int, default=50, help="measured calls per case (default 50)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured calls before each case (default 3)")
    p.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432"),
        help="PostgreSQL server that holds the bench database",
    )
    p.add_argument("--db-name", default="portcullis_bench_scale", help="its database (kept between runs)")
    p.add_argument("--reload", action="store_true", help="drop and load the data even if it is there")
    p.add_argument("--only", default="", help="run only the cases whose name contains this text")
    p.add_argument("--aim-ms", type=float, default=100.0, help="the p95 aim per call (default 100 ms)")
    p.add_argument("--mcp", action="store_true", help="also measure a few cases through /api/mcp on daphne")
    p.add_argument("--mcp-only", action="store_true", help="with --mcp: skip the in-process series")
    p.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each case's queries")
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/sessions_scale-*.json")
    args = p.parse_args(argv)
    if args.count < 1000 or args.runs < 1 or args.warmup < 0:
        p.error("--count must be at least 1000, --runs positive, --warmup not negative")
    return args


# --- the database and the data --------------------------------------------------------------------


def database_exists(pg_url: str, name: str) -> bool:
    with psycopg.connect(**common.pg_params(pg_url, "postgres"), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def loaded_meta(params: dict) -> dict | None:
    """What the bench database holds, from the marker table written at the end of a load."""
    with psycopg.connect(**params, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (META_TABLE,)).fetchone()[0]
        if not exists:
            return None
        row = conn.execute(f"SELECT meta FROM {META_TABLE}").fetchone()  # noqa: S608 (a constant)
        return row[0] if row else None


def setup_django(database_url: str) -> None:
    """This process becomes a gateway process on the bench database (no Redis: nothing here waits)."""
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = ""
    os.environ.setdefault("PORTCULLIS_DATA_DIR", tempfile.mkdtemp(prefix="portcullis-bench-scale-"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")
    import django

    django.setup()


def weighted(rng: random.Random, table) -> str:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


@dataclass
class Population:
    """The people and connections the sessions belong to, with how much each of them works."""

    orgs: list = field(default_factory=list)  # (org, share, [(user, weight)], [(connection, weight)])


def create_population() -> Population:
    """Orgs, users (an admin, an auditor, an agent account that does a fifth of its org's work, and
    developers with Zipf-like activity) and connections, through the services as an operator would."""
    from gateway.services import connection_create_headless
    from governance.services import org_create, user_create

    population = Population()
    for name, share, n_users, n_connections in ORGS:
        org = org_create(name=name)
        users = [
            (user_create(org=org, email=f"admin@{name}.test", groups=["admin"]), 2.0),
            (user_create(org=org, email=f"auditor@{name}.test", groups=["auditor"]), 0.5),
            (user_create(org=org, email=f"agent-ci@{name}.test", groups=["engineering"]), 0.0),
        ]
        for i in range(1, n_users - 2):
            users.append((user_create(org=org, email=f"dev{i:02d}@{name}.test", groups=["engineering"]), 0.0))
        # developers: weight 1/rank^0.8; the agent account does about 20% of the org's sessions
        dev_weights = [1 / (rank**0.8) for rank in range(1, n_users - 2)]
        scale = sum(dev_weights) + 2.5
        users = (
            users[:2]
            + [(users[2][0], scale * 0.25)]
            + [(u, w) for (u, _), w in zip(users[3:], dev_weights, strict=True)]
        )
        connections = []
        for rank, cname in enumerate(CONNECTION_NAMES[:n_connections], start=1):
            kind = KINDS.get(cname, "postgres")
            settings = {"host": f"{cname}.internal", "database": "app", "user": "portcullis"}
            conn = connection_create_headless(org=org, name=cname, kind=kind, settings=settings, options={})
            connections.append((conn, 1 / rank))
        population.orgs.append((org, share, users, connections))
    return population


def _copy_value(field_obj, value):
    """A Python value as COPY wants it: JSON fields wrapped, everything else as is."""
    from django.db.models import JSONField
    from psycopg.types.json import Jsonb

    if isinstance(field_obj, JSONField):
        return None if value is None else Jsonb(value)
    return value


def _defaults(model) -> dict:
    """Every concrete column with its model default, so columns other engineers add still load."""
    out = {}
    for f in model._meta.concrete_fields:
        if f.primary_key and f.get_default() is None:
            continue  # an auto id
        out[f.column] = (f, f.get_default() if f.has_default() else (None if f.null else ""))
    return out


def generate_and_copy(params: dict, population: Population, count: int, seed: int, anchor: datetime) -> None:
    """Sessions in created_at order (as a live table fills), one year up to `anchor`, then analyses."""
    from sessions.models import Analysis, Session

    rng = random.Random(seed)
    session_cols = _defaults(Session)
    analysis_cols = _defaults(Analysis)
    days = 365
    day_weights = [WEEKDAY_WEIGHTS[(anchor - timedelta(days=days - d)).weekday()] for d in range(days)]
    per_day = [round(count * w / sum(day_weights)) for w in day_weights]
    per_day[-1] += count - sum(per_day)
    org_choice = [(org, share) for org, share, _, _ in population.orgs]
    by_org = {org.pk: (users, conns) for org, _, users, conns in population.orgs}
    analyses = []
    started = time.monotonic()
    with psycopg.connect(**params) as conn:
        with conn.cursor() as cur:
            names = list(session_cols)
            copy_sql = sql.SQL("COPY records_session ({}) FROM STDIN").format(
                sql.SQL(", ").join(map(sql.Identifier, names))
            )
            with cur.copy(copy_sql) as copy:
                written = 0
                for d, n in enumerate(per_day):
                    day_start = anchor - timedelta(days=days - d)
                    recent = d >= days - 2
                    offsets = sorted(
                        rng.choices(range(24), weights=HOUR_WEIGHTS)[0] * 3600 + rng.random() * 3600
                        for _ in range(n)
                    )
                    for seconds in offsets:
                        row = _session_row(
                            rng, org_choice, by_org, day_start + timedelta(seconds=seconds), recent
                        )
                        analysis = row.pop("_analysis")
                        values = {col: default for col, (_, default) in session_cols.items()}
                        values.update(row)
                        copy.write_row([_copy_value(session_cols[c][0], values[c]) for c in names])
                        if analysis:
                            analyses.append((row["id"], analysis, row["ended_at"]))
                        written += 1
                    if d % 30 == 29:
                        print(f"  {written:,} sessions ({time.monotonic() - started:.0f} s)", flush=True)
            names = [c for c in analysis_cols]
            copy_sql = sql.SQL("COPY records_analysis ({}) FROM STDIN").format(
                sql.SQL(", ").join(map(sql.Identifier, names))
            )
            with cur.copy(copy_sql) as copy:
                for session_id, risk, ended_at in analyses:
                    values = {col: default for col, (_, default) in analysis_cols.items()}
                    values.update(
                        session_id=session_id,
                        risk_level=risk,
                        title=f"{risk} risk",
                        explanation="Generated by bench/sessions_scale.py.",
                        analyzer="builtin",
                        reasons=["bench"],
                        created_at=ended_at,
                    )
                    copy.write_row([_copy_value(analysis_cols[c][0], values[c]) for c in names])
        conn.commit()
    print(f"  {count:,} sessions and {len(analyses):,} analyses in {time.monotonic() - started:.0f} s")


def _session_row(rng, org_choice, by_org, created_at: datetime, recent: bool) -> dict:
    org = rng.choices([o for o, _ in org_choice], weights=[s for _, s in org_choice])[0]
    users, conns = by_org[org.pk]
    user = rng.choices([u for u, _ in users], weights=[w for _, w in users])[0]
    connection = rng.choices([c for c, _ in conns], weights=[w for _, w in conns])[0]
    status = weighted(rng, STATUSES + RECENT_STATUSES if recent else STATUSES)
    verb = weighted(rng, VERBS)
    surface = weighted(rng, SURFACES)
    text = rng.choice(STATEMENTS).format(n=rng.randrange(1, 10**6), m=rng.randrange(1, 90))
    final = status in ("done", "failed", "blocked", "cancelled")
    ran = status in ("done", "failed")
    duration = rng.expovariate(1 / 40) if ran else 0.0
    ended_at = created_at + timedelta(milliseconds=5 + duration) if final else None
    risk = None
    if final and rng.random() < ANALYSED_SHARE:
        risk = weighted(rng, BLOCKED_RISKS if status == "blocked" else RISKS)
    return {
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "org_id": org.pk,
        "user_id": user.pk,
        "connection_id": connection.pk,
        "connection_name": connection.name,
        "connection_kind": connection.kind,
        "surface": surface,
        "client": rng.choice(CLIENTS.get(surface, ("portcullis-cli",))),
        "verb": verb,
        "status": status,
        "input": text,
        "input_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "input_bytes": len(text),
        "output": ""
        if not ran
        else f"{rng.randrange(0, 500)} rows"
        if status == "done"
        else "error: timeout",
        "exit_code": (0 if status == "done" else 1) if ran else None,
        "row_count": rng.randrange(0, 500) if status == "done" else None,
        "error": "connection reset by peer" if status == "failed" else "",
        "guardrail_findings": [{"rule": "no-ddl", "statement": 0}] if status == "blocked" else [],
        "runner": "bench",
        "created_at": created_at,
        "started_at": created_at + timedelta(milliseconds=3) if ran else None,
        "ended_at": ended_at,
        "execution_time_ms": int(duration) if ran else None,
        "risk_level": risk,  # the session's copy of its analysis' risk level
        "_analysis": risk,
    }


def ensure_data(args, params: dict) -> dict:
    """The bench database, migrated and holding --count sessions of --seed. Returns its meta."""
    from django.core.management import call_command

    meta = loaded_meta(params) if database_exists(args.pg_url, args.db_name) else None
    wanted = {"seed": args.seed, "count": args.count, "generator": GENERATOR_VERSION}
    if meta and not args.reload and all(meta.get(k) == v for k, v in wanted.items()):
        print(f"reusing {args.db_name}: {args.count:,} sessions, seed {args.seed}; migrating ...", flush=True)
        call_command("migrate", "--noinput", verbosity=0)  # indexes added since the load are built here
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE records_session")  # after a migration's backfill, if any
        return meta
    print(f"creating {args.db_name} and loading {args.count:,} sessions (seed {args.seed}) ...", flush=True)
    common.recreate_database(args.pg_url, args.db_name)
    call_command("migrate", "--noinput", verbosity=0)
    anchor = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    population = create_population()
    generate_and_copy(params, population, args.count, args.seed, anchor)
    started = time.monotonic()
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE records_session")  # statistics and the visibility map
        conn.execute("VACUUM ANALYZE records_analysis")
        meta = {**wanted, "anchor": anchor.isoformat(), "loaded_at": datetime.now(UTC).isoformat()}
        conn.execute(f"CREATE TABLE {META_TABLE} (meta jsonb NOT NULL)")
        conn.execute(f"INSERT INTO {META_TABLE} VALUES (%s)", (json.dumps(meta),))  # noqa: S608
    print(f"  vacuum analyze: {time.monotonic() - started:.0f} s", flush=True)
    return meta


# --- the cases ------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    role: str  # admin | auditor | standard
    kind: str  # list | stats
    kwargs: dict
    mcp: bool = False  # also measured through /api/mcp with --mcp


def cases(meta: dict, params: dict) -> list[Case]:
    """Realistic questions, over dates relative to the end of the generated year."""
    from sessions import services

    anchor = datetime.fromisoformat(meta["anchor"])

    def iso(days_ago: float) -> str:
        return (anchor - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")

    week, month, quarter = (iso(7), iso(0)), (iso(30), iso(0)), (iso(90), iso(0))
    year = {"start_date": iso(365), "end_date": iso(0)}  # split into allowed ranges by `call`
    old_week = (iso(100), iso(93))
    widest = (iso(getattr(services, "STATS_MAX_DAYS", 120) - 1), iso(0))  # up to now: a day to spare
    out = [
        Case("list newest page", "admin", "list", {}, mcp=True),
        Case("list by user (agent, heavy)", "admin", "list", {"user_email": "agent-ci@acme.test"}),
        Case("list by user (light)", "auditor", "list", {"user_email": "dev25@acme.test"}),
        Case("list connection+status", "admin", "list", {"connection": "prod-postgres", "status": "failed"}),
        Case("list connection+status (rare)", "auditor", "list", {"connection": "reports", "status": "cancelled"}),
        Case("list date range (a week, 3 months ago)", "auditor", "list", {"start_date": old_week[0], "end_date": old_week[1]}),
        Case("list risk critical", "admin", "list", {"risk_level": "critical"}, mcp=True),
        Case("list risk high, last 30 days", "auditor", "list", {"risk_level": "high", "start_date": month[0]}),
        Case("list verb+surface", "admin", "list", {"verb": "runbook", "surface": "web"}),
        Case("list standard user, own", "standard", "list", {}),
        Case("list standard user in no group, own", "own-only", "list", {}),
        Case("list standard user in no group, blocked", "own-only", "list", {"status": "blocked"}),
        Case("stats by user, standard user in no group", "own-only", "stats", {"group_by": ["user"]}),
        Case("list standard user, blocked", "standard", "list", {"status": "blocked"}),
        Case("list standard user, risk critical", "standard", "list", {"risk_level": "critical"}),
        Case("list standard user, other's email", "standard", "list", {"user_email": "agent-ci@acme.test"}),
        Case("list deep page (offset 10000)", "admin", "list", {"offset": 10_000}),
        *deep_cursor_cases(meta["count"]),
        Case("stats by user (no range)", "admin", "stats", {"group_by": ["user"]}, mcp=True),
        Case("stats by user, last 30 days", "admin", "stats", {"group_by": ["user"], "start_date": month[0]}),
        Case("stats by user, widest range", "admin", "stats", {"group_by": ["user"], "start_date": widest[0]}),
        Case("stats by weekday, widest range", "auditor", "stats", {"group_by": ["weekday"], "start_date": widest[0]}),
        Case("stats by user, last year", "auditor", "stats", {"group_by": ["user"], **year}),
        Case("stats by weekday (no range)", "auditor", "stats", {"group_by": ["weekday"]}, mcp=True),
        Case("stats by weekday, last month", "admin", "stats", {"group_by": ["weekday"], "start_date": month[0]}),
        Case("stats by weekday, last year", "admin", "stats", {"group_by": ["weekday"], **year}),
        Case("stats by day, last month", "admin", "stats", {"group_by": ["day"], "start_date": month[0]}),
        Case("stats by day, last year", "auditor", "stats", {"group_by": ["day"], **year}),
        Case(
            "stats weekday+hour on prod-postgres, 90 days",
            "admin",
            "stats",
            {"group_by": ["weekday", "hour"], "connection": "prod-postgres", "start_date": quarter[0]},
        ),
        Case("stats by risk, last week", "auditor", "stats", {"group_by": ["risk_level"], "start_date": week[0]}),
        Case("stats by risk+user, last year", "auditor", "stats", {"group_by": ["risk_level", "user"], **year}),
        Case("stats by user, standard user", "standard", "stats", {"group_by": ["user"]}),
        Case("stats by weekday, standard user, year", "standard", "stats", {"group_by": ["weekday"], **year}),
    ]  # fmt: skip
    return out


def deep_cursor_cases(count: int) -> list[Case]:
    """Pages far down the list, by cursor (where the services have one): 50,000 sessions into the
    admin's list, 5,000 into the standard user's own (for a million sessions; in scale for fewer)."""
    from sessions import services
    from sessions.models import Session

    if not hasattr(services, "session_cursor"):
        return []
    newest = Session.objects.order_by("-created_at", "-pk")
    deep, own = count // 20, count // 200
    admin_at = newest.filter(org__name="acme")[deep - 1]
    own_at = newest.filter(user__email="dev05@acme.test")[own - 1]
    cursor = services.session_cursor
    return [
        Case(f"list deep page (cursor, {deep} in)", "admin", "list", {"cursor": cursor(admin_at)}),
        Case(f"list standard user, cursor {own} in", "standard", "list", {"cursor": cursor(own_at)}),
    ]


def actors() -> dict:
    from governance.models import User
    from governance.policy import Actor

    def actor(email):
        return Actor.for_user(User.objects.get(email=email), surface="mcp", client="bench")

    # dev05 is a standard user with a middling share of acme's sessions (about 2%)
    return {
        "admin": actor("admin@acme.test"),
        "auditor": actor("auditor@acme.test"),
        "standard": actor("dev05@acme.test"),
        # The same user as if in no group: the policy's "own sessions only" path, without the
        # "or reviewable by my groups" subquery, to show what that subquery costs.
        "own-only": dataclasses.replace(actor("dev05@acme.test"), groups=frozenset(), group_ids=frozenset()),
    }


def call(case: Case, actor) -> int:
    """One call as the MCP tool makes it (the service, then the dicts it renders). Returns rows."""
    from sessions import services

    if case.kind == "list":
        page, _total = services.session_list(
            actor=actor, limit=case.kwargs.get("limit", 50), **_list_kwargs(case)
        )
        return len([services.session_to_dict(s, actor=actor) for s in page])
    counts: dict = {}
    for window in _stats_windows(case.kwargs, getattr(services, "STATS_MAX_DAYS", None)):
        for g in services.session_stats(actor=actor, **window)["groups"]:
            key = tuple(v for k, v in g.items() if k != "count")
            counts[key] = counts.get(key, 0) + g["count"]
    return len(counts)


def _stats_windows(kwargs: dict, max_days: int | None) -> list[dict]:
    """One call's arguments, or consecutive ranges of at most `max_days` covering it: what an agent
    does for a year when the service bounds the range. The counts of the windows are added up."""
    if not (max_days and kwargs.get("start_date") and kwargs.get("end_date")):
        return [kwargs]
    start, end = (
        datetime.fromisoformat(kwargs[k].replace("Z", "+00:00")) for k in ("start_date", "end_date")
    )
    windows = []
    while start < end:
        stop = min(start + timedelta(days=max_days), end)
        windows.append({**kwargs, "start_date": start.isoformat(), "end_date": stop.isoformat()})
        start = stop
    return windows


def _list_kwargs(case: Case) -> dict:
    return {k: v for k, v in case.kwargs.items() if k != "limit"}


def measure(case: Case, actor, runs: int, warmup: int) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(warmup):
        call(case, actor)
    # CPU per call, of this process and of its PostgreSQL backend: on a busy machine the wall-clock
    # figures mostly measure the wait for a core; the CPU is what a call costs. (Parallel workers
    # of a parallel plan are other processes, so their CPU is not counted.)
    backend = _backend_pid()
    own_cpu, server_cpu = time.process_time(), common.process_cpu_seconds(backend)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = call(case, actor)
        samples.append(time.perf_counter() - t0)
    own_cpu = time.process_time() - own_cpu
    server_ms = common.cpu_per_call(backend, server_cpu, runs) if _backend_pid() == backend else None
    with CaptureQueriesContext(connection) as queries:
        call(case, actor)
    cpu_ms = None if server_ms is None else 1000 * own_cpu / runs + server_ms
    return {
        **common.summarize({"samples": samples}),
        "rows": rows,
        "queries": len(queries),
        "cpu_ms": cpu_ms,
        "server_cpu_ms": server_ms,
    }


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def explain(case: Case, actor) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        call(case, actor)
    print(f"\n=== {case.name} ({case.role}) ===")
    with connection.cursor() as cur:
        for q in queries.captured_queries:
            if not q["sql"].lstrip().upper().startswith("SELECT"):
                continue
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + q["sql"])
            print(q["sql"][:400])
            print("\n".join(r[0] for r in cur.fetchall()))


# --- through /api/mcp -----------------------------------------------------------------------------


def mcp_arguments(case: Case) -> dict:
    args = {("user" if k == "user_email" else k): v for k, v in case.kwargs.items()}
    if case.kind == "list":
        args.setdefault("limit", 50)
    return args


def measure_mcp(args, database_url: str, selected: list[Case], roles: dict) -> dict:
    from governance.services import token_issue

    port = common.free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="portcullis-bench-scale-mcp-"))
    env = dict(
        os.environ, DATABASE_URL=database_url, REDIS_URL="", PORT=str(port), PORTCULLIS_DATA_DIR=str(data_dir)
    )
    tokens = {role: _token(token_issue, actor, admin=role != "standard") for role, actor in roles.items()}
    out = {}
    with common.gateway(env, port, data_dir / "daphne.log") as (url, proc):
        for case in selected:
            tool = "sessions_list" if case.kind == "list" else "sessions_stats"
            before = common.process_cpu_seconds(proc.pid)
            out[case.name] = asyncio.run(
                _mcp_series(f"{url}/api/mcp", tokens[case.role], tool, mcp_arguments(case), args)
            )
            # daphne's CPU per call (warm-up included); its PostgreSQL backends are not counted
            out[case.name]["cpu_ms"] = common.cpu_per_call(proc.pid, before, args.warmup + args.runs)
    return out


def _token(token_issue, actor, *, admin: bool) -> str:
    """A token for `actor`. Admins and auditors need the admin capability: a read_write token caps
    its user at a standard member's powers."""
    import inspect

    kwargs = (
        {"capability": "admin"} if admin and "capability" in inspect.signature(token_issue).parameters else {}
    )
    return token_issue(user=actor.user, name="bench-scale", **kwargs)[1]


async def _mcp_series(url: str, token: str, tool: str, arguments: dict, args) -> dict:
    samples = []
    async with common.bearer_client(token) as http:
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            failure = await common.raw_call(http, url, tool, arguments, i + 1)
            elapsed = time.perf_counter() - t0
            if failure is not None:
                raise RuntimeError(f"{tool} {arguments} failed over MCP: {failure}")
            if i >= args.warmup:
                samples.append(elapsed)
    return common.summarize({"samples": samples})


# --- report ---------------------------------------------------------------------------------------


def report(results: dict, aim: float) -> None:
    env = results["environment"]
    print(
        f"\nrevision {env['revision']}{' (uncommitted changes)' if env['uncommitted_changes'] else ''}, "
        f"{env['cpus']} CPUs, load average at start {', '.join(f'{x:.2f}' for x in env['load_average_at_start'])}, "
        f"PostgreSQL {env['postgres']}; {results['data']['count']:,} sessions, "
        f"{results['data']['analyses']:,} analyses"
    )
    header = f"{'case':<46} {'role':<8} {'n':>3} {'p50':>8} {'p95':>8} {'p99':>8} {'max':>8} {'rows':>5} {'q':>2} {'cpu':>6}  aim"
    for title, series in (
        ("services (in process)", results["services"]),
        ("MCP (/api/mcp, plain JSON-RPC)", results["mcp"]),
    ):
        if not series:
            continue
        print(f"\n{title}, milliseconds\n{header}\n{'-' * len(header)}")
        for name, s in series.items():
            verdict = "ok" if s["p95"] < aim else "MISSED"
            print(
                f"{name:<46} {s.get('role', ''):<8} {s['n']:>3} {s['p50']:>8.1f} {s['p95']:>8.1f} {s['p99']:>8.1f} "
                f"{s['max']:>8.1f} {s.get('rows', ''):>5} {s.get('queries', ''):>2} {_ms(s.get('cpu_ms')):>6}  {verdict}"
            )
    print(
        "rows: of the page or groups; q: SQL queries per call; cpu: CPU ms per call (this process and its PostgreSQL backend)"
    )
    series = [*results["services"].items(), *((f"MCP {n}", s) for n, s in results["mcp"].items())]
    missed = [n for n, s in series if s["p95"] >= aim]
    print(
        f"\naim: p95 < {aim:g} ms: {'met by every case' if not missed else f'missed by {len(missed)}: ' + '; '.join(missed)}"
    )
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _ms(value) -> str:
    return "" if value is None else f"{value:.1f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    params = common.pg_params(args.pg_url, args.db_name)
    database_url = common.pg_url_for(params)
    if not database_exists(args.pg_url, args.db_name):
        common.recreate_database(args.pg_url, args.db_name)
    setup_django(database_url)
    meta = ensure_data(args, params)
    roles = actors()
    selected = [c for c in cases(meta, params) if args.only in c.name]
    if args.explain:
        for case in selected:
            explain(case, roles[case.role])
        return 0
    with psycopg.connect(**params) as conn:
        analyses = conn.execute("SELECT count(*) FROM records_analysis").fetchone()[0]
    results: dict = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": vars(args),
        "environment": common.describe_environment(args.pg_url),
        "data": {**meta, "analyses": analyses},
        "services": {},
        "mcp": {},
    }
    for case in [] if args.mcp_only else selected:
        print(f"  {case.name} ({case.role}) ...", end=" ", flush=True)
        s = measure(case, roles[case.role], args.runs, args.warmup)
        results["services"][case.name] = {"role": case.role, **s}
        print(f"p95 {s['p95']:.1f} ms, CPU {_ms(s['cpu_ms'])} ms/call", flush=True)
    if args.mcp:
        mcp_cases = [c for c in selected if c.mcp]
        for name, s in measure_mcp(args, database_url, mcp_cases, roles).items():
            results["mcp"][name] = {"role": next(c.role for c in mcp_cases if c.name == name), **s}
    report(results, args.aim_ms)
    if not args.no_json:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"sessions_scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
