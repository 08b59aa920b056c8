"""Virtual MCP servers, /api/mcp/v/<name>: several upstream connections behind one URL, driven by the
official SDK client over real HTTP against two real upstream servers (tests/upstream_server.py),
each counting the calls it received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx2
import pytest

from gateway import virtual_servers as vs
from gateway.models import VirtualServer
from governance.errors import Conflict, InvalidInput, NotFound, PolicyDenied
from governance.models import UserGroup
from sessions.models import AuditEvent, Session, SessionStatus
from tests.test_upstream_mcp import BEARER, ROOT, _free_port, make_mcp_connection


@contextmanager
def counting_upstream(log_path):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.upstream_server", str(port), BEARER],
        cwd=ROOT,
        env={**os.environ, "UPSTREAM_CALL_LOG": str(log_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except httpx2.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the upstream test server did not start") from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def two_upstreams(tmp_path_factory):
    logs = tmp_path_factory.mktemp("virtual")
    with counting_upstream(logs / "tickets.log") as tickets, counting_upstream(logs / "ops.log") as ops:
        yield {"tickets": (tickets, logs / "tickets.log"), "ops": (ops, logs / "ops.log")}


def received(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


POLICY = [{"match": "delete_*", "effect": "deny"}, {"match": ["echo", "deploy", "whoami"]}]


@pytest.fixture
def platform(cast, two_upstreams):
    """`tickets` (open to the org) and `ops` (only the sre group), both in the virtual server `platform`."""
    make_mcp_connection(cast.acme, two_upstreams["tickets"][0], name="tickets", tools=POLICY)
    ops = make_mcp_connection(cast.acme, two_upstreams["ops"][0], name="ops", tools=POLICY)
    sre = UserGroup.objects.create(org=cast.acme, name="sre")
    sre.members.add(cast.bob.user)
    ops.access_groups.add(sre)
    for _, log in two_upstreams.values():
        log.unlink(missing_ok=True)
    return vs.virtual_server_create(
        actor=cast.alice.actor(), name="platform", connections=["tickets", "ops"], description="one URL"
    )


def call_virtual(gateway_server, person, name, fn):
    """`proxy` against /api/mcp/v/<name> instead of /api/mcp/c/<name>."""
    import asyncio

    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {person.token}"}, timeout=httpx2.Timeout(30, read=60)
        )
        url = f"{gateway_server.url}/api/mcp/v/{name}"
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            return await fn(client)

    try:
        return asyncio.run(run())
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


async def _names(client):
    return sorted(t.name for t in (await client.list_tools()).tools)


@pytest.mark.live
def test_the_listing_is_the_namespaced_union_of_what_the_caller_may_use(cast, mcp, gateway_server, platform):
    assert call_virtual(gateway_server, cast.bob, "platform", _names) == [
        "ops__deploy",
        "ops__echo",
        "ops__whoami",
        "tickets__deploy",
        "tickets__echo",
        "tickets__whoami",
    ]
    # dave is not in sre: the ops connection's tools are not there at all
    assert call_virtual(gateway_server, cast.dave, "platform", _names) == [
        "tickets__deploy",
        "tickets__echo",
        "tickets__whoami",
    ]


@pytest.mark.live
def test_a_call_reaches_the_right_upstream_once_through_its_connections_policy(
    cast, mcp, gateway_server, platform, two_upstreams
):
    async def calls(client):
        await client.list_tools()
        return (
            await client.call_tool("ops__deploy", {"environment": "staging", "service": "api"}),
            await client.call_tool("tickets__echo", {"text": "routed"}),
            await client.call_tool("tickets__delete_everything", {}),
        )

    deploy, echo, denied = call_virtual(gateway_server, cast.bob, "platform", calls)
    assert not deploy.is_error and deploy.structured_content == {"deployed": "api", "environment": "staging"}
    assert not echo.is_error and echo.content[0].text == "routed"
    assert received(two_upstreams["ops"][1]) == [{"environment": "staging", "service": "api"}]
    assert received(two_upstreams["tickets"][1]) == []
    assert denied.is_error and "not found or not accessible" in denied.content[0].text
    sessions = Session.objects.filter(verb="tool", status=SessionStatus.DONE).order_by("started_at")
    assert [(s.connection_name, s.metadata["tool"]) for s in sessions] == [
        ("ops", "deploy"),
        ("tickets", "echo"),
    ]
    assert all(s.user == cast.bob.user and s.surface == "mcp" for s in sessions)


@pytest.mark.live
def test_a_caller_cannot_reach_a_member_connection_they_may_not_use(
    cast, mcp, gateway_server, platform, two_upstreams
):
    make_mcp_connection(cast.acme, two_upstreams["ops"][0], name="outside", tools=POLICY)  # not a member

    async def attempts(client):
        return [
            await client.call_tool(name, {"environment": "prod", "service": "db"})
            for name in ("ops__deploy", "outside__deploy", "ops", "ops__", "__deploy", "portcullis__whoami")
        ]

    results = call_virtual(gateway_server, cast.dave, "platform", attempts)
    for name, result in zip(
        ("ops__deploy", "outside__deploy", "ops", "ops__", "__deploy", "portcullis__whoami"),
        results,
        strict=True,
    ):
        assert result.is_error
        assert (
            result.content[0].text
            == f'tool "{name}" not found or not accessible on virtual server "platform"'
        )
    assert received(two_upstreams["ops"][1]) == []  # nothing reached the upstream
    assert not Session.objects.filter(verb="tool").exists()


@pytest.mark.live
def test_another_orgs_virtual_server_is_not_found(cast, mcp, gateway_server, platform):
    with pytest.raises(Exception, match='virtual server "platform" not found or not accessible'):
        call_virtual(gateway_server, cast.eve, "platform", _names)

    async def call(client):
        return await client.call_tool("tickets__echo", {"text": "x"})

    result = call_virtual(gateway_server, cast.eve, "platform", call)
    assert (
        result.is_error and result.content[0].text == 'virtual server "platform" not found or not accessible'
    )
    assert not Session.objects.filter(verb="tool").exists()


@pytest.mark.live
def test_portcullis_tools_can_be_published_beside_the_upstreams(cast, mcp, gateway_server, platform):
    vs.virtual_server_update(actor=cast.alice.actor(), ref=str(platform.pk), include_portcullis_tools=True)
    names = call_virtual(gateway_server, cast.bob, "platform", _names)
    assert "tickets__echo" in names and "portcullis__connections_list" in names

    async def own(client):
        return await client.call_tool("portcullis__connections_list", {})

    result = call_virtual(gateway_server, cast.bob, "platform", own)
    assert not result.is_error
    assert "tickets" in result.content[0].text


def test_only_admins_manage_virtual_servers_and_bad_input_is_refused(cast, two_upstreams, transactional_db):
    make_mcp_connection(cast.acme, two_upstreams["tickets"][0], name="tickets")
    with pytest.raises(PolicyDenied):
        vs.virtual_server_create(actor=cast.bob.actor(), name="x", connections=["tickets"])
    alice = cast.alice.actor()
    for kwargs, error, text in (
        ({"name": "bad name", "connections": []}, InvalidInput, "name:"),
        ({"name": "v", "connections": ["nope"]}, NotFound, 'connection "nope" not found'),
        ({"name": "v", "connections": "tickets"}, InvalidInput, "list of connection names"),
    ):
        with pytest.raises(error) as info:
            vs.virtual_server_create(actor=alice, **kwargs)
        assert text in info.value.message
    server = vs.virtual_server_create(actor=alice, name="v", connections=["tickets"])
    with pytest.raises(Conflict):
        vs.virtual_server_create(actor=alice, name="V", connections=[])
    with pytest.raises(NotFound):  # another org's admin
        vs.virtual_server_update(actor=cast.eve.actor(), ref=str(server.pk), description="mine")
    with pytest.raises(NotFound):
        vs.virtual_server_delete(actor=alice, ref="not-a-uuid")
    vs.virtual_server_delete(actor=alice, ref=str(server.pk))
    assert not VirtualServer.objects.exists()
    assert sorted(
        AuditEvent.objects.filter(action__startswith="virtual_server.").values_list("action", flat=True)
    ) == ["virtual_server.create", "virtual_server.delete"]


def test_names_resolve_to_the_longest_member_prefix():
    members = ["ops", "ops.eu", "a_b"]
    assert vs.resolve("ops__deploy", members, portcullis=False) == ("ops", "deploy")
    assert vs.resolve("ops.eu__deploy__now", members, portcullis=False) == ("ops.eu", "deploy__now")
    assert vs.resolve("a_b__x", members, portcullis=False) == ("a_b", "x")
    assert vs.resolve("ops__", members, portcullis=False) is None
    assert vs.resolve("portcullis__x", members, portcullis=False) is None
    assert vs.resolve("portcullis__x", members, portcullis=True) == (None, "x")


def test_the_admin_page_creates_a_virtual_server_through_the_service(cast, two_upstreams, transactional_db):
    from django.test import Client

    tickets = make_mcp_connection(cast.acme, two_upstreams["tickets"][0], name="tickets")
    alice, carol = Client(), Client()
    alice.force_login(cast.alice.user)
    carol.force_login(cast.carol.user)
    form = {"name": "platform", "description": "", "connections": [str(tickets.pk)]}
    assert carol.post("/admin/gateway/virtualserver/add/", form).status_code == 403  # auditors read only
    page = alice.get("/admin/gateway/virtualserver/add/").content.decode()
    assert "tickets" in page
    response = alice.post("/admin/gateway/virtualserver/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    server = VirtualServer.objects.get()
    assert [c.name for c in server.connections.all()] == ["tickets"]
    assert AuditEvent.objects.filter(action="virtual_server.create", surface="admin").count() == 1
    again = alice.post("/admin/gateway/virtualserver/add/", {**form, "name": "PLATFORM"})
    assert again.status_code == 200 and "already exists" in again.content.decode()
    assert carol.get(f"/admin/gateway/virtualserver/{server.pk}/change/").status_code == 200
    eve = Client()
    eve.force_login(cast.eve.user)
    assert eve.get(f"/admin/gateway/virtualserver/{server.pk}/change/").status_code == 404


@pytest.mark.live
def test_a_call_needing_approval_is_held_and_joined_through_the_virtual_server(
    cast, mcp, gateway_server, two_upstreams
):
    from governance.policy import Actor
    from governance.services import user_create
    from reviews import services as reviews
    from reviews.models import Review, ReviewStatus

    policy = [
        {
            "match": "deploy",
            "requires_approval": True,
            "reviewers": ["sre"],
            "approval_when": {"environment": "prod"},
        }
    ]
    make_mcp_connection(cast.acme, two_upstreams["ops"][0], name="ops", tools=policy, approval_hold_seconds=0)
    sam = user_create(org=cast.acme, email="sam@acme.test", name="Sam", groups=["sre"])
    vs.virtual_server_create(actor=cast.alice.actor(), name="platform", connections=["ops"])
    log = two_upstreams["ops"][1]
    log.unlink(missing_ok=True)
    prod = {"environment": "prod", "service": "api"}

    async def deploy(client):
        return await client.call_tool("ops__deploy", prod)

    async def staging(client):
        return await client.call_tool("ops__deploy", {"environment": "staging", "service": "api"})

    assert not call_virtual(gateway_server, cast.bob, "platform", staging).is_error  # approval_when: flows
    first = call_virtual(gateway_server, cast.bob, "platform", deploy)
    review = Review.objects.get()
    assert first.is_error and first.content[0].text.startswith("[pending_approval]")
    assert f"/reviews/{review.pk}/" in first.content[0].text
    assert call_virtual(gateway_server, cast.bob, "platform", deploy).is_error and Review.objects.count() == 1
    reviews.review_decide(actor=Actor.for_user(sam, surface="web"), review_id=review.pk, status="APPROVED")
    retry = call_virtual(gateway_server, cast.bob, "platform", deploy)
    assert not retry.is_error and retry.content[0].text == "deployed api to prod"
    assert received(log) == [{"environment": "staging", "service": "api"}, prod]  # the approved call, once
    assert Review.objects.get().status == ReviewStatus.EXECUTED


@pytest.mark.live
def test_results_are_masked_through_the_virtual_server(cast, mcp, gateway_server, two_upstreams):
    from governance import rules

    make_mcp_connection(cast.acme, two_upstreams["tickets"][0], name="tickets")
    rules.masking_rule_create(
        actor=cast.alice.actor(), name="pii", spec={"entities": ["EMAIL_ADDRESS"]}, connections=["tickets"]
    )
    vs.virtual_server_create(actor=cast.alice.actor(), name="platform", connections=["tickets"])

    async def pii(client):
        return await client.call_tool("tickets__pii", {})

    result = call_virtual(gateway_server, cast.bob, "platform", pii)
    assert not result.is_error
    assert "jane.roe@example.com" not in result.content[0].text
    assert result.structured_content["email"] != "jane.roe@example.com"


@pytest.mark.live
def test_a_member_whose_upstream_is_down_does_not_take_the_others_down(
    cast, mcp, gateway_server, two_upstreams
):
    make_mcp_connection(cast.acme, two_upstreams["tickets"][0], name="tickets", tools=POLICY)
    make_mcp_connection(cast.acme, f"http://127.0.0.1:{_free_port()}/mcp", name="down", tools=POLICY)
    vs.virtual_server_create(actor=cast.alice.actor(), name="platform", connections=["tickets", "down"])
    assert call_virtual(gateway_server, cast.bob, "platform", _names) == [
        "tickets__deploy",
        "tickets__echo",
        "tickets__whoami",
    ]

    async def both(client):
        return await client.call_tool("down__echo", {"text": "x"}), await client.call_tool(
            "tickets__echo", {"text": "y"}
        )

    down, up = call_virtual(gateway_server, cast.bob, "platform", both)
    assert down.is_error and "could not reach the upstream MCP server" in down.content[0].text
    assert not up.is_error and up.content[0].text == "y"
