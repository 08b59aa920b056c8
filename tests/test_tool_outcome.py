"""The per-tool call counter tells a tool error from a success whichever form the handler answers
in: a CallToolResult model, or the wire-form dict the MCP endpoints hand the SDK."""

import asyncio
from types import SimpleNamespace

import pytest
from mcp.types import CallToolResult, TextContent

from gateway import metrics


def _count(tool: str, outcome: str) -> float:
    return metrics.TOOL_CALLS.labels("upstream", tool, outcome)._value.get()


@pytest.mark.parametrize(
    "answer, outcome",
    [
        ({"content": [{"type": "text", "text": "no"}], "isError": True}, "error"),
        ({"content": [{"type": "text", "text": "yes"}], "isError": False}, "ok"),
        (CallToolResult(content=[TextContent(type="text", text="no")], is_error=True), "error"),
        (CallToolResult(content=[TextContent(type="text", text="yes")]), "ok"),
    ],
)
def test_the_outcome_counted_is_the_answers(answer, outcome, settings):
    settings.MCP_RATE_PER_ORG = ""  # no actor here: nothing to limit

    async def handler(ctx, params):
        return answer

    wrapped = metrics.instrumented_tool_handler("upstream", handler)
    ctx = SimpleNamespace(request=SimpleNamespace(scope={}, path_params={"connection": "tools"}))
    params = SimpleNamespace(name="echo", arguments={})
    before = {o: _count("tools/echo", o) for o in ("ok", "error")}
    assert asyncio.run(wrapped(ctx, params)) is answer
    after = {o: _count("tools/echo", o) for o in ("ok", "error")}
    assert after[outcome] == before[outcome] + 1
    assert sum(after.values()) == sum(before.values()) + 1
