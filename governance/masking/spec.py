"""The masking vocabulary (entities, methods, limits) and spec validation (`validate_spec`)."""

from __future__ import annotations

import logging
import re

import regex

from governance.errors import InvalidInput

logger = logging.getLogger("governance.masking")

# Presidio's predefined pattern recognizers that its default registry enables for English.
SUPPORTED_ENTITIES: tuple[str, ...] = (
    "CREDIT_CARD",
    "CRYPTO",
    "DATE_TIME",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "MEDICAL_LICENSE",
    "PHONE_NUMBER",
    "UK_NHS",
    "URL",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "US_ITIN",
    "US_PASSPORT",
    "US_SSN",
    "UUID",
)
NER_ENTITIES = ("PERSON", "LOCATION", "NRP", "ORGANIZATION")
METHODS = ("redact", "pseudonym", "partial")  # strictest first
COLUMN_ENTITY = "COLUMN"
ERROR_ENTITY = "MASKING_ERROR"

DEFAULT_THRESHOLD = 0.5
DEFAULT_KEEP_LAST = 4
MAX_KEEP_LAST = 32
DEFAULT_CUSTOM_SCORE = 1.0

_STRICTNESS = {"redact": 3, "pseudonym": 2, "partial": 1}
_SPEC_FIELDS = (
    "entities",
    "custom",
    "columns",
    "column_types",
    "score_threshold",
    "method",
    "keep_last",
    "best_effort",
)
_CUSTOM_FIELDS = ("name", "regex", "deny_list", "score")
_CUSTOM_NAME = re.compile(r"[A-Z][A-Z0-9_]{1,49}")
_RESERVED_NAMES = frozenset(SUPPORTED_ENTITIES) | frozenset(NER_ENTITIES) | {COLUMN_ENTITY, ERROR_ENTITY}
_MAX_CUSTOM = 50
_MAX_COLUMNS = 100
_MAX_REGEX_LEN = 2000
_MAX_DENY_TERMS = 10_000
_MAX_DENY_TERM_LEN = 256

# Presidio's PatternRecognizer default flags (custom recognizers use them too).
_PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
# Presidio's LemmaContextAwareEnhancer defaults.
_CONTEXT_FACTOR = 0.35
_CONTEXT_MIN_SCORE = 0.4
_CONTEXT_PREFIX_WORDS = 5
_MAX_SCORE = 1.0

_SPACY_EN_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")

# Time budget for one regular expression over one value (seconds): a base plus 10 microseconds per
# character, so a pathological custom regex fails the value (closed) instead of stalling the gateway.
_REGEX_TIMEOUT = 1.0
_REGEX_TIMEOUT_PER_CHAR = 1e-5

# Per-value cache: entries per Masker, and the longest value worth caching (a Masker may live as
# long as its connection's rules, so this bounds its memory to a few MB). A column (or JSON key,
# or free text) whose values rarely repeat stops being cached: after _CACHE_PROBE lookups with
# fewer than _CACHE_MIN_HIT_RATE hits, caching would only cost time.
_CACHE_ENTRIES = 20_000
_CACHE_VALUE_MAX_LEN = 128
_CONTEXTS_KEPT = 10_000  # column names / keys remembered per Masker (for context and cache use)
_CACHE_PROBE = 2000
_CACHE_MIN_HIT_RATE = 0.05


class MaskingError(Exception):
    """Masking itself failed and no spec allowed best effort. The message never holds a value."""


# --- spec validation ---------------------------------------------------------------------------


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number between 0 and 1")
    if not 0 <= value <= 1:
        raise InvalidInput(f"{field} must be between 0 and 1")
    return float(value)


def _compile(pattern: str, flags: int, field: str):
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput(f"{field} must be a non-empty string")
    if len(pattern) > _MAX_REGEX_LEN:
        raise InvalidInput(f"{field} is longer than {_MAX_REGEX_LEN} characters")
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"{field} is not a valid regular expression: {exc}") from None


def _deny_list_regex(terms: list[str]) -> str:
    """Presidio's PatternRecognizer._deny_list_to_regex."""
    escaped = [regex.escape(term) for term in terms]
    return r"(?:^|(?<=\W))(" + "|".join(escaped) + r")(?:(?=\W)|$)"


