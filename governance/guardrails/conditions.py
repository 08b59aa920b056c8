"""Validating guardrail conditions (`validate_conditions`) and compiling their globs, words and
regexes (with the ReDoS guard)."""

from __future__ import annotations

import fnmatch
import re
from functools import lru_cache

from governance.errors import InvalidInput

try:  # Python 3.11+
    from re import _parser as _sre_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_parse as _sre_parser  # type: ignore[no-redef]
from governance.guardrails.normalize import _normalize
from governance.guardrails.vocabulary import (
    _SQL_BOOLS,
    INPUT_CONDITIONS,
    MAX_AFFECTED_ROWS_LIMIT,
    MAX_ITEM_CHARS,
    MAX_LIST_ITEMS,
    MAX_REGEX_CHARS,
    OUTPUT_CONDITIONS,
    RISK_LEVELS,
    SIDE_EFFECTS,
    SQL_CONDITIONS,
    STATEMENT_KINDS,
)

# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def validate_conditions(conditions: dict, *, direction: str) -> dict:
    """Validate and normalize one rule's conditions for direction "input" or "output".

    Raises InvalidInput with a specific message. Returns the normalized dict: every condition of
    the direction present with its default filled in (sql sub-conditions too), kinds lower-cased,
    lists deduplicated in their first-seen order. A rule with no effective condition in this
    direction (nothing given, or only empty lists and false) normalizes to ``{}``.
    """
    if direction not in ("input", "output"):
        raise InvalidInput(f"direction must be 'input' or 'output', not {direction!r}")
    if conditions is None:
        return {}
    if not isinstance(conditions, dict):
        raise InvalidInput(f"{direction} conditions must be an object, not {_type_name(conditions)}")
    allowed = INPUT_CONDITIONS if direction == "input" else OUTPUT_CONDITIONS
    other = OUTPUT_CONDITIONS if direction == "input" else INPUT_CONDITIONS
    for key in conditions:
        if key not in allowed:
            if isinstance(key, str) and key in other:
                raise InvalidInput(
                    f"condition '{key}' applies to {'output' if direction == 'input' else 'input'} only; "
                    f"{direction} conditions are: {', '.join(allowed)}"
                )
            raise InvalidInput(f"unknown condition {_show(key)}; use one of: {', '.join(allowed)}")

    out: dict = {}
    if direction == "input":
        out["sql"] = _validate_sql(conditions.get("sql"))
    out["deny_words"] = _validate_words(conditions.get("deny_words"), "deny_words")
    out["regex"] = _validate_regexes(conditions.get("regex"), "regex")
    if direction == "input" and conditions.get("risk_at_least") is not None:
        level = conditions["risk_at_least"]
        if level not in RISK_LEVELS:
            raise InvalidInput(f"risk_at_least must be one of: {', '.join(RISK_LEVELS)}")
        out["risk_at_least"] = level
    if direction == "output":
        out["secrets"] = _validate_bool(conditions.get("secrets", False), "secrets")

    effective = any(
        (any(v for v in value.values()) if isinstance(value, dict) else bool(value)) for value in out.values()
    )
    return out if effective else {}


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _show(value) -> str:
    text = repr(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 60 else text[:57] + "..."


def _validate_bool(value, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(f"{where} must be true or false, not {_type_name(value)}")
    return value


def _validate_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput(f"{where} must be a list of strings, not {_type_name(value)}")
    if len(value) > MAX_LIST_ITEMS:
        raise InvalidInput(f"{where} has {len(value)} entries; at most {MAX_LIST_ITEMS} are allowed")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidInput(f"{where}[{i}] must be a string, not {_type_name(item)}")
        if not item.strip():
            raise InvalidInput(f"{where}[{i}] is empty")
    return value


def _dedup(items) -> list:
    return list(dict.fromkeys(items))


def _validate_sql(value) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput(f"sql must be an object with any of: {', '.join(SQL_CONDITIONS)}")
    for key in value:
        if key not in SQL_CONDITIONS:
            raise InvalidInput(f"unknown sql condition {_show(key)}; use one of: {', '.join(SQL_CONDITIONS)}")
    out: dict = {}
    kinds = []
    for kind in _validate_list(value.get("deny_statements"), "sql.deny_statements"):
        norm = kind.strip().lower()
        if norm not in STATEMENT_KINDS:
            raise InvalidInput(
                f"sql.deny_statements: unknown statement kind {_show(kind)}; use one of: {', '.join(STATEMENT_KINDS)}"
            )
        kinds.append(norm)
    out["deny_statements"] = _dedup(kinds)
    for key in _SQL_BOOLS:
        out[key] = _validate_bool(value.get(key, False), f"sql.{key}")
    out["deny_tables"] = _validate_globs(value.get("deny_tables"), "sql.deny_tables", max_parts=3)
    out["deny_schemas"] = _validate_globs(value.get("deny_schemas"), "sql.deny_schemas", max_parts=1)
    out["deny_functions"] = _validate_globs(value.get("deny_functions"), "sql.deny_functions", max_parts=2)
    allowed = []
    for item in _validate_list(value.get("allow_side_effects"), "sql.allow_side_effects"):
        norm = item.strip().lower()
        if norm not in SIDE_EFFECTS:
            raise InvalidInput(
                f"sql.allow_side_effects: unknown class {_show(item)}; use any of: {', '.join(SIDE_EFFECTS)}"
            )
        allowed.append(norm)
    out["allow_side_effects"] = _dedup(allowed)
    ceiling = value.get("max_affected_rows")
    if ceiling is not None and (
        not isinstance(ceiling, int)
        or isinstance(ceiling, bool)
        or not 0 <= ceiling <= MAX_AFFECTED_ROWS_LIMIT
    ):
        raise InvalidInput(
            f"sql.max_affected_rows must be a whole number from 0 to {MAX_AFFECTED_ROWS_LIMIT}, or null"
        )
    out["max_affected_rows"] = ceiling
    return {key: out[key] for key in SQL_CONDITIONS}


_GLOB_OK = re.compile(r"^[^\s'\";`]+$")


def _validate_globs(value, where: str, *, max_parts: int) -> list[str]:
    out = []
    for i, item in enumerate(_validate_list(value, where)):
        pattern = item.strip().replace('"', "").replace("`", "").lower()
        if len(pattern) > MAX_ITEM_CHARS:
            raise InvalidInput(f"{where}[{i}] is longer than {MAX_ITEM_CHARS} characters")
        if not pattern or not _GLOB_OK.match(pattern):
            raise InvalidInput(
                f"{where}[{i}] must be a name or glob pattern without spaces, quotes or semicolons "
                "(matching is case-insensitive; * and ? are wildcards)"
            )
        parts = pattern.split(".")
        if len(parts) > max_parts or any(not p for p in parts):
            shape = {1: "name", 2: "name or schema.name", 3: "table, schema.table or database.schema.table"}[
                max_parts
            ]
            raise InvalidInput(f"{where}[{i}] must be a {shape} (globs allowed)")
        out.append(pattern)
    return _dedup(out)


def _validate_words(value, where: str) -> list[str]:
    out = []
    for i, item in enumerate(_validate_list(value, where)):
        if len(item) > MAX_ITEM_CHARS:
            raise InvalidInput(f"{where}[{i}] is longer than {MAX_ITEM_CHARS} characters")
        norm = " ".join(_normalize(item).split())
        if not norm:
            raise InvalidInput(f"{where}[{i}] is empty after normalization")
        out.append(norm)
    return _dedup(out)


def _validate_regexes(value, where: str) -> list[str]:
    out = []
    for i, pattern in enumerate(_validate_list(value, where)):
        if len(pattern) > MAX_REGEX_CHARS:
            raise InvalidInput(
                f"{where}[{i}] is {len(pattern)} characters long; at most {MAX_REGEX_CHARS} are allowed"
            )
        try:
            compiled = _compile_regex(pattern)
        except re.error as exc:
            raise InvalidInput(f"{where}[{i}] is not a valid regular expression: {exc}") from None
        risk = _redos_risk(pattern)
        if risk:
            raise InvalidInput(f"{where}[{i}] may take exponential time to match ({risk}); rewrite it")
        if compiled.search("") is not None:
            raise InvalidInput(f"{where}[{i}] matches the empty string, so it would match every text")
        out.append(pattern)
    return _dedup(out)


@lru_cache(maxsize=2048)
def _compile_regex(pattern: str) -> re.Pattern:
    return re.compile(pattern)


_REPEATS = {_sre_parser.MAX_REPEAT, _sre_parser.MIN_REPEAT}
if hasattr(_sre_parser, "POSSESSIVE_REPEAT"):
    _REPEATS.add(_sre_parser.POSSESSIVE_REPEAT)


def _redos_risk(pattern: str) -> str | None:
    """A quantified group that itself contains an unbounded quantifier, e.g. (a+)+ or (\\w*x)*."""
    try:
        parsed = _sre_parser.parse(pattern)
    except Exception:  # compile already succeeded; be lenient with parser internals
        return None

    def has_unbounded(items) -> bool:
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                if hi == _sre_parser.MAXREPEAT or has_unbounded(sub):
                    return True
            elif op == _sre_parser.SUBPATTERN:
                if has_unbounded(av[-1]):
                    return True
            elif op == _sre_parser.BRANCH:
                if any(has_unbounded(b) for b in av[1]):
                    return True
            elif op in (_sre_parser.ASSERT, _sre_parser.ASSERT_NOT):
                if has_unbounded(av[1]):
                    return True
        return False

    def walk(items) -> str | None:
        for op, av in items:
            if op in _REPEATS:
                lo, hi, sub = av
                if (hi == _sre_parser.MAXREPEAT or hi > 16) and has_unbounded(sub):
                    return "a repeated group contains an unbounded quantifier, like (a+)+"
                found = walk(sub)
            elif op == _sre_parser.SUBPATTERN:
                found = walk(av[-1])
            elif op == _sre_parser.BRANCH:
                found = next((r for r in (walk(b) for b in av[1]) if r), None)
            elif op in (_sre_parser.ASSERT, _sre_parser.ASSERT_NOT):
                found = walk(av[1])
            else:
                found = None
            if found:
                return found
        return None

    return walk(parsed)


@lru_cache(maxsize=1024)
def _compile_words(words: tuple[str, ...]) -> re.Pattern:
    parts = []
    for word in sorted(words, key=len, reverse=True):
        body = r"\s+".join(re.escape(piece) for piece in word.split())
        if re.match(r"\w", word):
            body = r"(?<!\w)" + body
        if re.search(r"\w$", word):
            body = body + r"(?!\w)"
        parts.append(body)
    return re.compile("|".join(parts))


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern:
    return re.compile(fnmatch.translate(pattern.lower()))


def _glob_any(patterns, candidates) -> bool:
    return any(_glob(p).match(c) for p in patterns for c in candidates)
