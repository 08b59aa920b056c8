"""The masking engine (governance.masking): detection, methods, rules, failure, and equivalence
with Presidio's own AnalyzerEngine. Pure: no database, no network."""

from __future__ import annotations

import decimal
import hashlib
import hmac
import logging
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from governance.errors import InvalidInput
from governance.masking import (
    NER_ENTITIES,
    SUPPORTED_ENTITIES,
    Masker,
    MaskingError,
    ner_available,
    validate_spec,
)
from governance.masking import detectors as masking_detectors
from governance.masking import masker as masking_masker
from governance.masking import recognizers as masking_recognizers

ROOT = Path(__file__).resolve().parent.parent
KEY = b"test-key-0123456789abcdef0123456"
OTHER_KEY = b"another-key-0123456789abcdef0123"


@pytest.fixture(scope="session", autouse=True)
def _stop_exec_pool():
    """conftest's session fixture of the same name sets up the test database; this module needs
    none, so it is replaced here (for this module only)."""
    yield


def masker(*specs: dict, key: bytes = KEY) -> Masker:
    return Masker([validate_spec(s) for s in specs], key=key)


# One value per supported entity, the threshold its context-free Presidio score needs, and the
# score itself (checked against Presidio below).
SAMPLES = {
    "CREDIT_CARD": ("4111 1111 1111 1111", 0.5),
    "CRYPTO": ("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", 0.5),
    "DATE_TIME": ("2024-03-05", 0.5),
    "EMAIL_ADDRESS": ("jane.doe@example.com", 0.5),
    "IBAN_CODE": ("GB82 WEST 1234 5698 7654 32", 0.5),
    "IP_ADDRESS": ("192.168.10.23", 0.5),
    "MAC_ADDRESS": ("00:1A:2B:3C:4D:5E", 0.5),
    "MEDICAL_LICENSE": ("BB1388568", 0.5),
    "PHONE_NUMBER": ("+1 212-555-0147", 0.4),
    "UK_NHS": ("943 476 5919", 0.5),
    "URL": ("https://www.example.com/path", 0.5),
    "US_BANK_NUMBER": ("12345678901", 0.05),
    "US_DRIVER_LICENSE": ("A1234567", 0.3),
    "US_ITIN": ("912-70-1234", 0.5),
    "US_PASSPORT": ("A12345678", 0.1),
    "US_SSN": ("219-09-9999", 0.5),
    "UUID": ("550e8400-e29b-41d4-a716-446655440000", 0.5),
}


def test_supported_entities_are_presidios_default_english_pattern_recognizers():
    required = {
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "US_SSN",
        "CRYPTO",
        "URL",
        "US_BANK_NUMBER",
        "US_DRIVER_LICENSE",
        "US_PASSPORT",
        "US_ITIN",
        "UK_NHS",
        "MEDICAL_LICENSE",
        "DATE_TIME",
    }
    assert required <= set(SUPPORTED_ENTITIES)
    assert set(SAMPLES) == set(SUPPORTED_ENTITIES)
    assert NER_ENTITIES == ("PERSON", "LOCATION", "NRP", "ORGANIZATION")
    assert not set(NER_ENTITIES) & set(SUPPORTED_ENTITIES)


# --- validation --------------------------------------------------------------------------------


def test_validate_spec_fills_defaults_and_dedupes():
    spec = validate_spec({"entities": ["EMAIL_ADDRESS", "EMAIL_ADDRESS", "PERSON"]})
    assert spec == {
        "entities": ["EMAIL_ADDRESS", "PERSON"],
        "custom": [],
        "columns": [],
        "column_types": {},
        "score_threshold": 0.5,
        "method": "redact",
        "keep_last": 4,
        "best_effort": False,
    }
    custom = validate_spec({"custom": [{"name": "EMPLOYEE_ID", "regex": r"E\d{6}"}]})["custom"]
    assert custom == [{"name": "EMPLOYEE_ID", "score": 1.0, "regex": r"E\d{6}"}]
    assert validate_spec(validate_spec({"columns": ["ssn"], "method": "partial"}))["method"] == "partial"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nope", "must be an object"),
        ({}, "at least one of entities, custom, columns or column_types"),
        ({"entities": []}, "at least one of"),
        ({"entities": ["EMAIL_ADDRESS"], "colour": 1}, "unknown masking spec field 'colour'"),
        ({"entities": "EMAIL_ADDRESS"}, "entities must be a list"),
        ({"entities": ["EMAIL_ADDRESS", "SHOE_SIZE"]}, "entities[1] 'SHOE_SIZE' is not a supported entity"),
        ({"entities": ["EMAIL_ADDRESS"], "score_threshold": 1.5}, "score_threshold must be between 0 and 1"),
        ({"entities": ["EMAIL_ADDRESS"], "score_threshold": "high"}, "score_threshold must be a number"),
        ({"entities": ["EMAIL_ADDRESS"], "score_threshold": True}, "score_threshold must be a number"),
        ({"entities": ["EMAIL_ADDRESS"], "method": "shred"}, "method must be one of"),
        ({"entities": ["EMAIL_ADDRESS"], "keep_last": 33}, "keep_last must be an integer between 0 and 32"),
        ({"entities": ["EMAIL_ADDRESS"], "keep_last": -1}, "keep_last"),
        ({"entities": ["EMAIL_ADDRESS"], "best_effort": "yes"}, "best_effort must be true or false"),
        ({"custom": "x"}, "custom must be a list"),
        ({"custom": [{"name": "employee", "regex": "x"}]}, "custom[0].name must match"),
        ({"custom": [{"name": "X", "regex": "x"}]}, "custom[0].name must match"),
        ({"custom": [{"name": "EMAIL_ADDRESS", "regex": "x"}]}, "custom[0].name 'EMAIL_ADDRESS' is reserved"),
        ({"custom": [{"name": "COLUMN", "regex": "x"}]}, "reserved"),
        (
            {"custom": [{"name": "AA", "regex": "x"}, {"name": "AA", "regex": "y"}]},
            "custom[1].name 'AA' is used twice",
        ),
        ({"custom": [{"name": "AA"}]}, "custom[0] needs exactly one of regex or deny_list"),
        ({"custom": [{"name": "AA", "regex": "x", "deny_list": ["y"]}]}, "exactly one of"),
        ({"custom": [{"name": "AA", "regex": "x", "flags": 1}]}, "unknown field custom[0].flags"),
        (
            {"custom": [{"name": "AA", "regex": "E(\\d"}]},
            "custom[0].regex is not a valid regular expression: ",
        ),
        ({"custom": [{"name": "AA", "deny_list": []}]}, "custom[0].deny_list must be a non-empty list"),
        (
            {"custom": [{"name": "AA", "deny_list": ["ok", " "]}]},
            "custom[0].deny_list[1] must be a non-empty",
        ),
        ({"custom": [{"name": "AA", "regex": "x", "score": 1.2}]}, "custom[0].score must be between 0 and 1"),
        (
            {"custom": [{"name": "AA", "regex": "x", "score": 0.3}], "score_threshold": 0.5},
            "custom[0].score (0.3) is below score_threshold (0.5)",
        ),
        ({"columns": "ssn"}, "columns must be a list"),
        ({"columns": ["ok", "(unclosed"]}, "columns[1] is not a valid regular expression: "),
        ({"columns": [""]}, "columns[0] must be a non-empty string"),
    ],
)
def test_validate_spec_names_the_bad_field(spec, message):
    with pytest.raises(InvalidInput) as info:
        validate_spec(spec)
    assert message in info.value.message


