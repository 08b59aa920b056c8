"""The headless management commands: each prints only its result and fails clearly on bad input."""

import io
import json

import pytest
from django.core.management import CommandError, call_command

from gateway.models import Connection
from governance.models import ApiToken, Organization, User, token_digest


def run(name, *args, stdin: str | None = None, monkeypatch=None) -> str:
    out = io.StringIO()
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    call_command(name, *args, stdout=out)
    return out.getvalue().strip()


def test_it_sets_up_an_org_a_user_a_token_and_a_connection(db, monkeypatch, tmp_path):
    org_id = run("org_create", "initech")
    org = Organization.objects.get(pk=org_id)
    assert set(org.groups.values_list("name", flat=True)) == {"admin", "auditor"}

    user_id = run(
        "user_create",
        "--org",
        "initech",
        "--email",
        "Peter@Initech.test",
        "--groups",
        "admin,dba",
        "--password-stdin",
        stdin="a long enough passphrase\n",
        monkeypatch=monkeypatch,
    )
    user = User.objects.get(pk=user_id)
    assert user.email == "peter@initech.test" and user.check_password("a long enough passphrase")
    assert set(user.user_groups.values_list("name", flat=True)) == {"admin", "dba"}

    token = run("token_issue", "--email", "peter@initech.test", "--name", "ci", "--expires-days", "7")
    assert token.startswith("pcu_") and "\n" not in token
    stored = ApiToken.objects.get(user=user)
    assert stored.digest == token_digest(token) and token not in stored.prefix + stored.digest

    path = tmp_path / "t.sqlite3"
    path.write_bytes(b"")
    connection_id = run(
        "connection_create",
        "--org",
        "initech",
        "--name",
        "local",
        "--kind",
        "sqlite",
        "--config-stdin",
        stdin=json.dumps({"path": str(path), "max_rows": 10}),
        monkeypatch=monkeypatch,
    )
    connection = Connection.objects.get(pk=connection_id)
    assert connection.config == {"path": str(path)} and connection.max_rows == 10


def test_connection_create_keeps_the_password_encrypted(db, monkeypatch):
    run("org_create", "initech")
    connection_id = run(
        "connection_create",
        "--org",
        "initech",
        "--name",
        "pg",
        "--kind",
        "postgres",
        "--config-stdin",
        stdin=json.dumps({"host": "db", "database": "app", "user": "app", "password": "hunter2-secret"}),
        monkeypatch=monkeypatch,
    )
    connection = Connection.objects.get(pk=connection_id)
    assert "password" not in connection.config
    assert connection.secret_keys == ["password"]
    assert "hunter2-secret" not in connection.secrets_encrypted
    assert connection.get_secrets() == {"password": "hunter2-secret"}


@pytest.mark.parametrize(
    "command, args, stdin, message",
    [
        ("org_create", ["acme"], None, 'organization "acme" already exists'),
        ("user_create", ["--org", "nope", "--email", "a@b.test"], None, 'organization "nope" not found'),
        ("user_create", ["--org", "acme", "--email", "not-an-email"], None, "not a valid email"),
        (
            "user_create",
            ["--org", "acme", "--email", "x@acme.test", "--password-stdin"],
            "short\n",
            "too short",
        ),
        ("token_issue", ["--email", "ghost@acme.test"], None, "no active user"),
        (
            "connection_create",
            ["--org", "acme", "--name", "c", "--kind", "oracle", "--config-stdin"],
            "{}",
            "unknown connection kind",
        ),
        (
            "connection_create",
            ["--org", "acme", "--name", "c", "--kind", "postgres", "--config-stdin"],
            "{nope",
            "not valid JSON",
        ),
        (
            "connection_create",
            ["--org", "acme", "--name", "c", "--kind", "postgres", "--config-stdin"],
            "[]",
            "JSON object",
        ),
        (
            "connection_create",
            ["--org", "acme", "--name", "c", "--kind", "postgres", "--config-stdin"],
            '{"host": "h", "database": "d"}',
            "'user' is required",
        ),
        (
            "connection_create",
            ["--org", "acme", "--name", "bad name!", "--kind", "sqlite", "--config-stdin"],
            '{"path": "/tmp/x.db"}',
            "name:",
        ),
        (
            "connection_create",
            ["--org", "acme", "--name", "c", "--kind", "command", "--config-stdin"],
            '{"argv": ["ls"]}',
            "command connections are disabled",
        ),
    ],
)
def test_bad_input_fails_with_a_clear_message(db, monkeypatch, command, args, stdin, message):
    run("org_create", "acme")
    with pytest.raises(CommandError, match=message):
        run(command, *args, stdin=stdin, monkeypatch=monkeypatch)


def test_secrets_rotate_moves_every_connection_to_the_newest_key(db, monkeypatch, settings):
    from cryptography.fernet import Fernet

    from gateway import crypto

    old_key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old_key]
    crypto._fernet.cache_clear()
    run("org_create", "initech")
    run(
        "connection_create", "--org", "initech", "--name", "pg", "--kind", "postgres", "--config-stdin",
        stdin=json.dumps({"host": "db", "database": "app", "user": "app", "password": "rotate-me"}),
        monkeypatch=monkeypatch,
    )  # fmt: skip
    new_key = Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    crypto._fernet.cache_clear()
    assert run("secrets_rotate") == "1"
    settings.ENCRYPTION_KEYS = [new_key]  # the old key can go now
    crypto._fernet.cache_clear()
    try:
        assert Connection.objects.get(name="pg").get_secrets() == {"password": "rotate-me"}
        settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
        crypto._fernet.cache_clear()
        with pytest.raises(CommandError, match="cannot be decrypted"):
            run("secrets_rotate")
    finally:
        crypto._fernet.cache_clear()


def test_setup_is_audited_and_the_log_cannot_be_rewritten(db, monkeypatch):
    from sessions.models import AuditEvent

    run("org_create", "initech")
    run("user_create", "--org", "initech", "--email", "p@initech.test")
    run("token_issue", "--email", "p@initech.test")
    events = AuditEvent.objects.order_by("id")
    assert [e.action for e in events] == ["org.create", "user.create", "token.issue"]
    assert all(e.surface == "cli" and e.actor is None for e in events)
    with pytest.raises(RuntimeError, match="append-only"):
        AuditEvent.objects.filter(action="org.create").update(outcome="failed")
    with pytest.raises(RuntimeError, match="append-only"):
        AuditEvent.objects.all().delete()
    with pytest.raises(RuntimeError, match="append-only"):
        events.first().delete()
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        Organization.objects.get(name="initech").delete()
