"""The whole protocol of an upstream MCP server through /api/mcp/c/<connection>, with the same policy
as its tools: resources, resource templates, prompts and completions, with per-name allow/deny per
group, masking, a recorded session per read and prompt get, pinned contracts, and the upstream's
`list_changed` announcements triggering the contract check. Driven with the official SDK client
and the MCP Inspector's CLI, unmodified, over real HTTP against the live gateway; the upstream is our test server over
Streamable HTTP and over stdio, which counts every read and prompt get it receives."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    PromptListChangedNotification,
    PromptReference,
    ResourceTemplateReference,
    ResourceUpdatedNotification,
    ToolListChangedNotification,
)

from gateway import upstream, upstream_protocol
from gateway.connectors import Limits
from gateway.connectors.mcp import MCPConnector
from gateway.models import UpstreamTool
from gateway.services import connection_create_headless
from governance import rules
from governance.errors import InvalidInput
from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import structured
from tests.test_upstream_hold_live import inspector  # noqa: F401 - a fixture: the Inspector's CLI
from tests.test_upstream_mcp import ROOT, make_mcp_connection, upstream_server

RESOURCES = [{"match": "secret://*", "effect": "deny"}, {"match": "docs://*"}]
PROMPTS = [{"match": "greet"}]


@pytest.fixture
def call_log(tmp_path) -> Path:
    log = tmp_path / "calls.log"
    log.touch()
    return log


def received(log: Path, key: str) -> list:
    return [entry[key] for entry in map(json.loads, log.read_text().splitlines()) if key in entry]


@pytest.fixture(params=["http", "stdio"])
def catalog(request, cast, call_log, monkeypatch, settings):
    """`catalog(**settings)`: the `catalog` connection to our counting test server, over Streamable
    HTTP or over stdio."""
    settings.COMMAND_CONNECTIONS_ENABLED = True  # the live gateway's environment enables them too
    if request.param == "http":
        monkeypatch.setenv("UPSTREAM_CALL_LOG", str(call_log))
        with upstream_server() as url:
            yield lambda **extra: make_mcp_connection(cast.acme, url, name="catalog", **extra)
        return
    stdio = {
        "command": [sys.executable, "-m", "tests.upstream_server", "stdio"],
        "cwd": str(ROOT),
        "env": {"UPSTREAM_CALL_LOG": str(call_log)},
    }
    yield lambda **extra: connection_create_headless(
        org=cast.acme, name="catalog", kind="mcp", settings={**stdio, **extra}, options={}
    )


def through(server, person, fn, connection: str = "catalog"):
    """Run `fn(client)` with the official SDK client connected to /api/mcp/c/<connection>."""

    async def run():
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {person.token}"}, timeout=httpx2.Timeout(30, read=60)
        )
        url = f"{server.url}/api/mcp/c/{connection}"
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            return await fn(client)

    try:
        return asyncio.run(run())
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


def refused(server, person, fn) -> str:
    with pytest.raises(MCPError) as caught:
        through(server, person, fn)
    return str(caught.value)


def until(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


@pytest.mark.live
def test_resources_templates_prompts_and_completions_are_proxied_with_the_policy(
    cast, mcp, gateway_server, catalog, call_log
):
    catalog(resources=RESOURCES, prompts=PROMPTS)

    async def browse(client):
        return (
            sorted(str(r.uri) for r in (await client.list_resources()).resources),
            [t.uri_template for t in (await client.list_resource_templates()).resource_templates],
            [p.name for p in (await client.list_prompts()).prompts],
            (await client.read_resource("docs://readme")).contents[0].text,
            (await client.read_resource("docs://items/7")).contents[0].text,
            (await client.get_prompt("greet", {"name": "Bob"})).messages[0].content.text,
            (
                await client.complete(PromptReference(name="greet"), {"name": "name", "value": "ali"})
            ).completion,
            (
                await client.complete(
                    ResourceTemplateReference(uri="docs://items/{id}"), {"name": "id", "value": ""}
                )
            ).completion,
        )

    resources, templates, prompts, readme, item, greeting, names, ids = through(
        gateway_server, cast.bob, browse
    )
    assert resources == ["docs://customer", "docs://logo", "docs://readme"]  # secret://keys denied: unlisted
    assert templates == ["docs://items/{id}"]
    assert prompts == ["greet"]
    assert readme == "Read me: the gateway proxies resources."
    assert item == "item 7"
    assert greeting.startswith("Say hello to Bob")
    assert names.values == ["alice", "alicia"] and ids.values == ["1", "2", "3"]

    # Denied names: a clear error, one answer for denied and missing, and nothing reaches the upstream.
    message = refused(gateway_server, cast.bob, lambda c: c.read_resource("secret://keys"))
    assert 'resource "secret://keys" not found or not accessible on connection "catalog"' in message
    message = refused(gateway_server, cast.bob, lambda c: c.get_prompt("forbidden"))
    assert 'prompt "forbidden" not found or not accessible on connection "catalog"' in message
    message = refused(
        gateway_server,
        cast.bob,
        lambda c: c.complete(PromptReference(name="forbidden"), {"name": "x", "value": ""}),
    )
    assert 'prompt "forbidden" not found or not accessible' in message
    assert received(call_log, "read") == ["docs://readme", "docs://items/7"]
    assert [p for p in received(call_log, "prompt")] == ["greet"]
    assert AuditEvent.objects.filter(action="resource.request", outcome="denied").count() == 1
    assert AuditEvent.objects.filter(action="prompt.request", outcome="denied").count() == 1

    # A session per read and per prompt get, with the same lifecycle as tool calls.
    reads = Session.objects.filter(verb="resource").order_by("created_at")
    assert [(s.metadata["resource"], s.status) for s in reads] == [
        ("docs://readme", SessionStatus.DONE),
        ("docs://items/7", SessionStatus.DONE),
    ]
    assert reads[0].output == "Read me: the gateway proxies resources." and reads[0].user == cast.bob.user
    prompt = Session.objects.get(verb="prompt")
    assert prompt.status == SessionStatus.DONE and json.loads(prompt.input)["arguments"] == {"name": "Bob"}
    assert AuditEvent.objects.filter(action="resource.finish").count() == 2
    listed = structured(mcp(cast.bob).call("sessions_list", {"verb": "resource"}))
    assert sorted(item["id"] for item in listed["items"]) == sorted(str(s.pk) for s in reads)


@pytest.mark.live
def test_everything_returned_is_masked(cast, mcp, gateway_server, catalog):
    catalog()  # no policy at all: everything is open
    rules.masking_rule_create(
        actor=cast.alice.actor(), name="pii", spec={"entities": ["EMAIL_ADDRESS"]}, connections=["catalog"]
    )

    async def fetch(client):
        return (
            (await client.read_resource("docs://customer")).contents[0].text,
            (await client.read_resource("docs://logo")).contents[0],
            await client.get_prompt("greet", {"name": "Ann"}),
            (await client.complete(PromptReference(name="greet"), {"name": "name", "value": ""})).completion,
        )

    customer, logo, greeting, names = through(gateway_server, cast.bob, fetch)
    assert customer.startswith("Customer Jane Roe") and "jane.roe@example.com" not in customer
    assert "withheld" in logo.text and not hasattr(logo, "blob")  # binary cannot be checked
    assert "jane.roe@example.com" not in greeting.messages[0].content.text
    assert greeting.messages[0].content.text.startswith("Say hello to Ann")
    assert len(names.values) == 3 and "jane.roe@example.com" not in names.values
    stored = Session.objects.get(verb="resource", metadata__resource="docs://customer")
    assert "jane.roe@example.com" not in stored.output and "jane.roe@example.com" not in json.dumps(
        stored.result
    )
    assert stored.masking["counts"]["EMAIL_ADDRESS"] == 1


@pytest.mark.live
def test_a_changed_resource_or_prompt_is_refused_until_an_admin_accepts_it(
    cast, mcp, gateway_server, catalog
):
    catalog()

    async def pin(client):
        await client.list_resources()
        await client.list_prompts()
        await client.list_tools()
        return (await client.call_tool("mutate", {})).is_error

    assert through(gateway_server, cast.bob, pin) is False
    message = refused(gateway_server, cast.bob, lambda c: c.read_resource("docs://readme"))
    assert 'resource "docs://readme" changed its contract' in message
    assert "upstream_contracts_accept" in message
    message = refused(gateway_server, cast.bob, lambda c: c.get_prompt("greet", {"name": "x"}))
    assert 'prompt "greet" changed its contract' in message
    message = refused(
        gateway_server,
        cast.bob,
        lambda c: c.complete(PromptReference(name="greet"), {"name": "name", "value": ""}),
    )
    assert 'prompt "greet" changed its contract' in message  # no completions for it either
    # The unchanged ones still work; the changed ones are not listed.
    assert through(gateway_server, cast.bob, lambda c: c.read_resource("docs://customer")).contents
    listed = through(gateway_server, cast.bob, lambda c: c.list_resources())
    assert "docs://readme" not in {str(r.uri) for r in listed.resources}
    assert Session.objects.filter(verb="resource", status=SessionStatus.BLOCKED).count() == 1

    row = UpstreamTool.objects.get(kind="resource", name="docs://readme")
    assert "attacker.example" in row.observed["description"]
    upstream.contracts_accept(
        actor=cast.alice.actor(),
        connection_name="catalog",
        tools=["docs://readme"],
        kind="resource",
        observed_sha256={"docs://readme": row.observed_sha256},
    )
    text = through(gateway_server, cast.bob, lambda c: c.read_resource("docs://readme")).contents[0].text
    assert text == "Read me: the gateway proxies resources."


@pytest.mark.live
def test_list_changed_from_the_upstream_triggers_the_contract_check(cast, mcp, gateway_server, catalog):
    catalog()

    async def listen_then_mutate(client):
        await client.list_tools()
        await client.list_resources()
        await client.list_prompts()
        return (await client.call_tool("mutate", {})).is_error

    assert through(gateway_server, cast.bob, listen_then_mutate) is False

    def statuses():
        rows = UpstreamTool.objects.filter(
            kind__in=["tool", "resource", "prompt"], name__in=["echo", "docs://readme", "greet"]
        )
        return {row.name: row.status for row in rows}

    # Nothing lists again: only the upstream's announcement can make the gateway look.
    until(
        lambda: statuses() == {"echo": "changed", "docs://readme": "changed", "greet": "changed"},
        f"the announced change was not checked: {statuses()}",
    )
    assert AuditEvent.objects.filter(action="upstream.contract_changed", detail__kind="resource").exists()


@pytest.mark.live
def test_attacks_on_reads_reach_nothing(cast, mcp, gateway_server, call_log, monkeypatch):
    """A URI the policy allows but the upstream never listed (and no template yields), a path that
    climbs out of a template's segment, another org's caller, a member of the wrong group: each is
    refused with the one answer, and the upstream receives nothing."""
    monkeypatch.setenv("UPSTREAM_CALL_LOG", str(call_log))
    with upstream_server() as url:
        make_mcp_connection(
            cast.acme,
            url,
            name="catalog",
            resources=[
                {"match": "secret://*", "effect": "deny"},
                {"match": "docs://*", "groups": ["engineering"]},
            ],
        )
        for uri in ("docs://unlisted", "docs://items/7/../../../secret", "docs://items/"):
            message = refused(gateway_server, cast.bob, lambda c, uri=uri: c.read_resource(uri))
            assert "not found or not accessible on connection" in message, uri
        assert "not found or not accessible" in refused(
            gateway_server, cast.dave, lambda c: c.read_resource("docs://readme")
        )
        assert through(gateway_server, cast.dave, lambda c: c.list_resources()).resources == []
        assert 'connection "catalog" not found or not accessible' in refused(
            gateway_server, cast.eve, lambda c: c.read_resource("docs://readme")
        )
        assert received(call_log, "read") == []
        blocked = Session.objects.filter(verb="resource", status=SessionStatus.BLOCKED)
        assert blocked.count() == 3 and all(s.user == cast.bob.user for s in blocked)
        # The one that is allowed still works, so the refusals above were the policy's and the contracts'.
        assert (
            through(gateway_server, cast.bob, lambda c: c.read_resource("docs://items/7")).contents[0].text
            == "item 7"
        )
        assert received(call_log, "read") == ["docs://items/7"]


def test_guardrails_check_prompt_arguments_before_and_results_after(
    cast, call_log, monkeypatch, transactional_db
):
    """The org's guardrails bound to the connection: input conditions over a prompt's arguments
    (nothing reaches the upstream), output conditions over what a read returns (withheld)."""
    monkeypatch.setenv("UPSTREAM_CALL_LOG", str(call_log))
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url, name="catalog")
        rules.guardrail_create(
            actor=cast.alice.actor(),
            name="careful",
            message="not that",
            connections=["catalog"],
            input={"deny_words": ["mallory"]},
            output={"deny_words": ["proxies"]},
        )
        bob = cast.bob.actor()
        refused_get = asyncio.run(
            upstream_protocol.prompt_get(
                actor=bob, connection_name="catalog", name="greet", arguments={"name": "mallory"}
            )
        )
        assert (
            refused_get.status == SessionStatus.BLOCKED
            and refused_get.error == "not that (guardrail: careful)"
        )
        assert received(call_log, "prompt") == []
        withheld = asyncio.run(
            upstream_protocol.resource_read(actor=bob, connection_name="catalog", uri="docs://readme")
        )
        assert withheld.status == SessionStatus.BLOCKED and withheld.result is None
        assert "proxies" not in withheld.output and withheld.guardrail_findings[0]["rule"] == "careful"
        assert received(call_log, "read") == ["docs://readme"]  # read, then withheld
        fine = asyncio.run(
            upstream_protocol.prompt_get(
                actor=bob, connection_name="catalog", name="greet", arguments={"name": "Ann"}
            )
        )
        assert fine.status == SessionStatus.DONE and upstream_protocol.refusal(fine) is None


@pytest.mark.live
def test_the_inspector_lists_reads_and_gets_through_the_gateway(
    cast, mcp, gateway_server, call_log, monkeypatch, tmp_path, request
):
    """The MCP Inspector's CLI, unmodified, against /api/mcp/c/<connection>."""
    launcher = request.getfixturevalue("inspector")
    monkeypatch.setenv("UPSTREAM_CALL_LOG", str(call_log))
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url, name="catalog", resources=RESOURCES, prompts=PROMPTS)

        def run(*args) -> subprocess.CompletedProcess:
            argv = [
                *launcher,
                f"{gateway_server.url}/api/mcp/c/catalog",
                "--transport",
                "http",
                "--header",
                f"Authorization: Bearer {cast.bob.token}",
                *args,
            ]
            env = {**os.environ, "MCP_CATALOG_PATH": str(tmp_path / "mcp.json")}
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)

        listed = json.loads(run("--method", "resources/list").stdout)
        assert sorted(r["uri"] for r in listed["resources"]) == [
            "docs://customer",
            "docs://logo",
            "docs://readme",
        ]
        read = json.loads(run("--method", "resources/read", "--uri", "docs://readme").stdout)
        assert read["contents"][0]["text"] == "Read me: the gateway proxies resources."
        prompt = json.loads(
            run("--method", "prompts/get", "--prompt-name", "greet", "--prompt-args", "name=Ann").stdout
        )
        assert prompt["messages"][0]["content"]["text"].startswith("Say hello to Ann")
        denied = run("--method", "resources/read", "--uri", "secret://keys")
        assert denied.returncode != 0
        assert json.loads(denied.stderr)["error"]["message"] == (
            'resource "secret://keys" not found or not accessible on connection "catalog"'
        )
        assert received(call_log, "read") == ["docs://readme"] and received(call_log, "prompt") == ["greet"]