def test_an_invalid_stored_spec_fails_the_masker_closed():
    with pytest.raises(MaskingError, match="masking rule #2 is invalid: entities"):
        Masker([{"entities": ["EMAIL_ADDRESS"]}, {"entities": ["NOPE"]}], key=KEY)
    with pytest.raises(ValueError):
        Masker([], key=b"")


# --- detection of every supported entity ----------------------------------------------------------


@pytest.mark.parametrize("entity", SUPPORTED_ENTITIES)
def test_every_supported_entity_is_masked_in_a_cell_and_in_text(entity):
    value, threshold = SAMPLES[entity]
    m = masker({"entities": [entity], "score_threshold": threshold})
    rows, counts = m.mask_rows(["value"], [[value], [None]])
    assert rows == [[f"<{entity}>"], [None]]
    assert counts == {entity: 1}
    text, counts = m.mask_text(f"Ticket 7: the value is {value} , see above.")
    assert text == f"Ticket 7: the value is <{entity}> , see above."
    assert counts == {entity: 1}


def test_all_entities_at_once_in_free_text():
    m = masker({"entities": list(SUPPORTED_ENTITIES), "score_threshold": 0.5})
    text = (
        "Jane (jane.doe@example.com) paid with 4111-1111-1111-1111 from GB82WEST12345698765432; "
        "login from 10.0.0.7; SSN 219-09-9999; wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyT."
    )
    masked, counts = m.mask_text(text)
    assert masked == (
        "Jane (<EMAIL_ADDRESS>) paid with <CREDIT_CARD> from <IBAN_CODE>; "
        "login from <IP_ADDRESS>; SSN <US_SSN>; wallet <CRYPTO>."
    )
    assert counts == {
        "EMAIL_ADDRESS": 1,
        "CREDIT_CARD": 1,
        "IBAN_CODE": 1,
        "IP_ADDRESS": 1,
        "US_SSN": 1,
        "CRYPTO": 1,
    }


@pytest.mark.parametrize(
    "value, entity",
    [
        ("4111111111111112", "CREDIT_CARD"),  # a 16-digit order id that fails Luhn
        ("Order 3284642892693710 shipped", "CREDIT_CARD"),
        ("DE89370400440532013001", "IBAN_CODE"),  # IBAN-shaped, bad checksum
        ("GB82 WEST 1234 5698 7654 33", "IBAN_CODE"),
        ("000-12-3456", "US_SSN"),  # SSNs the SSA never issues
        ("666-12-3456", "US_SSN"),
        ("078-05-1120", "US_SSN"),  # the canonical sample SSN
        ("user@host.invalidtld", "EMAIL_ADDRESS"),  # no public suffix
        ("1BoatSLRHtKNngkdXEeobR76b53LETtpyX", "CRYPTO"),  # base58 checksum fails
        ("00000000-0000-0000-0000-000000000000", "UUID"),  # the nil UUID
        ("943 476 5918", "UK_NHS"),  # mod 11 fails
        ("AB1234567", "MEDICAL_LICENSE"),  # DEA checksum fails
        ("999.1.2.3", "IP_ADDRESS"),
    ],
)
def test_look_alikes_are_left_alone(value, entity):
    for m in (masker({"entities": [entity]}), masker({"entities": list(SUPPORTED_ENTITIES)})):
        found = {f[3] for f in m._analyze(value, None)}
        assert entity not in found
    m = masker({"entities": [entity], "score_threshold": 0.0})
    assert m.mask_text(value) == (value, {})
    assert m.mask_rows(["v"], [[value]]) == ([[value]], {})


