"""The masked input preview of session lists: the shape of a statement, never its values."""

from __future__ import annotations

from sessions.services import input_preview


def test_literals_and_long_numbers_become_question_marks():
    text = "select * from cards where number = 4111111111111111 and owner = 'Ann O''Neil' and id = 7"
    assert input_preview(text) == "select * from cards where number = ? and owner = ? and id = 7"


def test_dollar_quoted_and_unterminated_literals_are_masked_too():
    assert input_preview("select $$secret body$$, 1") == "select ?, 1"
    assert input_preview("select 'never closed") == "select ?"


def test_an_input_holding_a_secret_is_not_previewed_at_all():
    preview = input_preview("alter user app with password = 'S3cr3t-Value-99'")
    assert "S3cr3t" not in preview and "open the session" in preview


def test_whitespace_is_collapsed_and_long_inputs_cut():
    assert input_preview("select\n\n  1") == "select 1"
    long = "select " + ", ".join(f"col{i}" for i in range(200))
    assert len(input_preview(long)) == 200 and input_preview(long).endswith("…")