def validate_spec(spec: dict) -> dict:
    """Validate and normalise one masking rule; raise InvalidInput naming the first bad field.

    spec = {
      "entities": ["EMAIL_ADDRESS", ...],     # SUPPORTED_ENTITIES, or NER_ENTITIES (need a model)
      "custom": [{"name": "EMPLOYEE_ID", "regex": "E\\\\d{6}", "score": 0.9},
                 {"name": "PROJECT", "deny_list": ["apollo"], "score": 1.0}],
      "columns": ["(?i)e?mail|phone|ssn"],    # searched in SQL column names (and JSON keys)
      "score_threshold": 0.5,                 # 0..1
      "method": "redact" | "partial" | "pseudonym",
      "keep_last": 4,                         # for partial, 0..32
      "best_effort": False,
    }
    Custom regexes and deny lists use Presidio's flags (case-insensitive, DOTALL, MULTILINE); a
    custom score defaults to 1.0 and must reach the rule's threshold. The result has every field.
    """
    if not isinstance(spec, dict):
        raise InvalidInput("a masking spec must be an object")
    unknown = sorted(str(k) for k in spec if k not in _SPEC_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown masking spec field {unknown[0]!r}; allowed: {', '.join(_SPEC_FIELDS)}")

    entities = spec.get("entities")
    entities = [] if entities is None else entities
    if not isinstance(entities, list | tuple):
        raise InvalidInput("entities must be a list of entity names")
    known = set(SUPPORTED_ENTITIES) | set(NER_ENTITIES)
    out_entities: list[str] = []
    for i, name in enumerate(entities):
        if not isinstance(name, str) or name not in known:
            raise InvalidInput(
                f"entities[{i}] {name!r} is not a supported entity; supported: "
                f"{', '.join(SUPPORTED_ENTITIES)}; with a spaCy model also {', '.join(NER_ENTITIES)}"
            )
        if name not in out_entities:
            out_entities.append(name)

    threshold = spec.get("score_threshold")
    threshold = DEFAULT_THRESHOLD if threshold is None else _number(threshold, "score_threshold")

    method = spec.get("method")
    method = "redact" if method is None else method
    if method not in METHODS:
        raise InvalidInput(f"method must be one of: redact, partial, pseudonym (got {method!r})")

    keep_last = spec.get("keep_last")
    keep_last = DEFAULT_KEEP_LAST if keep_last is None else keep_last
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or not 0 <= keep_last <= MAX_KEEP_LAST:
        raise InvalidInput(f"keep_last must be an integer between 0 and {MAX_KEEP_LAST}")

    best_effort = spec.get("best_effort")
    best_effort = False if best_effort is None else best_effort
    if not isinstance(best_effort, bool):
        raise InvalidInput("best_effort must be true or false")

    custom = spec.get("custom")
    custom = [] if custom is None else custom
    if not isinstance(custom, list | tuple):
        raise InvalidInput("custom must be a list of recognizers")
    if len(custom) > _MAX_CUSTOM:
        raise InvalidInput(f"custom: at most {_MAX_CUSTOM} recognizers per rule")
    out_custom: list[dict] = []
    seen: set[str] = set()
    for i, item in enumerate(custom):
        where = f"custom[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with a name and a regex or a deny_list")
        bad = sorted(str(k) for k in item if k not in _CUSTOM_FIELDS)
        if bad:
            raise InvalidInput(f"unknown field {where}.{bad[0]}; allowed: {', '.join(_CUSTOM_FIELDS)}")
        name = item.get("name")
        if not isinstance(name, str) or not _CUSTOM_NAME.fullmatch(name):
            raise InvalidInput(f"{where}.name must match [A-Z][A-Z0-9_]{{1,49}} (got {name!r})")
        if name in _RESERVED_NAMES:
            raise InvalidInput(f"{where}.name {name!r} is reserved for a built-in entity")
        if name in seen:
            raise InvalidInput(f"{where}.name {name!r} is used twice in this rule")
        seen.add(name)
        has_regex, has_deny = item.get("regex") is not None, item.get("deny_list") is not None
        if has_regex == has_deny:
            raise InvalidInput(f"{where} needs exactly one of regex or deny_list")
        score = item.get("score")
        score = DEFAULT_CUSTOM_SCORE if score is None else _number(score, f"{where}.score")
        if score == 0 or score < threshold:
            raise InvalidInput(
                f"{where}.score ({score:g}) is below score_threshold ({threshold:g}), so it would never mask anything"
            )
        entry: dict = {"name": name, "score": score}
        if has_regex:
            _compile(item["regex"], _PRESIDIO_FLAGS, f"{where}.regex")
            entry["regex"] = item["regex"]
        else:
            terms = item["deny_list"]
            if not isinstance(terms, list | tuple) or not terms:
                raise InvalidInput(f"{where}.deny_list must be a non-empty list of strings")
            if len(terms) > _MAX_DENY_TERMS:
                raise InvalidInput(f"{where}.deny_list: at most {_MAX_DENY_TERMS} terms")
            for j, term in enumerate(terms):
                if not isinstance(term, str) or not term.strip():
                    raise InvalidInput(f"{where}.deny_list[{j}] must be a non-empty string")
                if len(term) > _MAX_DENY_TERM_LEN:
                    raise InvalidInput(
                        f"{where}.deny_list[{j}] is longer than {_MAX_DENY_TERM_LEN} characters"
                    )
            entry["deny_list"] = list(dict.fromkeys(terms))
        out_custom.append(entry)

    columns = spec.get("columns")
    columns = [] if columns is None else columns
    if not isinstance(columns, list | tuple):
        raise InvalidInput("columns must be a list of regular expressions")
    if len(columns) > _MAX_COLUMNS:
        raise InvalidInput(f"columns: at most {_MAX_COLUMNS} patterns per rule")
    for i, pattern in enumerate(columns):
        _compile(pattern, 0, f"columns[{i}]")

    column_types = spec.get("column_types")
    column_types = {} if column_types is None else column_types
    if not isinstance(column_types, dict):
        raise InvalidInput(
            'column_types must map column regexes to entity names ({"(?i)^iban$": "IBAN_CODE"})'
        )
    if len(column_types) > _MAX_COLUMNS:
        raise InvalidInput(f"column_types: at most {_MAX_COLUMNS} patterns per rule")
    typed_known = known | {c["name"] for c in out_custom}
    for pattern, entity in column_types.items():
        _compile(pattern, 0, f"column_types[{pattern!r}]")
        if not isinstance(entity, str) or entity not in typed_known:
            raise InvalidInput(
                f"column_types[{pattern!r}] must name a supported entity or a custom recognizer of this rule"
            )

    if not out_entities and not out_custom and not columns and not column_types:
        raise InvalidInput("a masking spec needs at least one of entities, custom, columns or column_types")
    return {
        "entities": out_entities,
        "custom": out_custom,
        "columns": list(columns),
        "column_types": dict(column_types),
        "score_threshold": threshold,
        "method": method,
        "keep_last": keep_last,
        "best_effort": best_effort,
    }
