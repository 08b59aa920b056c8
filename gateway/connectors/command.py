"""Command-line targets: an argv run on the gateway host, the input on stdin.

Off unless `PORTCULLIS_COMMAND_CONNECTIONS=true`. No shell: the argv is run as given, with an
environment made only of the connection's secrets (plus a minimal PATH), in its own process group
so a cancel or timeout kills everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

from django.conf import settings

from gateway.connectors.base import Connector, ExecResult, cap_text
from governance.errors import ConnectorError, InvalidInput

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
RUNAWAY_SLACK_BYTES = 1024 * 1024


class CommandConnector(Connector):
    kind = "command"
    required_keys = ("argv",)
    optional_keys = ("cwd",)
    secret_keys = ("env",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._proc: subprocess.Popen | None = None

    @classmethod
    def validate_values(cls, values):
        argv = values.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) and a for a in argv):
            raise InvalidInput("setting 'argv' must be a non-empty list of non-empty strings")
        env = values.get("env")
        if env is not None and (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise InvalidInput("setting 'env' must be an object of string values")
        cwd = values.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise InvalidInput("setting 'cwd' must be a string")

    def _check_enabled(self):
        if not settings.COMMAND_CONNECTIONS_ENABLED:
            raise ConnectorError(
                "command connections are disabled on this gateway (PORTCULLIS_COMMAND_CONNECTIONS)"
            )

    def test(self) -> str:
        self._check_enabled()
        program = self.config["argv"][0]
        return f"command {program}"

    def cancel(self) -> None:
        super().cancel()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def execute(self, text: str) -> ExecResult:
        self._check_enabled()
        env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}
        env.update(self.secrets.get("env") or {})
        cap = self.limits.max_output_bytes
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as stdin:
            stdin.write(text.encode())
            stdin.seek(0)
            try:
                proc = subprocess.Popen(
                    self.config["argv"],
                    stdin=stdin,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.config.get("cwd") or None,
                    start_new_session=True,
                )
            except OSError as exc:
                raise ConnectorError(f"could not start the command: {exc.strerror or exc}") from None
            self._proc = proc
            deadline = time.monotonic() + self.limits.timeout_seconds
            reason = ""
            while proc.poll() is None:
                if self.cancelled.is_set():
                    reason = "cancelled"
                elif time.monotonic() > deadline:
                    reason = f"timed out after {self.limits.timeout_seconds}s"
                elif out.tell() > cap * 4 + RUNAWAY_SLACK_BYTES:
                    # Far past what will be kept: stop it instead of filling the disk. The slack keeps a
                    # command that writes a little more than the cap and exits from being killed for
                    # it when the machine is slow to notice the exit.
                    reason = "output limit exceeded"
                if reason:
                    self.cancel()
                    proc.wait()
                    break
                time.sleep(0.02)
            if not reason and self.cancelled.is_set():
                # cancel() kills the process group itself, so the loop may only see it gone.
                reason = "cancelled"
            out.seek(0)
            raw = out.read(cap + 1)
        output, truncated = cap_text(raw.decode(errors="replace"), cap)
        truncated = truncated or len(raw) > cap or reason == "output limit exceeded"
        exit_code = proc.returncode
        if reason and reason != "output limit exceeded":
            output = (
                f"{output}\n[portcullis: command {reason}]" if output else f"[portcullis: command {reason}]"
            )
        return ExecResult(
            output=output, exit_code=exit_code if exit_code is not None else -1, truncated=truncated
        )
