"""Gateway in front of upstream MCP servers: per-tool policy, guardrails on arguments, masking of
results, pinned contracts, SSRF refusal, upstream failures, secrets, cross-org, and the
per-connection endpoint, against real upstream servers started here on loopback."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from gateway import pipeline, upstream
from gateway.connectors.mcp import address_refusal
from gateway.models import UpstreamTool
from gateway.services import connection_create_headless, connection_get, connection_to_dict
from governance import rules
from governance.errors import InvalidInput, NotFound
from sessions.models import AuditEvent, Session, SessionStatus
from tests.conftest import error_text, structured

ROOT = Path(__file__).resolve().parent.parent
BEARER = "upstream-s3cret-bearer-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def upstream_server(bearer: str | None = BEARER):
    port = _free_port()
    argv = [sys.executable, "-m", "tests.upstream_server", str(port)] + ([bearer] if bearer else [])
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
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
def upstream_url():
    with upstream_server() as url:
        yield url


def make_mcp_connection(org, url, *, name="tools", tools=None, allow_private=True, options=None, **extra):
    settings = {"url": url, "bearer_token": BEARER, **extra}
    if allow_private:
        settings["allow_private_network"] = True
    if tools is not None:
        settings["tools"] = tools
    return connection_create_headless(
        org=org, name=name, kind="mcp", settings=settings, options=options or {}
    )


def call(person, connection, tool, arguments=None):
    session = asyncio.run(
        pipeline.tool_call(
            actor=person.actor(), connection_name=connection, tool=tool, arguments=arguments or {}
        )
    )
    return pipeline.tool_envelope(session)


def tool_names(person, connection):
    return [
        t["name"]
        for t in asyncio.run(pipeline.upstream_tools_list(actor=person.actor(), connection_name=connection))
    ]


POLICY = [
    {"match": "delete_*", "effect": "deny"},
    {"match": "run_sql", "groups": ["engineering"]},
    {"match": ["echo", "pii", "sleep", "big", "whoami", "mutate"]},
]


# --- the path through the pipeline -------------------------------------------------------------


def test_it_calls_an_upstream_tool_and_records_a_session(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url)
    envelope = call(cast.bob, "tools", "echo", {"text": "hello"})
    assert envelope["status"] == "completed"
    assert envelope["content"] == [{"type": "text", "text": "hello"}]
    assert envelope["structured_content"] == {"echo": "hello"}
    session = Session.objects.get(pk=envelope["session_id"])
    assert session.verb == "tool" and session.status == SessionStatus.DONE and session.exit_code == 0
    assert session.input == '{"arguments":{"text":"hello"},"tool":"echo"}'
    assert session.output == 'hello\n{"echo":"hello"}'
    assert (
        session.user == cast.bob.user and session.client == "pytest" and session.execution_time_ms is not None
    )
    actions = sorted(AuditEvent.objects.filter(target_id=str(session.pk)).values_list("action", flat=True))
    assert actions == ["tool.finish", "tool.request"]


def test_the_gateway_alone_holds_the_upstream_credential_and_never_returns_it(
    cast, upstream_url, transactional_db
):
    make_mcp_connection(cast.acme, upstream_url, headers={"X-Team": "platform"})
    # The upstream refuses requests without the bearer: the gateway sent it.
    envelope = call(cast.bob, "tools", "whoami")
    assert envelope["status"] == "completed"
    shown = connection_to_dict(connection_get(actor=cast.alice.actor(), name="tools"))
    assert shown["secret_keys"] == ["bearer_token", "headers"]
    assert BEARER not in json.dumps(shown) and "platform" not in json.dumps(shown)
    assert BEARER not in json.dumps(list(AuditEvent.objects.values("detail", "target_repr")))
    # A connection without the bearer is refused by the upstream, and the error holds no secret.
    connection_create_headless(
        org=cast.acme,
        name="nobearer",
        kind="mcp",
        settings={"url": upstream_url, "allow_private_network": True},
        options={},
    )
    failed = call(cast.bob, "nobearer", "echo", {"text": "x"})
    assert failed["status"] == "failed"
    assert BEARER not in (failed["message"] or "")


def test_the_tool_policy_allows_and_denies_per_group(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url, tools=POLICY)
    assert call(cast.bob, "tools", "run_sql", {"sql": "select 1"})["status"] == "completed"
    with pytest.raises(NotFound) as denied:
        call(cast.dave, "tools", "run_sql", {"sql": "select 1"})
    assert str(denied.value) == 'tool "run_sql" not found or not accessible on connection "tools"'
    with pytest.raises(NotFound) as missing:
        call(cast.dave, "tools", "no_such_tool")
    assert str(missing.value) == 'tool "no_such_tool" not found or not accessible on connection "tools"'
    for person in (cast.alice, cast.bob):  # a deny applies to admins too
        with pytest.raises(NotFound):
            call(person, "tools", "delete_everything")
    assert AuditEvent.objects.filter(action="tool.request", outcome="denied").count() == 4
    assert "run_sql" in tool_names(cast.bob, "tools")
    dave_sees = tool_names(cast.dave, "tools")
    assert "run_sql" not in dave_sees and "delete_everything" not in dave_sees and "echo" in dave_sees


def test_argument_guardrails_block_before_the_upstream_is_reached(cast, upstream_url, transactional_db):
    policy = [
        {
            "match": "run_sql",
            "guardrails": {"deny_words": ["password"], "sql": {"read_only": True}, "sql_arguments": ["sql"]},
        },
        {"match": "*"},
    ]
    make_mcp_connection(cast.acme, upstream_url, tools=policy)
    rules.guardrail_create(
        actor=cast.alice.actor(),
        name="no-rm",
        message="no rm here",
        connections=["tools"],
        input={"deny_words": ["rm"]},
    )
    assert call(cast.bob, "tools", "run_sql", {"sql": "select * from t"})["status"] == "completed"
    blocked = call(cast.bob, "tools", "run_sql", {"sql": "drop table customers"})
    assert blocked["status"] == "blocked" and "tools[0]" in blocked["rule"]
    session = Session.objects.get(pk=blocked["session_id"])
    assert (
        session.status == SessionStatus.BLOCKED
        and session.guardrail_findings[0]["condition"] == "sql.read_only"
    )
    assert session.started_at is None and session.output == ""  # nothing ran
    assert call(cast.bob, "tools", "run_sql", {"sql": "select password from users"})["status"] == "blocked"
    bound = call(cast.bob, "tools", "echo", {"text": "please rm -rf /"})
    assert bound["status"] == "blocked" and bound["message"] == "no rm here (guardrail: no-rm)"
    assert AuditEvent.objects.filter(action="tool.request", outcome="blocked").count() == 3


def test_results_are_masked_in_text_and_structured_content(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url)
    rules.masking_rule_create(
        actor=cast.alice.actor(),
        name="pii",
        spec={"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"]},
        connections=["tools"],
    )
    envelope = call(cast.bob, "tools", "pii", {"note": "write to jane.roe@example.com"})
    assert envelope["status"] == "completed"
    text = json.dumps(envelope)
    assert "jane.roe@example.com" not in text and "555-0187" not in text
    assert envelope["structured_content"]["name"] == "Jane Roe"
    assert envelope["masking"]["EMAIL_ADDRESS"] >= 2
    session = Session.objects.get(pk=envelope["session_id"])
    stored = session.input + session.output + json.dumps(session.result)
    assert "jane.roe@example.com" not in stored and "555-0187" not in stored
    # The finish merges the result's counts over the arguments' counts kept at the record.
    assert session.masking["input_counts"] == {"EMAIL_ADDRESS": 1}
    assert session.masking["counts"]["EMAIL_ADDRESS"] >= 1 and session.masking["rules"] == ["pii"]


def test_a_tool_that_requires_approval_runs_exactly_the_approved_call_once(
    cast, upstream_url, transactional_db
):
    import time as _time

    from gateway.reviewed import review_execute
    from governance.errors import Conflict, InvalidInput
    from governance.policy import Actor
    from governance.rules import masking_rule_create
    from governance.services import user_create
    from reviews import services as reviews

    with pytest.raises(InvalidInput, match="requires_approval needs reviewers"):
        make_mcp_connection(cast.acme, upstream_url, tools=[{"match": "echo", "requires_approval": True}])
    make_mcp_connection(
        cast.acme, upstream_url, tools=[{"match": "echo", "requires_approval": True, "reviewers": ["dba"]}]
    )
    masking_rule_create(
        actor=cast.alice.actor(), name="emails", spec={"entities": ["EMAIL_ADDRESS"]}, connections=["tools"]
    )
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])
    envelope = call(cast.bob, "tools", "echo", {"text": "mail jane.roe@example.com"})
    assert envelope["status"] == "pending_approval" and envelope["review_id"]
    session = Session.objects.get(pk=envelope["session_id"])
    assert session.status == SessionStatus.PENDING_REVIEW and session.started_at is None
    assert "jane.roe@example.com" not in session.input  # the record keeps the arguments masked
    review = reviews.review_get(actor=Actor.for_user(frank, surface="web"), review_id=envelope["review_id"])
    assert "jane.roe@example.com" in review.input  # the reviewer sees (and approves) the exact call
    reviews.review_decide(actor=Actor.for_user(frank, surface="web"), review_id=review.pk, status="APPROVED")
    ran = review_execute(actor=cast.bob.actor(), review_id=review.pk)
    deadline = _time.monotonic() + 30
    while not ran.is_final and _time.monotonic() < deadline:
        _time.sleep(0.1)
        ran = Session.objects.get(pk=ran.pk)
    finished = pipeline.tool_envelope(ran)
    assert finished["status"] == "completed", finished["message"]
    text = finished["content"][0]["text"]
    assert (
        text.startswith("mail ") and "jane.roe@example.com" not in text
    )  # the exact call ran; its result is masked
    with pytest.raises(Conflict, match="not approved or already executed"):
        review_execute(actor=cast.bob.actor(), review_id=review.pk)


def test_size_and_rate_limits_per_tool(cast, upstream_url, transactional_db):
    policy = [
        {"match": "echo", "max_argument_bytes": 100, "rate_limit": {"calls": 2, "per_seconds": 3600}},
        {"match": "big", "max_result_bytes": 1000},
    ]
    make_mcp_connection(cast.acme, upstream_url, tools=policy)
    assert call(cast.bob, "tools", "echo", {"text": "x" * 200})["message"].startswith("the arguments are")
    assert call(cast.bob, "tools", "echo", {"text": "one"})["status"] == "completed"
    assert call(cast.dave, "tools", "echo", {"text": "two"})["status"] == "completed"
    limited = call(cast.bob, "tools", "echo", {"text": "three"})
    assert limited["status"] == "blocked" and limited["message"].startswith(
        "rate limit: tool 'echo' allows 2 call(s)"
    )
    assert limited["message"].endswith("s") and "retry after " in limited["message"]
    assert call(cast.bob, "tools", "big", {"n": 100})["status"] == "completed"
    oversize = call(cast.bob, "tools", "big", {"n": 5000})
    assert oversize["status"] == "failed" and "may return at most 1000 bytes" in oversize["message"]


def test_cross_org_callers_get_the_same_answer_as_for_a_missing_connection(
    cast, upstream_url, transactional_db
):
    make_mcp_connection(cast.acme, upstream_url)
    with pytest.raises(NotFound) as other_org:
        call(cast.eve, "tools", "echo", {"text": "x"})
    with pytest.raises(NotFound) as missing:
        call(cast.eve, "nothing-here", "echo", {"text": "x"})
    assert str(other_org.value) == 'connection "tools" not found or not accessible'
    assert str(missing.value) == 'connection "nothing-here" not found or not accessible'
    with pytest.raises(NotFound):
        asyncio.run(pipeline.upstream_tools_list(actor=cast.eve.actor(), connection_name="tools"))
    with pytest.raises(NotFound):
        upstream.contracts_list(actor=cast.eve.actor(), connection_name="tools")
    assert not Session.objects.filter(org=cast.globex).exists()


# --- pinned contracts --------------------------------------------------------------------------


def test_a_changed_contract_blocks_the_tool_until_an_admin_accepts_it(cast, transactional_db):
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert call(cast.bob, "tools", "echo", {"text": "before"})["status"] == "completed"
        assert UpstreamTool.objects.filter(status="accepted").count() == 10  # pinned on first sight
        assert call(cast.bob, "tools", "mutate")["status"] == "completed"
        blocked = call(cast.bob, "tools", "echo", {"text": "after"})
        assert blocked["status"] == "blocked"
        assert (
            "changed its contract" in blocked["message"] and "upstream_contracts_accept" in blocked["message"]
        )
        assert "echo" not in tool_names(cast.bob, "tools") and "pii" in tool_names(cast.bob, "tools")
        changed = AuditEvent.objects.get(action="upstream.contract_changed")
        assert changed.detail["tool"] == "echo" and changed.detail["change"] == "changed"
        [row] = upstream.contracts_list(actor=cast.alice.actor(), connection_name="tools", status="changed")
        assert "send_to" in json.dumps(row.observed) and "send_to" not in json.dumps(row.pinned)
        with pytest.raises(Exception, match="admin access required"):
            upstream.contracts_accept(actor=cast.bob.actor(), connection_name="tools", tools=["echo"])
        with pytest.raises(InvalidInput, match="changed again"):
            upstream.contracts_accept(
                actor=cast.alice.actor(),
                connection_name="tools",
                tools=["echo"],
                observed_sha256={"echo": "0" * 64},
            )
        upstream.contracts_accept(
            actor=cast.alice.actor(),
            connection_name="tools",
            tools=["echo"],
            observed_sha256={"echo": row.observed_sha256},
        )
        assert (
            AuditEvent.objects.filter(action="upstream.contract_accept", actor=cast.alice.user).count() == 1
        )
        assert call(cast.bob, "tools", "echo", {"text": "accepted"})["status"] == "completed"


# --- outbound safety and failures --------------------------------------------------------------


@pytest.mark.parametrize(
    "address, refused",
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-global"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_it_knows_which_addresses_are_private(address, refused):
    reason = address_refusal(address)
    assert (reason is None) if refused is None else (reason is not None)


def test_loopback_is_refused_unless_the_connection_allows_it(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url, allow_private=False)
    localhost = upstream_url.replace("127.0.0.1", "localhost")
    make_mcp_connection(cast.acme, localhost, name="byname", allow_private=False)
    for name in ("tools", "byname"):
        envelope = call(cast.bob, name, "whoami")
        assert envelope["status"] == "failed"
        assert "loopback address" in envelope["message"] and "allow_private_network" in envelope["message"]
    with pytest.raises(Exception, match="loopback address"):
        asyncio.run(pipeline.upstream_tools_list(actor=cast.bob.actor(), connection_name="tools"))


def test_an_upstream_that_is_down_is_a_clear_failure(cast, transactional_db):
    with upstream_server() as url:
        pass  # started and stopped: nothing listens there now
    make_mcp_connection(cast.acme, url)
    envelope = call(cast.bob, "tools", "echo", {"text": "x"})
    assert envelope["status"] == "failed" and "could not reach the upstream MCP server" in envelope["message"]
    assert Session.objects.get(pk=envelope["session_id"]).status == SessionStatus.FAILED


def test_a_slow_upstream_fails_at_the_connection_timeout(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url, options={"timeout_seconds": 1})
    envelope = call(cast.bob, "tools", "sleep", {"seconds": 30})
    assert envelope["status"] == "failed"
    assert envelope["message"] == "the upstream did not answer within 1s"


def test_an_oversize_answer_is_cut_off_at_the_transport(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url, options={"max_output_bytes": 2048})
    envelope = call(cast.bob, "tools", "big", {"n": 2 * 1024 * 1024})
    assert envelope["status"] == "failed"
    assert "larger than 2048 bytes" in envelope["message"]


def test_a_protocol_error_is_reported(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url.replace("/mcp", "/not-mcp"))
    envelope = call(cast.bob, "tools", "echo", {"text": "x"})
    assert envelope["status"] == "failed" and envelope["message"]


@pytest.mark.parametrize(
    "settings_, message",
    [
        ({}, "exactly one of 'url'"),
        ({"url": "ftp://x"}, "http:// or https://"),
        ({"url": "http://u:p@example.com/mcp"}, "must not carry credentials"),
        ({"url": "http://example.com/mcp", "headers": {"Host": "x"}}, "may not be set"),
        ({"url": "http://example.com/mcp", "allow_private_network": "yes"}, "true or false"),
        ({"url": "http://example.com/mcp", "tools": {"match": "x"}}, "must be a list"),
        ({"url": "http://example.com/mcp", "tools": [{"match": "x", "effect": "maybe"}]}, "tools[0].effect"),
        (
            {"url": "http://example.com/mcp", "tools": [{"match": "x", "guardrails": {"regex": ["("]}}]},
            "tools[0].guardrails",
        ),
        (
            {
                "url": "http://example.com/mcp",
                "tools": [{"match": "x", "guardrails": {"sql": {"read_only": True}}}],
            },
            "need sql_arguments",
        ),
        (
            {
                "url": "http://example.com/mcp",
                "tools": [{"match": "x", "rate_limit": {"calls": 0, "per_seconds": 1}}],
            },
            "rate_limit.calls",
        ),
        ({"command": ["x"]}, "command connections are disabled"),
    ],
)
def test_bad_settings_get_a_clear_error(cast, settings_, message):
    with pytest.raises(InvalidInput) as raised:
        connection_create_headless(org=cast.acme, name="bad", kind="mcp", settings=settings_, options={})
    assert message in str(raised.value)


def test_a_published_server_runs_over_stdio(cast, transactional_db, settings):
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme,
        name="time",
        kind="mcp",
        settings={"command": [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"]},
        options={},
    )
    assert "get_current_time" in tool_names(cast.bob, "time")
    envelope = call(cast.bob, "time", "get_current_time", {"timezone": "Europe/Paris"})
    assert envelope["status"] == "completed", envelope
    assert "Europe/Paris" in json.dumps(envelope["structured_content"] or envelope["content"])
    settings.COMMAND_CONNECTIONS_ENABLED = False
    refused = call(cast.bob, "time", "get_current_time", {"timezone": "UTC"})
    assert refused["status"] == "failed" and "command connections are disabled" in refused["message"]


# --- over real HTTP: /api/mcp/c/<connection> and /api/mcp, with the official SDK client -------------


def proxy(server, person, connection: str, fn, mode: str = "auto"):
    async def run():
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {person.token}"}, timeout=httpx2.Timeout(30, read=60)
        )
        url = f"{server.url}/api/mcp/c/{connection}"
        async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            return await fn(client)

    try:
        return asyncio.run(run())
    except BaseExceptionGroup as group:
        while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
            group = group.exceptions[0]
        raise group from None


async def _listing(client):
    return {t.name: t for t in (await client.list_tools()).tools}


@pytest.mark.live
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_the_connection_endpoint_lists_only_allowed_tools_and_proxies_calls(
    cast, mcp, gateway_server, upstream_url, mode
):
    make_mcp_connection(cast.acme, upstream_url, tools=POLICY)
    bob_tools = proxy(gateway_server, cast.bob, "tools", _listing, mode)
    assert set(bob_tools) == {"echo", "pii", "sleep", "big", "whoami", "mutate", "run_sql"}
    assert bob_tools["echo"].input_schema["required"] == ["text"]
    assert "run_sql" not in proxy(gateway_server, cast.dave, "tools", _listing, mode)

    async def calls(client):
        await client.list_tools()
        return (
            await client.call_tool("echo", {"text": "through the gateway"}),
            await client.call_tool("delete_everything", {}),
        )

    echo, denied = proxy(gateway_server, cast.bob, "tools", calls, mode)
    assert not echo.is_error and echo.content[0].text == "through the gateway"
    assert echo.structured_content == {"echo": "through the gateway"}
    assert denied.is_error
    assert (
        denied.content[0].text == 'tool "delete_everything" not found or not accessible on connection "tools"'
    )
    session = Session.objects.filter(verb="tool", status=SessionStatus.DONE).get()
    assert session.surface == "mcp" and session.user == cast.bob.user and "token:pytest" in session.client


@pytest.mark.live
def test_the_connection_endpoint_masks_results(cast, mcp, gateway_server, upstream_url):
    make_mcp_connection(cast.acme, upstream_url)
    rules.masking_rule_create(
        actor=cast.alice.actor(), name="pii", spec={"entities": ["EMAIL_ADDRESS"]}, connections=["tools"]
    )

    async def pii(client):
        await client.list_tools()
        return await client.call_tool("pii", {})

    result = proxy(gateway_server, cast.bob, "tools", pii)
    assert not result.is_error
    assert "jane.roe@example.com" not in result.content[0].text
    assert result.structured_content["email"] != "jane.roe@example.com"


@pytest.mark.live
def test_a_changed_schema_is_blocked_over_http_until_an_admin_accepts_it(cast, mcp, gateway_server):
    with upstream_server() as url:
        make_mcp_connection(cast.acme, url)
        assert "echo" in proxy(gateway_server, cast.bob, "tools", _listing)

        async def mutate(client):
            await client.list_tools()
            return await client.call_tool("mutate", {})

        assert not proxy(gateway_server, cast.bob, "tools", mutate).is_error
        assert "echo" not in proxy(gateway_server, cast.bob, "tools", _listing)
        refused = mcp(cast.bob).call(
            "upstream_call", {"connection_name": "tools", "tool": "echo", "arguments": {"text": "x"}}
        )
        assert structured(refused)["status"] == "blocked"
        assert "changed its contract" in structured(refused)["message"]
        assert error_text(mcp(cast.bob).call("upstream_contracts_list", {"connection_name": "tools"})) == (
            "admin access required"
        )
        listed = structured(
            mcp(cast.alice).call("upstream_contracts_list", {"connection_name": "tools", "status": "changed"})
        )
        assert [c["tool"] for c in listed["items"]] == ["echo"]
        digest = listed["items"][0]["observed_sha256"]
        accepted = structured(
            mcp(cast.alice).call(
                "upstream_contracts_accept",
                {"connection_name": "tools", "tools": ["echo"], "observed_sha256": {"echo": digest}},
            )
        )
        assert accepted["items"][0]["status"] == "accepted"
        tools = proxy(gateway_server, cast.bob, "tools", _listing)
        assert "send_to" in tools["echo"].input_schema["properties"]


@pytest.mark.live
def test_upstream_tools_on_the_main_endpoint(cast, mcp, gateway_server, upstream_url):
    make_mcp_connection(cast.acme, upstream_url, tools=POLICY)
    listed = structured(mcp(cast.dave).call("upstream_tools_list", {"connection_name": "tools"}))
    assert "run_sql" not in [t["name"] for t in listed["items"]] and listed["total"] == len(listed["items"])
    envelope = structured(
        mcp(cast.bob, "legacy").call(
            "upstream_call", {"connection_name": "tools", "tool": "echo", "arguments": {"text": "hi"}}
        )
    )
    assert envelope["status"] == "completed" and envelope["content"][0]["text"] == "hi"
    assert (
        error_text(
            mcp(cast.dave).call(
                "upstream_call", {"connection_name": "tools", "tool": "run_sql", "arguments": {}}
            )
        )
        == 'tool "run_sql" not found or not accessible on connection "tools"'
    )


@pytest.mark.live
def test_exec_on_an_mcp_connection_is_refused_with_what_to_use_instead(
    cast, mcp, gateway_server, upstream_url
):
    """The mcp kind's record has no exec: exec (and its explain) answer what to call, never an
    internal error, and nothing is recorded or sent upstream."""
    make_mcp_connection(cast.acme, upstream_url, tools=POLICY)
    expected = (
        'connection "tools" is an MCP server: it has no exec; list its tools with upstream_tools_list '
        "and call them with upstream_call (or at /api/mcp/c/<connection>)"
    )
    for tool in ("exec", "exec_explain"):
        assert (
            error_text(mcp(cast.bob).call(tool, {"connection_name": "tools", "input": "select 1"}))
            == expected
        )
    assert not Session.objects.filter(connection_name="tools").exists()
    listed = structured(mcp(cast.bob).call("upstream_tools_list", {"connection_name": "tools"}))
    assert "echo" in [t["name"] for t in listed["items"]]  # its tools still answer


@pytest.mark.live
def test_an_outage_and_other_orgs_are_reported_cleanly_over_http(cast, mcp, gateway_server, upstream_url):
    from mcp.shared.exceptions import MCPError

    with upstream_server() as url:
        pass
    make_mcp_connection(cast.acme, url, name="down")
    make_mcp_connection(cast.acme, upstream_url)
    with pytest.raises(MCPError, match="could not reach the upstream MCP server"):
        proxy(gateway_server, cast.bob, "down", _listing)
    envelope = structured(
        mcp(cast.bob).call("upstream_call", {"connection_name": "down", "tool": "echo", "arguments": {}})
    )
    assert envelope["status"] == "failed" and "could not reach" in envelope["message"]
    with pytest.raises(MCPError, match='connection "tools" not found or not accessible'):
        proxy(gateway_server, cast.eve, "tools", _listing)
    response = httpx2.post(
        f"{gateway_server.url}/api/mcp/c/tools", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    )
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert "resource_metadata=" in challenge and "error=" not in challenge  # no token sent: no error code
    bad = httpx2.post(
        f"{gateway_server.url}/api/mcp/c/tools",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer pcu_not-a-token"},
    )
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_connections_test_reaches_the_upstream(cast, upstream_url, transactional_db):
    make_mcp_connection(cast.acme, upstream_url)
    report = pipeline.connection_test(actor=cast.bob.actor(), connection_name="tools")
    assert report["ok"] is True and report["message"] == "MCP server with 10 tool(s)"
    make_mcp_connection(cast.acme, upstream_url, name="guarded", allow_private=False)
    refused = pipeline.connection_test(actor=cast.bob.actor(), connection_name="guarded")
    assert refused["ok"] is False and "loopback address" in refused["message"]


def test_a_read_only_token_cannot_call_upstream_tools(cast, upstream_url, transactional_db):
    import dataclasses

    from governance.errors import PolicyDenied

    make_mcp_connection(cast.acme, upstream_url)
    read_only = dataclasses.replace(cast.bob.actor(), capability="read_only")
    with pytest.raises(PolicyDenied, match="read-only token"):
        asyncio.run(pipeline.tool_call(actor=read_only, connection_name="tools", tool="echo", arguments={}))


def test_a_running_tool_call_can_be_cancelled(cast, upstream_url, transactional_db):
    from channels.db import database_sync_to_async as db

    make_mcp_connection(cast.acme, upstream_url)
    actor = cast.bob.actor()

    async def scenario():
        task = asyncio.create_task(
            pipeline.tool_call(actor=actor, connection_name="tools", tool="sleep", arguments={"seconds": 60})
        )
        running = db(lambda: Session.objects.filter(verb="tool", status=SessionStatus.RUNNING).first())
        deadline = time.monotonic() + 30
        while (session := await running()) is None:
            assert time.monotonic() < deadline, "the tool call never started"
            await asyncio.sleep(0.05)
        await db(lambda: pipeline.exec_cancel(actor=actor, session_id=str(session.pk)))()
        return await asyncio.wait_for(task, 30)

    session = asyncio.run(scenario())
    assert session.status == SessionStatus.CANCELLED and session.cancel_requested
    assert pipeline.tool_envelope(session)["status"] == "failed"


@pytest.mark.live
def test_an_approval_required_tool_goes_through_review_over_http(cast, mcp, gateway_server, upstream_url):
    """Through /api/mcp/c/<name>: the call waits for a reviewer; on /api/mcp the agent waits for the
    decision and runs exactly the approved call, once."""
    import re

    from governance.policy import Actor
    from governance.services import user_create
    from reviews import services as reviews

    make_mcp_connection(
        cast.acme,
        upstream_url,
        tools=[{"match": "echo", "requires_approval": True, "reviewers": ["dba"]}, {"match": "*"}],
        approval_hold_seconds=0,  # answer pending at once (the hold: tests/test_upstream_hold_live.py)
    )
    frank = user_create(org=cast.acme, email="frank@acme.test", groups=["dba"])

    async def ask(client):
        await client.list_tools()
        return await client.call_tool("echo", {"text": "approved words"})

    pending = proxy(gateway_server, cast.bob, "tools", ask)
    assert pending.is_error and "approval required" in pending.content[0].text
    review_id = re.search(r"review ([0-9a-f-]{36})", pending.content[0].text).group(1)
    session = Session.objects.get(review__pk=review_id)
    assert session.status == SessionStatus.PENDING_REVIEW and session.started_at is None

    bob = mcp(cast.bob)
    assert structured(bob.call("reviews_wait", {"id": review_id, "timeout_seconds": 1}))["timed_out"]
    reviews.review_decide(actor=Actor.for_user(frank, surface="web"), review_id=review_id, status="APPROVED")
    assert structured(bob.call("reviews_wait", {"id": review_id}))["status"] == "APPROVED"
    ran = structured(bob.call("reviews_execute", {"id": review_id}))
    assert ran["status"] == "completed" and "approved words" in ran["output"]
    assert (
        error_text(bob.call("reviews_execute", {"id": review_id}))
        == "review not approved or already executed"
    )
    assert Session.objects.get(pk=session.pk).status == SessionStatus.DONE
