"""The approval hold as a client that knows nothing of Portcullis sees it: the official SDK client,
unmodified, against /api/mcp/c/<connection> on the live gateway, for an upstream over Streamable
HTTP and one over stdio (our test server, which counts what it receives, and the published
`mcp-server-time`); a reviewer approves or rejects in the web page (headless Chromium) while the
client waits; and the same with the MCP Inspector's CLI (npm `@modelcontextprotocol/inspector`,
unmodified), which this module installs into a cache directory outside the checkout when it is
missing (npm, pinned version)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.services import connection_create_headless
from governance.services import user_create
from reviews.models import Review, ReviewStatus
from tests.test_upstream_mcp import ROOT, make_mcp_connection, upstream_server
from tests.test_web_browser import PASSWORD, chromium, in_browser, shot  # noqa: F401 - a fixture

pytestmark = [pytest.mark.live, pytest.mark.usefixtures("chromium")]  # every test drives the web page

DEPLOY_NEEDS_APPROVAL = [
    {
        "match": "deploy",
        "requires_approval": True,
        "reviewers": ["sre"],
        "approval_when": {"environment": "prod"},
    },
    {"match": "get_current_time", "requires_approval": True, "reviewers": ["sre"]},
    {"match": "*"},
]
PROD = {"environment": "prod", "service": "api"}


@pytest.fixture
def call_log(tmp_path) -> Path:
    log = tmp_path / "calls.log"
    log.touch()
    return log


def received(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(params=["http", "stdio"])
def upstream(request, cast, call_log, monkeypatch, settings):
    """The `deploys` connection to our counting test server, over Streamable HTTP or over stdio."""
    settings.COMMAND_CONNECTIONS_ENABLED = True  # the live gateway's environment enables them too
    if request.param == "http":
        monkeypatch.setenv("UPSTREAM_CALL_LOG", str(call_log))
        with upstream_server() as url:
            yield lambda **options: make_mcp_connection(
                cast.acme, url, name="deploys", tools=DEPLOY_NEEDS_APPROVAL, **options
            )
        return
    settings_ = {
        "command": [sys.executable, "-m", "tests.upstream_server", "stdio"],
        "cwd": str(ROOT),
        "env": {"UPSTREAM_CALL_LOG": str(call_log)},
        "tools": DEPLOY_NEEDS_APPROVAL,
    }
    yield lambda **options: connection_create_headless(
        org=cast.acme, name="deploys", kind="mcp", settings={**settings_, **options}, options={}
    )


@pytest.fixture
def sam(cast):
    """A reviewer (group sre) who signs in to the web app."""
    user = user_create(org=cast.acme, email="sam@acme.test", name="Sam", groups=["sre"])
    user.set_password(PASSWORD)
    user.save()
    return user


class HeldCall:
    """One tool call by the unmodified SDK client on a thread of its own, with the progress
    notifications it received."""

    def __init__(self, server, token: str, connection: str, tool: str, arguments: dict):
        self.url = f"{server.url}/api/mcp/c/{connection}"
        self.token, self.tool, self.arguments = token, tool, arguments
        self.progress: list[str] = []
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._run, name="held-call")

    async def _call(self):
        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {self.token}"}, timeout=httpx2.Timeout(30, read=60)
        )

        async def on_progress(progress, total, message):
            self.progress.append(message or "")

        async with http, Client(streamable_http_client(self.url, http_client=http)) as client:
            await client.list_tools()
            return await client.call_tool(self.tool, self.arguments, progress_callback=on_progress)

    def _run(self):
        try:
            self.outcome["result"] = asyncio.run(self._call())
        except BaseException as exc:  # re-raised by result()
            self.outcome["error"] = exc

    def start(self) -> HeldCall:
        self.thread.start()
        return self

    def result(self):
        self.thread.join(timeout=600)
        assert not self.thread.is_alive(), "the client never got an answer"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]


def until(predicate, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def pending_review() -> Review:
    return until(lambda: Review.objects.filter(status=ReviewStatus.PENDING).first(), "no review was opened")


def decide_in_the_page(server, review_id, decision: str, reason: str = "", *, before=None, screenshot=None):
    """Sam signs in, opens the review page and clicks Approve or Reject."""

    def act(page):
        page.goto(f"{server.url}/reviews/{review_id}/")
        page.fill("#id_username", "sam@acme.test")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(rf"/reviews/{review_id}/$"))
        assert "deploy" in page.content() or "get_current_time" in page.content()
        if before is not None:
            until(before, "the client got no progress notification while it waited")
        if reason:
            page.fill("#reason", reason)
        if screenshot:
            shot(page, screenshot)
        page.click("#approve" if decision == "APPROVED" else "#reject")
        page.wait_for_load_state()

    in_browser(act)
    until(
        lambda: Review.objects.get(pk=review_id).status != ReviewStatus.PENDING, "the decision was not saved"
    )


def test_a_call_approved_in_the_web_page_while_the_client_waits_returns_the_upstreams_result(
    cast,
    mcp,
    gateway_server,
    upstream,
    sam,
    call_log,
):
    upstream(approval_hold_seconds=300)
    held = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", PROD).start()
    review = pending_review()
    decide_in_the_page(
        gateway_server, review.pk, "APPROVED", before=lambda: held.progress, screenshot="upstream-hold-review"
    )
    result = held.result()
    assert not result.is_error, result
    # The upstream's own result, as a direct call returns it.
    assert result.content[0].text == "deployed api to prod"
    assert result.structured_content == {"deployed": "api", "environment": "prod"}
    assert any("waiting for approval" in m and f"/reviews/{review.pk}/" in m for m in held.progress)
    assert received(call_log) == [PROD]  # the upstream received the approved call exactly once
    # A call that needs no approval flows freely.
    dev = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", {**PROD, "environment": "dev"})
    assert dev.start().result().content[0].text == "deployed api to dev"
    assert Review.objects.count() == 1 and len(received(call_log)) == 2


def test_a_call_rejected_in_the_web_page_gets_the_reviewers_reason(
    cast,
    mcp,
    gateway_server,
    upstream,
    sam,
    call_log,
):
    upstream(approval_hold_seconds=300)
    held = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", PROD).start()
    review = pending_review()
    decide_in_the_page(gateway_server, review.pk, "REJECTED", "not during the release freeze")
    result = held.result()
    assert result.is_error
    assert result.content[0].text == "[blocked] rejected by a reviewer: not during the release freeze"
    assert received(call_log) == []


def test_approval_after_the_hold_and_the_client_retries(
    cast,
    mcp,
    gateway_server,
    upstream,
    sam,
    call_log,
):
    upstream(approval_hold_seconds=1)
    first = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", PROD).start().result()
    assert first.is_error
    text = first.content[0].text
    review = Review.objects.get()
    assert text.startswith("[pending_approval] approval required") and f"/reviews/{review.pk}/" in text
    assert "Make the same call again" in text
    # Retried before anyone decided: the same review, not a second one.
    again = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", dict(reversed(PROD.items())))
    assert again.start().result().is_error and Review.objects.count() == 1
    decide_in_the_page(gateway_server, review.pk, "APPROVED")
    assert received(call_log) == []  # approved, but nothing runs until the client asks again
    retry = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", PROD).start().result()
    assert not retry.is_error and retry.content[0].text == "deployed api to prod"
    assert received(call_log) == [PROD]
    assert Review.objects.get().status == ReviewStatus.EXECUTED
    # The approval is spent: the same call once more waits for a new review, and runs nothing.
    later = HeldCall(gateway_server, cast.bob.token, "deploys", "deploy", PROD).start().result()
    assert later.is_error and "[pending_approval]" in later.content[0].text
    assert Review.objects.count() == 2 and received(call_log) == [PROD]


def test_a_published_stdio_server_behind_the_hold(cast, mcp, gateway_server, sam, settings):
    """`mcp-server-time` from PyPI over stdio: approved in the page, the client gets its own result."""
    settings.COMMAND_CONNECTIONS_ENABLED = True
    connection_create_headless(
        org=cast.acme,
        name="time",
        kind="mcp",
        settings={
            "command": [sys.executable, "-m", "mcp_server_time", "--local-timezone", "UTC"],
            "tools": DEPLOY_NEEDS_APPROVAL,
            "approval_hold_seconds": 300,
        },
        options={},
    )
    held = HeldCall(gateway_server, cast.bob.token, "time", "get_current_time", {"timezone": "Europe/Paris"})
    held.start()
    review = pending_review()
    decide_in_the_page(gateway_server, review.pk, "APPROVED")
    result = held.result()
    assert not result.is_error, result
    answer = json.loads(result.content[0].text)
    assert answer["timezone"] == "Europe/Paris" and "datetime" in answer


# --- the MCP Inspector CLI ------------------------------------------------------------------------

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
CACHE = Path(
    os.environ.get("PORTCULLIS_INSPECTOR_DIR", Path.home() / ".cache" / "portcullis-test" / "inspector")
)


@pytest.fixture(scope="module")
def inspector(tmp_path_factory) -> list[str]:
    """The Inspector's launcher, installed with npm into CACHE first if it is not there."""
    launcher = CACHE / "node_modules" / ".bin" / "mcp-inspector"
    if not launcher.exists():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the MCP Inspector (apt-get install npm)"
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), INSPECTOR],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return [str(launcher), "--cli"]