def test_without_a_setting_resources_and_prompts_are_as_open_as_the_tools(cast, db):
    open_ = make_mcp_connection(cast.acme, "http://127.0.0.1:9/mcp", name="open")
    closed = make_mcp_connection(cast.acme, "http://127.0.0.1:9/mcp", name="closed", tools=[{"match": "*"}])
    bob = cast.bob.actor()
    assert upstream.name_rule_for(open_, bob, "resources", "docs://x") is not None
    assert upstream.name_rule_for(closed, bob, "resources", "docs://x") is None
    assert upstream.name_rule_for(closed, bob, "prompts", "greet") is None
    grouped = make_mcp_connection(
        cast.acme,
        "http://127.0.0.1:9/mcp",
        name="grouped",
        prompts=[{"match": "greet", "groups": ["engineering"]}, {"match": "*", "effect": "deny"}],
    )
    assert upstream.name_rule_for(grouped, bob, "prompts", "greet") is not None
    assert upstream.name_rule_for(grouped, cast.dave.actor(), "prompts", "greet") is None


@pytest.mark.parametrize(
    "settings_, message",
    [
        ({"resources": {"match": "*"}}, "setting 'resources' must be a list of rules"),
        ({"prompts": [{"match": ""}]}, "prompts[0].match must be a prompt name or glob"),
        ({"resources": [{"match": "x", "effect": "maybe"}]}, "resources[0].effect must be 'allow' or 'deny'"),
        (
            {"resources": [{"match": "x", "requires_approval": True}]},
            "resources[0]: unknown key 'requires_approval'",
        ),
        (
            {"prompts": [{"match": "x", "max_result_bytes": 0}]},
            "prompts[0].max_result_bytes must be an integer",
        ),
    ],
)
def test_bad_resource_and_prompt_policies_get_a_clear_error(cast, settings_, message):
    with pytest.raises(InvalidInput) as caught:
        make_mcp_connection(cast.acme, "http://127.0.0.1:9/mcp", **settings_)
    assert message in caught.value.message


