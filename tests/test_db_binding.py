"""On PostgreSQL the gateway binds parameters server-side and prepares its hot statements; behind
PgBouncer (PORTCULLIS_DB_PGBOUNCER) it still binds server-side but prepares nothing."""

import json
import subprocess
import sys

import pytest
from django.db import connection

from governance.models import token_digest
from governance.services import _token_by_digest
from tests.conftest import ROOT, gateway_env

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL only")

# Run in a gateway process of its own: the same statement 10 times on one connection, then what
# that connection has prepared.
PROBE = """
import json
import django
django.setup()
from django.db import connection
with connection.cursor() as cursor:
    for _ in range(10):
        cursor.execute("SELECT count(*) FROM pg_class WHERE relname = %s", ["pg_class"])
    cursor.execute("SELECT statement FROM pg_prepared_statements WHERE NOT from_sql")
    prepared = [row[0] for row in cursor.fetchall()]
print(json.dumps({"server_side_binding": connection.features.uses_server_side_binding, "prepared": prepared}))
"""


def _probe(**env) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**gateway_env(), "DJANGO_SETTINGS_MODULE": "gateway.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_prepares_a_hot_statement_after_a_few_runs(cast):
    assert connection.features.uses_server_side_binding
    digest = token_digest(cast.bob.token)
    for _ in range(7):  # prepared on the run after the fifth (prepare_threshold)
        token, _groups = _token_by_digest(digest)
        assert token.user == cast.bob.user
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements WHERE NOT from_sql"
        )
        prepared = dict(cursor.fetchall())
    [(statement, runs)] = [(s, n) for s, n in prepared.items() if "t.digest = $1" in s]
    assert runs >= 1  # and run from there


def test_it_prepares_nothing_behind_pgbouncer_but_still_binds_server_side():
    direct = _probe()
    assert direct["server_side_binding"]
    assert any("relname = $1" in s for s in direct["prepared"])
    behind_pgbouncer = _probe(PORTCULLIS_DB_PGBOUNCER="true")
    assert behind_pgbouncer == {"server_side_binding": True, "prepared": []}
    client_side = _probe(PORTCULLIS_DB_SERVER_SIDE_BINDING="false")
    assert client_side == {"server_side_binding": False, "prepared": []}