class InspectorCall:
    """`mcp-inspector --cli <url> --method tools/call …` on a thread; its JSON answer."""

    def __init__(self, inspector, server, token, connection, tool, arguments, catalog: Path):
        self.argv = [
            *inspector,
            f"{server.url}/api/mcp/c/{connection}",
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {token}",
            "--method",
            "tools/call",
            "--tool-name",
            tool,
            "--tool-arg",
            *(f"{k}={v}" for k, v in arguments.items()),
        ]
        self.env = {**os.environ, "MCP_CATALOG_PATH": str(catalog)}
        self.outcome: dict = {}
        self.thread = threading.Thread(target=self._run, name="inspector")

    def _run(self):
        self.outcome["done"] = subprocess.run(self.argv, env=self.env, capture_output=True, text=True)

    def start(self) -> InspectorCall:
        self.thread.start()
        return self

    def result(self) -> dict:
        self.thread.join(timeout=600)
        assert not self.thread.is_alive(), "the Inspector never answered"
        done = self.outcome["done"]
        # 5: the tool answered isError (the result is printed all the same)
        assert done.returncode in (0, 5), done.stderr[-2000:]
        return json.loads(done.stdout)


def test_the_inspector_waits_for_an_approval_in_the_web_page(
    cast,
    mcp,
    gateway_server,
    inspector,
    upstream,
    sam,
    call_log,
    tmp_path,
):
    upstream(approval_hold_seconds=300)
    held = InspectorCall(
        inspector, gateway_server, cast.bob.token, "deploys", "deploy", PROD, tmp_path / "mcp.json"
    ).start()
    review = pending_review()
    decide_in_the_page(gateway_server, review.pk, "APPROVED")
    answer = held.result()
    assert answer["isError"] is False, answer
    assert answer["content"] == [{"type": "text", "text": "deployed api to prod"}]
    assert answer["structuredContent"] == {"deployed": "api", "environment": "prod"}
    assert received(call_log) == [PROD]


def test_the_inspector_retries_after_the_hold(
    cast,
    mcp,
    gateway_server,
    inspector,
    upstream,
    sam,
    call_log,
    tmp_path,
):
    upstream(approval_hold_seconds=1)

    def ask() -> dict:
        return (
            InspectorCall(
                inspector, gateway_server, cast.bob.token, "deploys", "deploy", PROD, tmp_path / "mcp.json"
            )
            .start()
            .result()
        )

    pending = ask()
    review = Review.objects.get()
    assert pending["isError"] is True and f"/reviews/{review.pk}/" in pending["content"][0]["text"]
    decide_in_the_page(gateway_server, review.pk, "APPROVED")
    answer = ask()
    assert answer["isError"] is False and answer["content"][0]["text"] == "deployed api to prod"
    assert received(call_log) == [PROD]
    assert Review.objects.get().status == ReviewStatus.EXECUTED
