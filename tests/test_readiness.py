"""/readyz against PRIVATE servers: a PostgreSQL (initdb/pg_ctl) and a redis-server of this test
alone, on free loopback ports, stopped and started again while a live daphne serves /readyz.
The machine's shared servers are never touched. Also: two Celery beats on the private database,
one schedules and one stands by, and the standby takes over when the first dies."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import pytest

from tests.conftest import ROOT, _free_port

pytestmark = pytest.mark.live


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


PG_BIN = _pg_bin()


def wait_until(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class PrivatePostgres:
    """initdb into a temporary directory, run as the `postgres` user when we are root."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="portcullis-readyz-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool, *args):
        subprocess.run(
            [*self.as_user, str(PG_BIN / tool), *args], check=True, capture_output=True, timeout=120
        )

    def start(self):
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self):
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, db="portcullis") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def cleanup(self):
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class PrivateRedis:
    def __init__(self):
        self.port = _free_port()
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _redis_ping(self.port), "the private redis")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _redis_ping(port) -> bool:
    import redis

    try:
        return redis.Redis(port=port, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False


@pytest.fixture
def private_servers():
    if PG_BIN is None or shutil.which("redis-server") is None:
        pytest.skip("needs PostgreSQL's server binaries and redis-server")
    pg, rd = PrivatePostgres(), PrivateRedis()
    try:
        pg.start()
        subprocess.run(
            [
                *pg.as_user,
                str(PG_BIN / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(pg.port),
                "-U",
                "postgres",
                "portcullis",
            ],
            check=True,
            capture_output=True,
        )
        rd.start()
        yield pg, rd
    finally:
        if rd.process and rd.process.poll() is None:
            rd.stop()
        pg.cleanup()


def private_env(pg, rd, tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    env.update(
        DATABASE_URL=pg.url(),
        REDIS_URL=rd.url(),
        PORTCULLIS_DATA_DIR=str(tmp_path / "data"),
        PYTHONUNBUFFERED="1",
        PORTCULLIS_LOG_LEVEL="INFO",
    )
    return env


def readyz(url):
    response = httpx2.get(f"{url}/readyz", timeout=30)
    return response.status_code, response.json()


def test_readyz_fails_while_the_database_or_redis_is_down_and_recovers(private_servers, tmp_path):
    pg, rd = private_servers
    env = private_env(pg, rd, tmp_path)
    port = _free_port()
    log = tmp_path / "daphne.log"
    with open(log, "wb") as fh:
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "gateway.asgi:application"],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def up():
            try:
                return httpx2.get(f"{url}/healthz", timeout=2).status_code == 200
            except httpx2.HTTPError:
                assert daphne.poll() is None, log.read_text()[-3000:]
                return False

        wait_until(up, "daphne")
        # A fresh database: nothing migrated yet.
        code, body = readyz(url)
        assert code == 503 and body["checks"]["database"] == "ok" and body["checks"]["redis"] == "ok"
        assert "migration(s) not applied" in body["checks"]["migrations"]
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
        )
        assert readyz(url) == (
            200,
            {"status": "ready", "checks": {"database": "ok", "redis": "ok", "migrations": "ok"}},
        )

        rd.stop()
        code, body = readyz(url)
        assert code == 503 and body["status"] == "unavailable"
        assert body["checks"]["redis"].startswith("failed: ConnectionError")
        assert body["checks"]["database"] == "ok"
        assert httpx2.get(f"{url}/healthz").status_code == 200  # liveness does not depend on it
        rd.start()
        assert readyz(url)[0] == 200

        pg.stop()
        code, body = readyz(url)
        assert code == 503 and body["checks"]["database"].startswith("failed: OperationalError")
        assert body["checks"]["migrations"] == "not checked: database unavailable"
        assert "password" not in body["checks"]["database"].lower()
        pg.start()
        assert readyz(url)[0] == 200
    finally:
        daphne.terminate()
        try:
            daphne.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daphne.kill()


def test_a_second_beat_stands_by_and_takes_over_when_the_first_dies(private_servers, tmp_path):
    pg, rd = private_servers
    env = private_env(pg, rd, tmp_path)
    env["PORTCULLIS_BEAT_LOCK_RETRY_SECONDS"] = "1"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
    )

    def beat(name):
        log = tmp_path / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "gateway",
            "beat",
            "-l",
            "info",
            "--schedule",
            str(tmp_path / f"{name}-schedule"),
        ]
        with open(log, "wb") as fh:
            return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT), log

    first, first_log = beat("first")
    second = None
    try:
        wait_until(
            lambda: "holding the beat lock" in first_log.read_text(), "the first beat to take the lock"
        )
        second, second_log = beat("second")
        wait_until(lambda: "standing by" in second_log.read_text(), "the second beat to stand by")
        assert "holding the beat lock" not in second_log.read_text()
        first.kill()  # dies without a goodbye: PostgreSQL releases the lock with its connection
        first.wait(timeout=30)
        wait_until(lambda: "holding the beat lock" in second_log.read_text(), "the standby to take over")
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
