"""docker-compose.yml as compose renders it (`docker-compose config` parses without an engine):
every setting of docs/configuration.md put in `.env` reaches web and worker, required secrets are
enforced, Redis persists, the healthcheck asks /readyz, beat and migrate bypass PgBouncer."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(
    COMPOSE is None and not os.environ.get("CI"),
    reason="docker-compose is not installed (.ci/run installs it)",
)

REQUIRED = {
    "POSTGRES_PASSWORD": "pw0123456789",
    "PORTCULLIS_SECRET_KEY": "secret-key-for-the-test",
    "PORTCULLIS_ENCRYPTION_KEYS": "a-fernet-key-would-go-here",
    "PORTCULLIS_PUBLIC_URL": "https://gw.example.test",
    "PORTCULLIS_ALLOWED_HOSTS": "gw.example.test",
}
MAIL_AND_SLACK = {
    "PORTCULLIS_EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    "PORTCULLIS_EMAIL_HOST": "smtp.example.test",
    "PORTCULLIS_EMAIL_PORT": "2525",
    "PORTCULLIS_EMAIL_USER": "mailer",
    "PORTCULLIS_EMAIL_PASSWORD": "mail-password",
    "PORTCULLIS_EMAIL_TLS": "true",
    "PORTCULLIS_EMAIL_FROM": "gw@example.test",
    "PORTCULLIS_SLACK_WEBHOOK_URL": "https://hooks.slack.test/services/T0/B0/x",
}
# Set by compose per service on purpose (docs/operations.md: the connection budget).
PER_SERVICE = {"PORTCULLIS_DB_POOL_MIN", "PORTCULLIS_DB_POOL_MAX", "PORTCULLIS_WORKER_METRICS_PORT"}


def documented_settings() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    names = set(re.findall(r"`(PORTCULLIS_[A-Z0-9_]+)`", text))
    # "`PORTCULLIS_EMAIL_HOST`, `_PORT`, `_USER`": the short forms belong to the name before them.
    for prefix, rest in re.findall(r"`(PORTCULLIS_[A-Z]+)_[A-Z]+`((?:, `_[A-Z]+`)+)", text):
        names |= {prefix + short for short in re.findall(r"`(_[A-Z]+)`", rest)}
    names |= {"DATABASE_URL", "REDIS_URL"}
    return names


def render(tmp_path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    if COMPOSE is None:
        pytest.fail("docker-compose is not installed; .ci/run installs Debian's package")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # the shell's variables stay out
    return subprocess.run(
        [COMPOSE, *args, "config"], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=120
    )


def environment_of(config: dict, service: str) -> dict[str, str]:
    env = config["services"][service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_every_documented_setting_in_dotenv_reaches_web_and_worker(tmp_path):
    settings = documented_settings()
    assert {"PORTCULLIS_EMAIL_HOST", "PORTCULLIS_SLACK_WEBHOOK_URL", "PORTCULLIS_MASKING_KEY"} <= settings
    values = {name: f"value-of-{name.lower()}" for name in settings - {"DATABASE_URL", "REDIS_URL"}}
    values.update(REQUIRED)
    values.update(MAIL_AND_SLACK)
    result = render(tmp_path, values)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    for service in ("web", "worker", "beat"):
        env = environment_of(config, service)
        for name, value in values.items():
            if name in PER_SERVICE or name == "PORTCULLIS_DB_HOST":
                continue
            assert env.get(name) == value, f"{name} does not reach {service}"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["DATABASE_URL"].startswith("postgresql://portcullis:pw0123456789@")
    web, worker, beat = (environment_of(config, s) for s in ("web", "worker", "beat"))
    # SMTP and Slack explicitly, as the issue was about them.
    for name, value in MAIL_AND_SLACK.items():
        assert web[name] == value and worker[name] == value
    # Pool sizes per process kind, not whatever .env said for all of them.
    assert (
        web["PORTCULLIS_DB_POOL_MAX"],
        worker["PORTCULLIS_DB_POOL_MAX"],
        beat["PORTCULLIS_DB_POOL_MAX"],
    ) == (
        "30",
        "4",
        "2",
    )


def test_defaults_persistence_healthchecks_and_pgbouncer_routing(tmp_path):
    result = render(
        tmp_path, {**REQUIRED, "PORTCULLIS_DB_HOST": "pgbouncer", "PORTCULLIS_DB_PGBOUNCER": "true"}
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command and "--appendfsync everysec" in redis_command
    assert any("redis-data:/data" in str(v) for v in services["redis"]["volumes"])  # a named volume
    assert "/readyz" in " ".join(services["web"]["healthcheck"]["test"])
    assert environment_of(config, "web")["PORTCULLIS_LOG_FORMAT"] == "json"
    # Web and worker go through PgBouncer; beat (advisory lock) and migrate (DDL) do not.
    assert "@pgbouncer:5432/" in environment_of(config, "web")["DATABASE_URL"]
    assert "@pgbouncer:5432/" in environment_of(config, "worker")["DATABASE_URL"]
    assert "@postgres:5432/" in environment_of(config, "beat")["DATABASE_URL"]
    assert "@postgres:5432/" in environment_of(config, "migrate")["DATABASE_URL"]
    # The pgbouncer service exists only under its profile.
    with_profile = render(tmp_path, REQUIRED, "--profile", "pgbouncer")
    assert with_profile.returncode == 0, with_profile.stderr
    assert (
        yaml.safe_load(with_profile.stdout)["services"]["pgbouncer"]["environment"]["POOL_MODE"]
        == "transaction"
    )


def test_compose_refuses_to_start_without_a_required_secret(tmp_path):
    values = dict(REQUIRED)
    del values["PORTCULLIS_ENCRYPTION_KEYS"]
    result = render(tmp_path, values)
    assert result.returncode != 0
    assert "set PORTCULLIS_ENCRYPTION_KEYS in .env" in result.stderr
