"""A tool result's structured content: fields a shape declares JSON-ready (an exec result's rows)
are handed on as they are, and the result is the same as pydantic's own JSON dump."""

from gateway.shapes import ExecOut, OffsetPage
from mcpserver.server import structured_content
from mcpserver.tools.execution import ExecEnvelope

ROWS = [[1, "a", None, 1.5, True, {"k": [1, 2]}], [2, "b\tc", "x", -0.0, False, []]]


def _envelope(**extra) -> ExecEnvelope:
    fields = {
        "status": "completed",
        "session_id": "7b0a5f1e-6f0e-4a53-9f65-0b6b1d2c3e4f",
        "session_status": "done",
        "columns": ["id", "h", "n", "f", "b", "j"],
        "rows": ROWS,
        "row_count": 2,
        "truncated": False,
    }
    return ExecEnvelope.model_construct(**{**fields, **extra})


def test_rows_are_handed_on_as_they_are_and_the_rest_is_dumped_as_pydantic_would():
    result = _envelope(masking={"EMAIL_ADDRESS": 2})
    structured = structured_content(result)
    assert structured == result.model_dump(mode="json", by_alias=True)
    assert structured["rows"] is result.rows  # not copied, not walked
    assert ExecOut.JSON_READY == frozenset({"rows"})


def test_no_rows_stays_null():
    result = _envelope(rows=None, row_count=None)
    assert structured_content(result) == result.model_dump(mode="json", by_alias=True)
    assert structured_content(result)["rows"] is None


def test_a_shape_without_json_ready_fields_is_dumped_whole():
    page = OffsetPage(total=3, has_next_page=False, next_offset=None)
    assert structured_content(page) == page.model_dump(mode="json", by_alias=True)
