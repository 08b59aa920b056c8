"""Fail loudly, naming what is missing, when the services the suite needs are unreachable."""

import os
import sys

import psycopg
import redis

problems = []
database_url = os.environ.get("DATABASE_URL", "")
redis_url = os.environ.get("REDIS_URL", "")
if not database_url.startswith(("postgres://", "postgresql://")):
    problems.append(f"DATABASE_URL must point at PostgreSQL for the test suite (got {database_url!r})")
else:
    # Connect to the server's maintenance database: the test database is created by the suite.
    maintenance = psycopg.conninfo.conninfo_to_dict(database_url)
    maintenance["dbname"] = "postgres"
    try:
        psycopg.connect(**maintenance, connect_timeout=3).close()
    except psycopg.Error as exc:
        problems.append(f"PostgreSQL is unreachable at DATABASE_URL: {str(exc).strip().splitlines()[0]}")
if not redis_url:
    problems.append("REDIS_URL is not set")
else:
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis is unreachable at REDIS_URL: {exc}")

if problems:
    print("make test cannot run:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print(
        "Start the servers (see README, 'Running the tests') or set DATABASE_URL / REDIS_URL.",
        file=sys.stderr,
    )
    sys.exit(2)