def test_version_numbers_are_ip_addresses_only_when_ip_is_requested():
    text = "agent version 10.1.2.3 installed"
    assert masker({"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "US_SSN"]}).mask_text(text) == (text, {})
    # Presidio's IpRecognizer flags it too: expected when IP_ADDRESS is asked for.
    assert masker({"entities": ["IP_ADDRESS"]}).mask_text(text) == (
        "agent version <IP_ADDRESS> installed",
        {"IP_ADDRESS": 1},
    )


def test_numbers_in_cells():
    m = masker({"entities": ["CREDIT_CARD", "US_SSN"]})
    rows, counts = m.mask_rows(
        ["a", "b", "c", "d", "e", "f", "g"],
        [
            [
                4111111111111111,
                4111111111111112,
                219099999,
                None,
                True,
                3.5,
                decimal.Decimal("4111111111111111"),
            ]
        ],
    )
    # The int card number is found in str(value) and becomes a string; the non-Luhn one stays an
    # int; a bare 9-digit number scores 0.05 as an SSN (below the threshold); None and bools stay.
    assert rows == [["<CREDIT_CARD>", 4111111111111112, 219099999, None, True, 3.5, "<CREDIT_CARD>"]]
    assert counts == {"CREDIT_CARD": 2}


def test_mask_rows_copies_and_counts_across_rows():
    m = masker({"entities": ["EMAIL_ADDRESS"]})
    rows = [["a@example.com", "x"], ["b@example.com c@example.org", None], ("d@example.net", 1)]
    original = [list(r) for r in rows]
    out, counts = m.mask_rows(["e", "n"], rows)
    assert out == [
        ["<EMAIL_ADDRESS>", "x"],
        ["<EMAIL_ADDRESS> <EMAIL_ADDRESS>", None],
        ["<EMAIL_ADDRESS>", 1],
    ]
    assert counts == {"EMAIL_ADDRESS": 4}
    assert [list(r) for r in rows] == original
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in counts.items())


def test_counts_never_hold_values():
    m = masker({"entities": ["EMAIL_ADDRESS"], "method": "pseudonym"}, {"columns": ["secret"]})
    _, counts = m.mask_rows(["secret", "note"], [["hunter2", "mail jane.doe@example.com"]])
    assert counts == {"COLUMN": 1, "EMAIL_ADDRESS": 1}
    assert "hunter2" not in repr(counts) and "jane" not in repr(counts)


# --- methods -----------------------------------------------------------------------------------


def test_partial_keeps_the_last_characters_and_the_separators():
    m = masker({"entities": ["CREDIT_CARD", "EMAIL_ADDRESS", "US_SSN"], "method": "partial"})
    assert m.mask_text("4111-1111-1111-1111")[0] == "****-****-****-1111"
    assert m.mask_text("4111 1111 1111 1111")[0] == "**** **** **** 1111"
    assert m.mask_text("card 4111111111111111.")[0] == "card ************1111."
    assert m.mask_text("jane.doe@example.com")[0] == "****.***@******e.com"
    assert m.mask_text("219-09-9999")[0] == "***-**-9999"
    two = masker({"entities": ["US_SSN"], "method": "partial", "keep_last": 0})
    assert two.mask_text("219-09-9999")[0] == "***-**-****"


def test_partial_stars_short_values_whole():
    m = masker({"custom": [{"name": "CODE", "regex": r"\bK[0-9-]+"}], "method": "partial", "keep_last": 4})
    assert m.mask_text("K1-2345")[0] == "*******"  # 6 letters and digits <= 4 + 2
    assert m.mask_text("K12-34567")[0] == "***-*4567"


def test_pseudonyms_are_keyed_deterministic_and_normalised():
    m = masker({"entities": ["EMAIL_ADDRESS", "CREDIT_CARD"], "method": "pseudonym"})
    rows, counts = m.mask_rows(
        ["who", "card"],
        [["Jane.Doe@Example.com", "4111 1111 1111 1111"], ["jane.doe@example.com", "4111-1111-1111-1111"]],
    )
    assert re.fullmatch(r"<EMAIL_ADDRESS:[0-9a-f]{10}>", rows[0][0])
    assert rows[0][0] == rows[1][0]  # same address, any case: joinable
    assert rows[0][1] == rows[1][1]  # same card, any separators
    expected = hmac.new(KEY, b"CREDIT_CARD:4111111111111111", hashlib.sha256).hexdigest()[:10]
    assert rows[0][1] == f"<CREDIT_CARD:{expected}>"
    assert counts == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 2}
    # Same key, another Masker and another call: the same pseudonym; in free text too.
    again = masker({"entities": ["EMAIL_ADDRESS"], "method": "pseudonym"})
    assert again.mask_text("write to jane.doe@example.com")[0] == f"write to {rows[0][0]}"
    # Another key: unrelated pseudonyms.
    other = masker({"entities": ["EMAIL_ADDRESS"], "method": "pseudonym"}, key=OTHER_KEY)
    assert other.mask_text("jane.doe@example.com")[0] != rows[0][0]
    # Different values differ.
    assert m.mask_text("john.doe@example.com")[0] != rows[0][0]