@pytest.mark.parametrize(
    "template, uri, matches",
    [
        ("docs://items/{id}", "docs://items/7", True),
        ("docs://items/{id}", "docs://items/7/secret", False),
        ("docs://items/{id}", "docs://other/7", False),
        ("file:///{+path}", "file:///a/b/c.txt", True),
        ("search://q{?term,limit}", "search://q?term=x&limit=2", True),
        ("search://q{?term,limit}", "search://q", True),
        ("a.b://{x}", "aXb://1", False),  # literals are literal
    ],
)
def test_uri_templates_match_what_they_expand_to(template, uri, matches):
    assert bool(upstream_protocol.template_regex(template).fullmatch(uri)) is matches


def test_a_handshake_era_announcement_on_the_connection_is_heard():
    """Upstreams on the handshake-era protocol send list_changed on the connection itself: the
    client's message handler hands the kind to the hook (2026-07-28 ones: the listen stream, above)."""
    heard: list = []
    connector = MCPConnector(
        {"url": "http://127.0.0.1:9/mcp"}, {}, Limits(max_rows=1, max_output_bytes=1000, timeout_seconds=5)
    )
    connector.on_list_changed = heard.append
    for message in (
        ToolListChangedNotification(),
        PromptListChangedNotification(),
        ResourceUpdatedNotification(params={"uri": "docs://readme"}),
        ValueError("a transport fault"),
    ):
        asyncio.run(connector._on_message(message))
    assert heard == [frozenset({"tool"}), frozenset({"prompt"})]
