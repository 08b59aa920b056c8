"""One naming convention for tool arguments (CONTRIBUTING.md, "Tool argument names"), checked
over every registered tool."""

from __future__ import annotations

import re

from mcpserver.registry import TOOLS
from mcpserver.server import _DEFINITIONS

# The objects an argument may refer to, by name, id or e-mail.
OBJECTS = {
    "connection",
    "session",
    "review",
    "rule",
    "attribute",
    "group",
    "user",
    "actor",
    "runbook",
    "webhook",
    "record",
}
# Bare words that left agents guessing which object they meant.
BARE = OBJECTS | {"id", "email"}
REFERENCE = re.compile(r"^(?P<object>[a-z]+)_(?:name|id|email)$")


def _arguments():
    for name, definition in _DEFINITIONS.items():
        for argument, schema in definition.input_schema.get("properties", {}).items():
            yield name, argument, schema


def test_arguments_are_snake_case_and_never_a_bare_object_word():
    for tool, argument, _ in _arguments():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", argument), (tool, argument)
        assert argument not in BARE, f"{tool}.{argument}: say which object, e.g. {argument}_name"


def test_name_is_only_the_name_of_a_new_or_renamed_object():
    for tool, argument, _ in _arguments():
        if argument == "name":
            assert tool.endswith(("_create", "_update", "_import")), f"{tool}: refer to it as <object>_name"


def test_a_reference_names_a_known_object_and_has_one_type_everywhere():
    types: dict[str, set] = {}
    for tool, argument, schema in _arguments():
        match = REFERENCE.match(argument)
        if match and match["object"] not in {"max", "sha"}:
            assert match["object"] in OBJECTS, f"{tool}.{argument}: unknown object {match['object']}"
        kind = str(schema.get("type"))
        types.setdefault(argument, set()).add("number" if kind == "integer" else kind)
    mixed = {a: t for a, t in types.items() if len(t) > 1}
    assert not mixed, mixed


def test_every_tool_refers_to_a_connection_as_connection_name():
    for tool, argument, _ in _arguments():
        assert argument not in {"connection", "connection_id"}, tool
    for name in ("connections_get", "connections_test", "connections_update", "connections_delete", "exec"):
        assert "connection_name" in _DEFINITIONS[name].input_schema["required"], name


def test_old_argument_names_are_still_accepted_as_aliases():
    assert TOOLS["connections_test"].args.model_validate({"name": "shop"}).connection_name == "shop"
    assert TOOLS["sessions_get"].args.model_validate({"id": "x"}).session_id == "x"
    assert TOOLS["reviews_get"].args.model_validate({"id": "x"}).review_id == "x"
    assert TOOLS["config_get"].args.model_validate({"kind": "guardrail", "id": "r"}).record_name == "r"