def test_the_strictest_method_lowest_threshold_and_union_win_across_specs():
    partial = {"entities": ["EMAIL_ADDRESS", "US_SSN"], "method": "partial", "keep_last": 6}
    pseudonym = {"entities": ["EMAIL_ADDRESS"], "method": "pseudonym"}
    m = masker(partial, pseudonym, {"entities": ["US_SSN"], "method": "partial", "keep_last": 2})
    text, counts = m.mask_text("jane.doe@example.com 219-09-9999")
    assert re.fullmatch(r"<EMAIL_ADDRESS:[0-9a-f]{10}> \*\*\*-\*\*-\*\*99", text)
    assert counts == {"EMAIL_ADDRESS": 1, "US_SSN": 1}
    assert masker(partial, {"entities": ["US_SSN"]}).mask_text("219-09-9999")[0] == "<US_SSN>"
    # Phone numbers score 0.4 without context: the spec with the lower threshold brings them in.
    both = masker({"entities": ["PHONE_NUMBER"]}, {"entities": ["PHONE_NUMBER"], "score_threshold": 0.4})
    assert both.mask_text("reach her on +1 212-555-0147")[0] == "reach her on <PHONE_NUMBER>"


# --- thresholds and context --------------------------------------------------------------------


def test_threshold_and_context_decide_phone_numbers():
    text = "reach her on +1 212-555-0147 today"
    assert masker({"entities": ["PHONE_NUMBER"]}).mask_text(text) == (text, {})  # 0.4 < 0.5
    assert masker({"entities": ["PHONE_NUMBER"], "score_threshold": 0.4}).mask_text(text)[1] == {
        "PHONE_NUMBER": 1
    }
    # A context word before it (Presidio: +0.35) ...
    assert masker({"entities": ["PHONE_NUMBER"]}).mask_text("her mobile: +1 212-555-0147")[1] == {
        "PHONE_NUMBER": 1
    }
    # ... but "call" is a spaCy stop word, so it is no context (as in Presidio with a model).
    assert masker({"entities": ["PHONE_NUMBER"]}).mask_text("call +1 212-555-0147")[1] == {}
    # The column name is context, as AnalyzerEngine.analyze(context=[...]) uses it.
    m = masker({"entities": ["PHONE_NUMBER"]})
    assert m.mask_rows(["phone", "other"], [["+1 212-555-0147", "+1 212-555-0147"]])[0] == [
        ["<PHONE_NUMBER>", "+1 212-555-0147"]
    ]


def test_threshold_filters_weak_patterns():
    value = "12345678901"  # US_BANK_NUMBER at 0.05
    assert masker({"entities": ["US_BANK_NUMBER"]}).mask_text(value) == (value, {})
    assert masker({"entities": ["US_BANK_NUMBER"], "score_threshold": 0.05}).mask_text(value)[1] == {
        "US_BANK_NUMBER": 1
    }
    assert masker({"entities": ["US_SSN"], "score_threshold": 0.8}).mask_text("219-09-9999")[1] == {}


# --- column rules ------------------------------------------------------------------------------


def test_column_rules_mask_whole_cells_first():
    m = masker({"entities": ["CREDIT_CARD"]}, {"columns": ["(?i)e?mail|phone|ssn"]})
    rows, counts = m.mask_rows(
        ["id", "Email_Address", "phone", "SSN", "card"],
        [
            [1, "n/a", 2125550147, True, "4111 1111 1111 1111"],
            [2, None, "4111 1111 1111 1111", "", "none"],
        ],
    )
    assert rows == [
        [1, "<COLUMN>", "<COLUMN>", "<COLUMN>", "<CREDIT_CARD>"],
        [2, None, "<COLUMN>", "<COLUMN>", "none"],
    ]
    assert counts == {"COLUMN": 5, "CREDIT_CARD": 1}


def test_column_rules_use_the_strictest_method_and_their_own():
    m = masker(
        {"columns": ["token"], "method": "partial", "keep_last": 2},
        {"columns": ["^secret"], "method": "pseudonym"},
        {"columns": ["secret_token"], "method": "partial"},
    )
    rows, _ = m.mask_rows(["api_token", "secret_token"], [["abcdef123456", "abcdef123456"]])
    assert rows[0][0] == "**********56"
    expected = hmac.new(KEY, b"COLUMN:abcdef123456", hashlib.sha256).hexdigest()[:10]
    assert rows[0][1] == f"<COLUMN:{expected}>"


# --- custom recognizers ------------------------------------------------------------------------


def test_custom_regex_and_deny_list():
    m = masker(
        {
            "custom": [
                {"name": "EMPLOYEE_ID", "regex": r"\bE\d{6}\b", "score": 0.9},
                {"name": "PROJECT", "deny_list": ["apollo", "gemini x"], "score": 1.0},
            ]
        }
    )
    text, counts = m.mask_text("E123456 and e654321 on Project Apollo; apollonia and Gemini X too; E1234567")
    # Presidio's flags: case-insensitive; deny-list terms only as whole words.
    assert (
        text == "<EMPLOYEE_ID> and <EMPLOYEE_ID> on Project <PROJECT>; apollonia and <PROJECT> too; E1234567"
    )
    assert counts == {"EMPLOYEE_ID": 2, "PROJECT": 2}


def test_custom_entities_use_their_specs_method():
    m = masker({"custom": [{"name": "EMPLOYEE_ID", "regex": r"E\d{6}"}], "method": "partial", "keep_last": 2})
    assert m.mask_text("id E123456")[0] == "id *****56"


# --- overlaps ----------------------------------------------------------------------------------


