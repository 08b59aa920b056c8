"""Pooled upstream sessions (gateway/connectors/mcp_pool.py): a stdio server stays running between
calls and is restarted when it dies; an HTTP session is reused; the number of sessions per
connection is bounded; pooling off opens a session per call. Real upstreams on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from gateway import pipeline
from gateway.connectors.mcp_pool import POOL
from gateway.services import connection_create_headless
from tests.test_upstream_mcp import ROOT, call, make_mcp_connection, upstream_server


def stdio_connection(cast, settings, name="local"):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    return connection_create_headless(
        org=cast.acme,
        name=name,
        kind="mcp",
        settings={"command": [sys.executable, "-m", "tests.upstream_server", "stdio"], "cwd": str(ROOT)},
        options={},
    )


def pid_of(cast, connection: str) -> int:
    envelope = call(cast.bob, connection, "pid")
    assert envelope["status"] == "completed", envelope
    return int(envelope["content"][0]["text"])


def test_a_stdio_server_stays_running_and_is_restarted_when_it_dies(cast, settings, transactional_db):
    connection = stdio_connection(cast, settings)
    first = pid_of(cast, "local")
    assert pid_of(cast, "local") == first  # the same process served both calls
    assert POOL.open_sessions(str(connection.pk)) == 1
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # the pool sees the closed pipe at the next borrow and starts a new server
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "the killed server did not go away"
        time.sleep(0.05)
    second = pid_of(cast, "local")
    assert second != first
    assert pid_of(cast, "local") == second


def test_an_http_session_is_reused_and_the_sessions_are_bounded(cast, settings, transactional_db):
    settings.UPSTREAM_POOL_SIZE = 2
    with upstream_server() as url:
        connection = make_mcp_connection(cast.acme, url)
        for text in ("a", "b", "c"):
            assert call(cast.bob, "tools", "echo", {"text": text})["content"][0]["text"] == text
        assert POOL.open_sessions(str(connection.pk)) == 1
        actor = cast.bob.actor()

        async def burst():
            calls = [
                pipeline.tool_call(
                    actor=actor, connection_name="tools", tool="sleep", arguments={"seconds": 0.5}
                )
                for _ in range(6)
            ]
            return await asyncio.gather(*calls)

        sessions = asyncio.run(burst())
        assert [(s.status, s.error) for s in sessions] == [("done", "")] * 6
        assert 1 <= POOL.open_sessions(str(connection.pk)) <= 2


def test_pooling_off_opens_a_session_per_call(cast, settings, transactional_db):
    settings.UPSTREAM_POOL_SIZE = 0
    connection = stdio_connection(cast, settings, name="fresh")
    assert pid_of(cast, "fresh") != pid_of(cast, "fresh")
    assert POOL.open_sessions(str(connection.pk)) == 0


def test_a_failed_exchange_retires_its_session(cast, settings, transactional_db):
    """An upstream that went away: the call fails clearly, and the next one (upstream back on the
    same address) opens a new session instead of reusing the broken one."""
    with upstream_server() as url:
        connection = make_mcp_connection(cast.acme, url)
        assert call(cast.bob, "tools", "echo", {"text": "up"})["status"] == "completed"
    down = call(cast.bob, "tools", "echo", {"text": "down"})
    assert down["status"] == "failed" and down["message"]
    assert POOL.open_sessions(str(connection.pk)) == 0
    with pytest.raises(Exception, match="could not reach|exchange failed"):
        asyncio.run(pipeline.upstream_tools_list(actor=cast.bob.actor(), connection_name="tools"))
