"""The listing an upstream tool call is checked on (gateway/connectors/mcp.py, "the tool listing
between calls"): kept while the pooled session hears the upstream's tools/list_changed
announcements, listed before every call otherwise. And the per-connection endpoint answers the SDK's
`Mcp-Param-*` schema lookup from the listings it served, without listing the upstream per call.

The upstream test server writes one line per tools/list it answers to UPSTREAM_LIST_LOG, and with
UPSTREAM_SILENT set declares no list_changed announcements."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway import pipeline
from gateway.models import ContractStatus, UpstreamTool
from sessions.models import AuditEvent
from tests.test_upstream_mcp import call, make_mcp_connection, proxy, upstream_server


@pytest.fixture
def list_log(tmp_path, monkeypatch) -> Path:
    log = tmp_path / "listings.jsonl"
    monkeypatch.setenv("UPSTREAM_LIST_LOG", str(log))  # read by the upstream server we start
    return log


def listings(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def tools_visible(person) -> list[dict]:
    actor = person.actor()
    return asyncio.run(pipeline.upstream_tools_list(actor=actor, connection_name="tools"))


def echo(person, text: str) -> dict:
    return call(person, "tools", "echo", {"text": text})


def listings_for_three_calls(person, log: Path) -> int:
    """How many listings the upstream answered for three calls of echo."""
    before = listings(log)
    for text in ("a", "b", "c"):
        assert echo(person, text)["status"] == "completed"
    return listings(log) - before


def wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_listing_is_kept_while_the_upstream_announces_its_changes(cast, transactional_db, list_log):
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert listings_for_three_calls(cast.bob, list_log) == 1  # the first listed; the others: kept

        # A rug pull the upstream announces: heard, the kept listing is dropped, the contracts are
        # checked again at once, and the next call is refused.
        assert call(cast.bob, "tools", "mutate")["status"] == "completed"
        wait_for(
            lambda: AuditEvent.objects.filter(action="upstream.contract_changed").exists(),
            "the announced change to be checked",
        )
        blocked = echo(cast.bob, "after")
        assert blocked["status"] == "blocked" and "changed its contract" in blocked["message"]


def test_an_upstream_that_does_not_announce_is_listed_before_every_call(
    cast, transactional_db, list_log, monkeypatch
):
    monkeypatch.setenv("UPSTREAM_SILENT", "1")
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert listings_for_three_calls(cast.bob, list_log) == 3
        # Nothing announced, nothing waited for: the very next call sees the change.
        assert call(cast.bob, "tools", "mutate")["status"] == "completed"
        blocked = echo(cast.bob, "after")
        assert blocked["status"] == "blocked" and "changed its contract" in blocked["message"]


def test_a_kept_listing_never_undoes_what_a_fresh_listing_observed(
    cast, transactional_db, list_log, monkeypatch
):
    """An upstream that declares announcements and then changes a tool without announcing it: calls
    checked on the kept listing go through (the documented window), but once any fresh listing has
    observed the change, the tool is blocked, and the kept listing does not flip it back."""
    monkeypatch.setenv("UPSTREAM_QUIET_MUTATE", "1")
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert echo(cast.bob, "before")["status"] == "completed"  # listed, kept
        assert call(cast.bob, "tools", "mutate")["status"] == "completed"  # no announcement
        before = listings(list_log)
        assert echo(cast.bob, "in the window")["status"] == "completed"  # on the kept listing
        assert listings(list_log) == before
        # A fresh listing (the endpoint's tools/list) observes the change.
        assert "echo" not in {t["name"] for t in tools_visible(cast.bob)}
        row = UpstreamTool.objects.get(name="echo")
        assert row.status == ContractStatus.CHANGED
        blocked = echo(cast.bob, "after")
        assert blocked["status"] == "blocked" and "changed its contract" in blocked["message"]
        row.refresh_from_db()
        assert row.status == ContractStatus.CHANGED  # not accepted again by the older listing
        assert AuditEvent.objects.filter(action="upstream.contract_changed").count() == 1


def test_a_max_age_of_zero_lists_before_every_call(cast, transactional_db, list_log, settings):
    settings.UPSTREAM_LISTING_MAX_AGE_SECONDS = 0
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert listings_for_three_calls(cast.bob, list_log) == 3


@pytest.mark.live
def test_a_call_on_the_connection_endpoint_does_not_list_the_upstream_again(
    cast, mcp, gateway_server, list_log
):
    """A 2026-07-28 client's tools/call with arguments makes the SDK look up the tool's input
    schema (for `Mcp-Param-*` headers); without an answer of our own it would run the endpoint's
    whole tools/list (an upstream listing and a contract check) before every call."""
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        before = listings(list_log)

        async def calls(client):
            await client.list_tools()  # the endpoint's listing: one upstream listing
            return [await client.call_tool("echo", {"text": t}) for t in ("a", "b", "c", "d")]

        results = proxy(gateway_server, cast.bob, "tools", calls)
        assert [r.content[0].text for r in results] == ["a", "b", "c", "d"]
        # The endpoint's listing and the first call's (the one kept for the others): not two per
        # call (1 + 2 x 4 before).
        assert listings(list_log) - before == 2