def test_overlaps_keep_the_highest_score():
    m = masker({"entities": ["EMAIL_ADDRESS", "URL"]})
    # The domain inside the address is also a URL (0.5); the address (1.0) wins, counted once.
    assert m.mask_text("jane.doe@example.com") == ("<EMAIL_ADDRESS>", {"EMAIL_ADDRESS": 1})
    assert m.mask_text("see www.example.com/x") == ("see <URL>", {"URL": 1})


def test_overlaps_then_the_longest_span_and_the_union_is_masked():
    m = masker(
        {
            "custom": [
                {"name": "SHORT", "regex": "ABC", "score": 0.9},
                {"name": "LONG", "regex": "ABC-123", "score": 0.9},
                {"name": "LEFT", "regex": "AAA-BBB", "score": 0.8},
                {"name": "RIGHT", "regex": "BBB-CCCC", "score": 0.8},
                {"name": "STRONG", "regex": "XY", "score": 1.0},
                {"name": "WEAK", "regex": "XYZ-987", "score": 0.7},
            ]
        }
    )
    assert m.mask_text("id ABC-123 end") == ("id <LONG> end", {"LONG": 1})
    # Same score, RIGHT is longer; the whole overlapping stretch is masked: nothing of it is left.
    assert m.mask_text("x AAA-BBB-CCCC y") == ("x <RIGHT> y", {"RIGHT": 1})
    assert m.mask_text("XYZ-987") == ("<STRONG>", {"STRONG": 1})


# --- JSON --------------------------------------------------------------------------------------


def test_mask_json_masks_every_string_and_number_inside():
    m = masker({"entities": ["EMAIL_ADDRESS", "CREDIT_CARD", "PHONE_NUMBER"]}, {"columns": ["^ssn$"]})
    value = {
        "table": "customers",
        "comment": "owner jane.doe@example.com",
        "rows": [
            {
                "card": 4111111111111111,
                "phone": "+1 212-555-0147",
                "ssn": {"v": "219-09-9999", "n": [1, None, False]},
            },
            ["x", ("4111 1111 1111 1111", True)],
        ],
        "jane.doe@example.com": 3,
        7: None,
    }
    out, counts = m.mask_json(value)
    assert out == {
        "table": "customers",
        "comment": "owner <EMAIL_ADDRESS>",
        "rows": [
            {
                "card": "<CREDIT_CARD>",
                "phone": "<PHONE_NUMBER>",
                "ssn": {"v": "<COLUMN>", "n": ["<COLUMN>", None, "<COLUMN>"]},
            },
            ["x", ["<CREDIT_CARD>", True]],
        ],
        "<EMAIL_ADDRESS>": 3,
        7: None,
    }
    assert counts == {"EMAIL_ADDRESS": 2, "CREDIT_CARD": 2, "PHONE_NUMBER": 1, "COLUMN": 3}
    assert value["comment"] == "owner jane.doe@example.com"  # the input is not changed


def test_json_cells_in_rows_are_masked_too():
    m = masker({"entities": ["EMAIL_ADDRESS"]})
    rows, counts = m.mask_rows(["doc"], [[{"to": ["a@example.com", "b"]}]])
    assert rows == [[{"to": ["<EMAIL_ADDRESS>", "b"]}]]
    assert counts == {"EMAIL_ADDRESS": 1}


# --- activity, NER -----------------------------------------------------------------------------


def test_no_specs_is_inactive_and_changes_nothing():
    m = Masker([], key=KEY)
    assert not m.active
    rows = [["jane.doe@example.com"]]
    assert m.mask_rows(["e"], rows) == (rows, {})
    assert m.mask_text("jane.doe@example.com") == ("jane.doe@example.com", {})
    assert m.mask_json({"a": "jane.doe@example.com"}) == ({"a": "jane.doe@example.com"}, {})
    assert masker({"entities": ["EMAIL_ADDRESS"]}).active


def test_ner_entities_are_reported_unavailable_without_a_model():
    assert ner_available() is False  # no spaCy model is installed here
    m = masker({"entities": ["PERSON", "EMAIL_ADDRESS", "LOCATION"]})
    assert m.active
    assert m.unavailable_entities == ["LOCATION", "PERSON"]
    assert m.mask_text("Alice Smith, alice@example.com") == (
        "Alice Smith, <EMAIL_ADDRESS>",
        {"EMAIL_ADDRESS": 1},
    )
    assert masker({"entities": ["EMAIL_ADDRESS"]}).unavailable_entities == []


def test_ner_entities_are_used_when_a_model_is_installed(monkeypatch):
    """With a model, spaCy NER runs through Presidio's SpacyNlpEngine and SpacyRecognizer. A blank
    English pipeline with an entity ruler stands in for the model."""
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    def build(name):
        nlp = spacy.blank("en")
        nlp.add_pipe("entity_ruler").add_patterns(
            [{"label": "PERSON", "pattern": "Alice Smith"}, {"label": "GPE", "pattern": "Paris"}]
        )
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": name}])
        engine.nlp = {"en": nlp}
        return engine, SpacyRecognizer(supported_entities=list(NER_ENTITIES))

    monkeypatch.setattr(masking_detectors, "_installed_spacy_model", lambda: "en_fake_model")
    monkeypatch.setattr(masking_detectors, "_build_ner", build)
    monkeypatch.setattr(masking_detectors, "_NER", None)
    assert ner_available()
    m = masker({"entities": ["PERSON", "EMAIL_ADDRESS"]})
    assert m.unavailable_entities == []
    assert m.mask_text("Alice Smith from Paris, alice@example.com") == (
        "<PERSON> from Paris, <EMAIL_ADDRESS>",
        {"PERSON": 1, "EMAIL_ADDRESS": 1},
    )


