"""`make run PORT=...` advertises the port it serves: the recipe's steps see PORT, and the URL it
records makes later manage.py commands (mcp_auth status) say the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _recipe_lines(port: int, server: str = "daphne") -> list[str]:
    out = subprocess.run(
        ["make", "-n", "run", f"PORT={port}", f"SERVER={server}", f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.replace("\\\n", " ").splitlines() if line.strip()]


def _env(data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "PORTCULLIS_PUBLIC_URL", "DATABASE_URL")}
    env.update(PORTCULLIS_DATA_DIR=str(data_dir), DJANGO_SETTINGS_MODULE="gateway.settings", **extra)
    return env


@pytest.mark.parametrize("server", ["daphne", "uvicorn"])
def test_every_step_of_make_run_sees_the_port(server):
    lines = _recipe_lines(9123, server)
    python_steps = [line for line in lines if "manage.py" in line or "python -c" in line or server in line]
    assert python_steps and all(line.lstrip().startswith("PORT=9123 ") for line in python_steps), lines
    assert any(f"/{server} " in line for line in python_steps), lines  # the server asked for serves


def test_an_unknown_server_stops_make_run_before_anything_runs():
    result = subprocess.run(
        ["make", "-n", "run", "SERVER=hypercorn"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "SERVER must be daphne or uvicorn, not hypercorn" in result.stderr
    assert "manage.py" not in result.stdout


def test_the_recorded_url_is_what_later_commands_advertise(tmp_path):
    record = next(line for line in _recipe_lines(9123) if "RUN_PUBLIC_URL_FILE" in line)
    subprocess.run(record, shell=True, cwd=ROOT, env=_env(tmp_path), check=True)
    assert (tmp_path / "run_public_url").read_text().strip() == "http://127.0.0.1:9123"

    def advertised(**extra) -> str:
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "import django; django.setup(); from django.conf import settings as s; "
                "print(s.PUBLIC_BASE_URL)",
            ],
            cwd=ROOT,
            env=_env(tmp_path, **extra),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert advertised() == "http://127.0.0.1:9123"  # no PORT: the record of the running checkout
    assert advertised(PORT="9200") == "http://127.0.0.1:9200"  # an explicit PORT wins
    assert advertised(PORTCULLIS_PUBLIC_URL="https://gw.example.test") == "https://gw.example.test"

    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=_env(tmp_path),
        check=True,
    )
    status = subprocess.run(
        [sys.executable, "manage.py", "mcp_auth", "status"],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "127.0.0.1:9123/api/mcp" in status and not re.search(r":8000\b", status)
