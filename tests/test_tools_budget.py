"""tools/list an agent can afford: its size per role, measured over the SDK client, and every tool
still typed (inputSchema, outputSchema, structuredContent validated by the client)."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

pytestmark = pytest.mark.live

# Bytes of the tools/list result as JSON (what lands in an agent's context). Issue 15's budget:
# admin <= 45 KB and standard user <= 25 KB, with every tool typed (from 149 / 100 / 76 KB; measured
# 44.5 / 30.2 / 23.3 KB when this budget was met). The auditor's listing, which the issue does not
# bound, is held near where it is, so a change that grows it has to say so here.
BUDGET = {
    "admin": 45_000,
    "auditor": 30_700,
    "standard": 25_000,
}


async def _listing(client):
    return await client.list_tools()


def test_it_prints_and_holds_the_tools_list_budget_per_role(cast, mcp):
    sizes = {}
    for role, person in (("admin", cast.alice), ("auditor", cast.carol), ("standard", cast.bob)):
        listing = mcp(person).run(_listing)
        sizes[role] = (len(listing.model_dump_json(by_alias=True, exclude_none=True)), len(listing.tools))
    print("\ntools/list sizes: " + ", ".join(f"{r} {b} bytes ({n} tools)" for r, (b, n) in sizes.items()))
    print("budget: " + ", ".join(f"{r} {t} bytes ({sizes[r][0] - t:+d})" for r, t in BUDGET.items()))
    for role, (size, _) in sizes.items():
        assert size <= BUDGET[role], f"{role} tools/list is {size} bytes, budget {BUDGET[role]}"
    assert sizes["standard"][1] < sizes["auditor"][1] < sizes["admin"][1]


def test_every_tool_is_typed_with_valid_schemas(cast, mcp):
    listing = mcp(cast.alice).run(_listing)
    for tool in listing.tools:
        assert tool.input_schema["type"] == "object" and tool.output_schema["type"] == "object", tool.name
        Draft202012Validator.check_schema(tool.input_schema)
        Draft202012Validator.check_schema(tool.output_schema)
        assert not list(_keywords(tool.input_schema, {"title"})), tool.name
        assert not list(_keywords(tool.output_schema, {"title", "required"})), tool.name


def _keywords(node, wanted):
    """Schema keywords in `wanted` anywhere in `node` (property names are not keywords)."""
    if isinstance(node, list):
        for x in node:
            yield from _keywords(x, wanted)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in wanted:
                yield key
            if key == "properties":
                for sub in value.values():
                    yield from _keywords(sub, wanted)
            else:
                yield from _keywords(value, wanted)


def test_a_shared_record_is_described_once_and_results_still_validate(cast, mcp, shops):
    listing = {t.name: t for t in mcp(cast.alice).run(_listing).tools}
    # The review record: in full in reviews_get, named by the tools that return it too.
    assert "you_can_decide" in listing["reviews_get"].output_schema["properties"]
    for name in ("reviews_wait", "reviews_update", "access_request"):
        assert listing[name].output_schema == {"type": "object", "description": "As in reviews_get."}
    # The client validates structuredContent against outputSchema: these calls would fail otherwise.
    from tests.conftest import structured

    listed = structured(mcp(cast.alice).call("connections_list", {}))
    assert listed["items"] and structured(
        mcp(cast.alice).call("connections_get", {"connection_name": "shop"})
    )