# --- failing closed ----------------------------------------------------------------------------


def _break_detector(monkeypatch, m: Masker, entity: str) -> None:
    def boom(text, timeout):
        raise RuntimeError(f"cannot handle {text}")

    plan = [(a, b, c, d, boom if det.entity == entity else f, det) for a, b, c, d, f, det in m._plan]
    monkeypatch.setattr(m, "_plan", plan)


def test_analysis_errors_raise_masking_error_without_the_value(monkeypatch):
    m = masker({"entities": ["EMAIL_ADDRESS"]})
    _break_detector(monkeypatch, m, "EMAIL_ADDRESS")
    with pytest.raises(MaskingError) as info:
        m.mask_rows(["contact"], [["jane.doe@example.com"]])
    assert str(info.value) == "masking failed in column 'contact': RuntimeError"
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(MaskingError, match="^masking failed: RuntimeError$"):
        m.mask_text("jane.doe@example.com")


def test_best_effort_withholds_the_value_only_if_every_spec_allows_it(monkeypatch, caplog):
    m = masker({"entities": ["EMAIL_ADDRESS"], "best_effort": True}, {"columns": ["x"], "best_effort": True})
    _break_detector(monkeypatch, m, "EMAIL_ADDRESS")
    with caplog.at_level(logging.WARNING):
        rows, counts = m.mask_rows(["contact", "n"], [["jane.doe@example.com", 5], ["b@example.com", None]])
    assert rows == [["<MASKING_ERROR>", 5], ["<MASKING_ERROR>", None]]
    assert counts == {"MASKING_ERROR": 2}
    assert "jane" not in caplog.text
    assert m.mask_text("x jane.doe@example.com") == ("<MASKING_ERROR>", {"MASKING_ERROR": 1})
    strict = masker({"entities": ["EMAIL_ADDRESS"], "best_effort": True}, {"columns": ["x"]})
    _break_detector(monkeypatch, strict, "EMAIL_ADDRESS")
    with pytest.raises(MaskingError):
        strict.mask_rows(["contact"], [["jane.doe@example.com"]])


def test_a_runaway_custom_regex_fails_closed(monkeypatch):
    monkeypatch.setattr(masking_masker, "_REGEX_TIMEOUT", 0.05)
    m = masker({"custom": [{"name": "BAD", "regex": r"^(a|aa)+$"}]})
    with pytest.raises(MaskingError, match="TimeoutError"):
        m.mask_text("a" * 40 + "b")
    lenient = masker({"custom": [{"name": "BAD", "regex": r"^(a|aa)+$"}], "best_effort": True})
    assert lenient.mask_text("a" * 40 + "b") == ("<MASKING_ERROR>", {"MASKING_ERROR": 1})


def test_a_failing_column_rule_fails_closed(monkeypatch):
    monkeypatch.setattr(masking_masker, "_REGEX_TIMEOUT", 0.05)
    spec = {"entities": ["EMAIL_ADDRESS"], "columns": [r"^(a|aa)+$"]}
    name = "a" * 40 + "b"
    with pytest.raises(MaskingError, match="a column rule failed on column"):
        masker(spec).mask_rows([name], [["x"]])
    rows, counts = masker({**spec, "best_effort": True}).mask_rows([name, "ok"], [["x", "y"]])
    assert rows == [["<COLUMN>", "y"]]
    assert counts == {"COLUMN": 1}


def test_a_masker_is_safe_to_share_between_threads():
    m = masker({"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD"], "method": "pseudonym"})
    rows = [[f"user{i}@example.com", f"+1 212-555-{i:04d}", "4111 1111 1111 1111"] for i in range(300)]
    expected = m.mask_rows(["e", "phone", "c"], rows)
    results = []

    def work():
        results.append(masker(*m._specs).mask_rows(["e", "phone", "c"], rows))
        results.append(m.mask_rows(["e", "phone", "c"], rows))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 8


# --- no network: tldextract --------------------------------------------------------------------


def test_tldextract_uses_only_its_bundled_snapshot(monkeypatch):
    import tldextract.tldextract as tx

    masker({"entities": ["EMAIL_ADDRESS"]}).mask_text("jane.doe@example.com")
    assert tx.TLD_EXTRACTOR.suffix_list_urls == ()  # the shared extractor Presidio calls

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    fresh = masking_recognizers._offline_tldextract()  # builds its list now, from the snapshot
    assert fresh("mail.example.co.uk").suffix == "co.uk"


def test_a_fresh_process_masks_email_without_touching_the_network(tmp_path):
    script = """
import socket, sys, time
attempts = []
def blocked(*args, **kwargs):
    attempts.append(args)
    raise OSError("network disabled in this test")
socket.getaddrinfo = blocked
socket.socket.connect = blocked
start = time.monotonic()
from governance.masking import Masker, validate_spec
m = Masker([validate_spec({"entities": ["EMAIL_ADDRESS"]})], key=b"k" * 32)
print(m.mask_text("mail jane.doe@example.com now")[0])
print(len(attempts), round(time.monotonic() - start, 1))
"""
    env = {"TLDEXTRACT_CACHE": str(tmp_path / "tld-cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    masked, attempts_and_time = done.stdout.strip().splitlines()[-2:]
    assert masked == "mail <EMAIL_ADDRESS> now"
    assert attempts_and_time.split()[0] == "0"
    assert not (tmp_path / "tld-cache").exists()  # nothing cached on disk either


# --- equivalence with Presidio -----------------------------------------------------------------


@pytest.fixture(scope="module")
def presidio():
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, predefined_recognizers
    from presidio_analyzer.nlp_engine import NoOpNlpEngine

    recognizers = [
        getattr(predefined_recognizers, name)() for name in masking_recognizers._RECOGNIZER_CLASSES.values()
    ]
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    return AnalyzerEngine(registry=RecognizerRegistry(recognizers=recognizers), nlp_engine=nlp)


def _luhn(prefix: str, length: int, rnd: random.Random) -> str:
    digits = [int(c) for c in prefix] + [rnd.randrange(10) for _ in range(length - len(prefix) - 1)]
    total = sum(
        (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d for i, d in enumerate(reversed(digits))
    )
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _random_text(rnd: random.Random) -> str:
    d = lambda n: "".join(str(rnd.randrange(10)) for _ in range(n))  # noqa: E731
    parts = [
        lambda: (
            f"{rnd.choice(['jane', 'a.b', 'x_y', 'Zoë'])}{d(2)}@{rnd.choice(['example.com', 'mail.co.uk', 'x.notatld'])}"
        ),
        lambda: (
            rnd.choice(["+1 ", "+44 ", "+49 ", "", "(", "0", "+33 ", "+91 ", "+55 ", "00"])
            + d(3)
            + rnd.choice([") ", "-", " ", ".", ""])
            + d(3)
            + rnd.choice(["-", " ", ""])
            + d(4)
        ),
        lambda: _luhn(rnd.choice(["4", "51", "37", "6011"]), rnd.choice([15, 16]), rnd),
        lambda: d(16),
        lambda: _iban(rnd.choice(["DE", "GB", "FR"]), d(18) if rnd.random() < 0.7 else "NWBK" + d(14)),
        lambda: ".".join(str(rnd.randrange(300)) for _ in range(4)),
        lambda: f"{rnd.randrange(0x10000):x}:{rnd.randrange(0x10000):x}::{rnd.randrange(0x10000):x}",
        lambda: f"{d(3)}-{d(2)}-{d(4)}",
        lambda: f"{d(3)} {d(3)} {d(4)}",
        lambda: d(rnd.randrange(1, 12)),
        lambda: f"{rnd.randrange(1, 13)}/{rnd.randrange(1, 29)}/{rnd.choice(['2024', '99'])}",
        lambda: rnd.choice(["https://www.example.com/a?b=1", "www.test.org", "'http://x.io'", "a.b.c"]),
        lambda: ":".join(f"{rnd.randrange(256):02X}" for _ in range(6)),
        lambda: rnd.choice(["1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "AB1234563", "912-70-1234", "A1234567"]),
        lambda: rnd.choice(
            ["the", "phone", "card", "ssn", "my", "number", "date", ",", "(", "-", ":", "ext. 12"]
        ),
        lambda: rnd.choice(["١٢٣٤٥٦٧٨٩٠١٢٣", "４１１１ １１１１", "Ｋelvin 5"]),
    ]
    return rnd.choice([" ", ", ", "; ", "\n", ""]).join(
        rnd.choice(parts)() for _ in range(rnd.randrange(1, 6))
    )


def _presidio_findings(engine, text, threshold, context):
    found = engine.analyze(
        text, language="en", entities=list(SUPPORTED_ENTITIES), score_threshold=threshold, context=context
    )
    return sorted((r.start, r.end, r.score, r.entity_type) for r in found)


def test_samples_score_as_in_presidio(presidio):
    for entity, (value, threshold) in SAMPLES.items():
        found = presidio.analyze(value, language="en", entities=[entity], score_threshold=0)
        assert [(r.start, r.end) for r in found] == [(0, len(value))], entity
        assert found[0].score >= threshold


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_findings_equal_presidios_on_random_text(presidio, threshold):
    """Same spans, entities and scores as AnalyzerEngine (same recognizers, no NLP model, the
    column name as context), for every supported entity."""
    rnd = random.Random(20261122 + int(threshold * 10))
    m = masker({"entities": list(SUPPORTED_ENTITIES), "score_threshold": threshold})
    for _ in range(250):
        text = _random_text(rnd)
        column = rnd.choice([None, "notes", "phone_number", "card", "ssn", "ip"])
        ours = sorted(m._analyze(text, column, window=False))
        assert ours == _presidio_findings(presidio, text, threshold, [column] if column else None), text


def test_findings_equal_presidios_on_the_bench_table(presidio):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import masking as bench  # bench/masking.py
    finally:
        sys.path.remove(str(ROOT / "bench"))
    m = masker({"entities": list(SUPPORTED_ENTITIES)})
    for row in bench.generate(60, seed=7):
        for column, value in zip(bench.COLUMNS, row, strict=True):
            text = bench.cell_text(value)
            if text:
                expected = _presidio_findings(presidio, text, 0.5, [column])
                assert sorted(m._analyze(text, column.lower(), window=False)) == expected, text


def test_phone_matching_shortcuts_are_exact():
    """The phone fast path against plain PhoneNumberMatcher, on texts built to stress it."""
    import phonenumbers

    detector = masking_recognizers._builtin_detectors()["PHONE_NUMBER"]
    assert detector.fast is not None  # the installed phonenumbers is the one it was checked on
    rnd = random.Random(5)
    alphabet = "0123456789" * 4 + " -.()/+x" + "aE"
    texts = ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(4, 40))) for _ in range(600)]
    texts += [
        "(212) 555-0147",
        "+1 212-555-0147 / +44 20 7946 0958",
        "0044 20 7946 0958",
        "011 44 20 7946 0958",
        "775-45-7502",
        "172.30.51.230",
        "030 901820",
        "+49 30 901820 ext. 12",
        "0800 123 4567",
        "1-800-555-0199",
        "90 21 98765 4321",
    ]
    for text in texts:
        plain = set()
        for region in detector.regions:
            for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=detector.leniency):
                plain.add((match.start, match.end))

        def maximal(spans):
            return {s for s in spans if not any(o != s and o[0] <= s[0] and s[1] <= o[1] for o in spans)}

        fast = {(s, e) for s, e, _, _ in detector.find(text, 1.0)}
        assert fast <= plain, text
        assert maximal(fast) == maximal(plain), text


def test_the_national_prefix_check_equals_libphonenumbers():
    fast = masking_recognizers._builtin_detectors()["PHONE_NUMBER"].fast
    rnd = random.Random(3)
    for code in (1, 44, 49, 33, 972, 91, 55, 39, 7, 86):
        for _ in range(300):
            number = "".join(str(rnd.randrange(10)) for _ in range(rnd.randrange(4, 14)))
            raw = rnd.choice(["", "0", "1", "00", "90"]) + number
            assert fast.prefix_present(code, number, raw) == fast.library_prefix_present(code, number, raw)


def test_preceding_words_boost_as_presidios_context_enhancer():
    """Our preceding-words context equals Presidio's LemmaContextAwareEnhancer fed with the same
    tokens (lower-cased words as lemmas, spaCy's English stop words)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry, predefined_recognizers
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from spacy.lang.en.stop_words import STOP_WORDS

    class Tokens(NlpEngine):
        def load(self):
            pass

        def is_loaded(self):
            return True

        def process_text(self, text, language):
            tokens = list(re.finditer(r"\w+|[^\w\s]", text))
            return NlpArtifacts(
                entities=[],
                tokens=[t.group() for t in tokens],
                tokens_indices=[t.start() for t in tokens],
                lemmas=[t.group().lower() for t in tokens],
                nlp_engine=self,
                language=language,
            )

        def process_batch(self, texts, language, **kwargs):
            return ((t, self.process_text(t, language)) for t in texts)

        def is_stopword(self, word, language):
            return word.lower() in STOP_WORDS

        def is_punct(self, word, language):
            return not re.match(r"\w", word)

        def get_supported_entities(self):
            return []

        def get_supported_languages(self):
            return ["en"]

    recognizers = [
        getattr(predefined_recognizers, name)() for name in masking_recognizers._RECOGNIZER_CLASSES.values()
    ]
    engine = AnalyzerEngine(registry=RecognizerRegistry(recognizers=recognizers), nlp_engine=Tokens())
    m = masker({"entities": list(SUPPORTED_ENTITIES), "score_threshold": 0.0})
    texts = [
        "Please phone back on +1 212-555-0147 after 5pm.",
        "call +1 212-555-0147",
        "my cell number, as agreed: 415 555 0198",
        "numbers: 4111 1111 1111 1111 and 219 09 9999 and 219099999",
        "the account 12345678901 and routing date 3/2024",
        "driver license A1234567 from the permit office, passport A12345678",
        "one two three four five six seven phone eight nine ten 212-555-0147",
        "ip 10.1.2.3 then the website www.example.com and a link http://x.io",
        "tax id 912-70-1234 for the payer",
    ]
    for text in texts:
        expected = sorted(
            (r.start, r.end, r.score, r.entity_type)
            for r in engine.analyze(
                text, language="en", entities=list(SUPPORTED_ENTITIES), score_threshold=0.0
            )
        )
        assert sorted(m._analyze(text, None)) == expected, text


def test_pattern_conditions_name_existing_presidio_patterns():
    """A renamed Presidio pattern would silently lose its condition: notice it."""
    detectors = masking_recognizers._builtin_detectors()
    names = {(e, p.name) for e, d in detectors.items() if e != "PHONE_NUMBER" for p in d.patterns}
    assert set(masking_recognizers._PATTERN_NEEDS) <= names


@pytest.mark.parametrize(
    "value",
    [
        "de89370400440532013000",  # lower(iban)
        "de89-3704-0044-0532-0130-00",  # separators replaced
        "DE89/3704/0044/0532/0130/00",
        "gb82west12345698765432",
    ],
)
def test_case_and_separators_are_normalised_before_recognition(value):
    """Issue 14: a transformed IBAN is still an IBAN to the recognizer."""
    m = Masker([{"entities": ["IBAN_CODE"]}], key=b"k")
    masked, counts = m.mask_text(f"account {value} closed")
    assert counts == {"IBAN_CODE": 1} and value not in masked and masked.startswith("account <IBAN_CODE")


@pytest.mark.parametrize(
    "value", ["order 1234567 shipped", "version 1.2.3.4.5.6.7", "de89 is not 3704 an iban"]
)
def test_normalised_views_do_not_invent_findings(value):
    m = Masker([{"entities": ["IBAN_CODE", "CREDIT_CARD", "US_SSN"]}], key=b"k")
    assert m.mask_text(value) == (value, {})
