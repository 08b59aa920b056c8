"""Evaluating rules: `evaluate_input`, `evaluate_output`, `requires_read_only`,
`affected_rows_ceiling` and `databases_named`."""

from __future__ import annotations

import re

from sqlglot import exp

from governance.errors import InvalidInput
from governance.guardrails.analysis import _Analysis, _analyze
from governance.guardrails.conditions import _compile_regex, _compile_words, _dedup, _glob_any
from governance.guardrails.lexer import _ParseFailure
from governance.guardrails.model import Finding, Rule
from governance.guardrails.normalize import (
    _SHELL_QUOTES,
    _line_of,
    _normalize,
    _normalize_keep_case,
    _strip_block_comments,
)
from governance.guardrails.parser import _parse_batch
from governance.guardrails.secrets import find_secrets
from governance.guardrails.vocabulary import (
    _OPAQUE_SENSITIVE,
    CEILING_KINDS,
    DIALECTS,
    RISK_LEVELS,
    SQL_CONDITIONS,
)

# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def _has_sql(sql: dict) -> bool:
    return bool(sql) and any(sql.get(key) not in (None, False, [], "") for key in SQL_CONDITIONS)


def _sql_findings(rule: Rule, sql: dict, analysis: _Analysis, dialect: str) -> list[Finding]:
    out: list[Finding] = []

    def add(condition: str, statement: int | None, detail: str) -> None:
        out.append(Finding(rule.name, "input", f"sql.{condition}", statement, detail))

    if analysis.error is not None:
        add("parse_error", None, f"does not parse as {dialect} SQL: {analysis.error}")
        return out
    if sql.get("single_statement") and len(analysis.statements) > 1:
        add("single_statement", 2, f"{len(analysis.statements)} statements in one input; one is allowed")
    denied_kinds = set(sql.get("deny_statements") or ())
    opaque_applies = any(sql.get(key) not in (None, False, []) for key in _OPAQUE_SENSITIVE)
    allowed_effects = set(sql.get("allow_side_effects") or ())
    ceiling = sql.get("max_affected_rows")
    for st in analysis.statements:
        i = st.index
        for kind, detail in st.kinds.items():
            if kind in denied_kinds:
                add("deny_statements", i, detail)
        if sql.get("require_where"):
            for detail in st.where:
                add("require_where", i, detail)
        if sql.get("read_only"):
            for detail in st.writes:
                add("read_only", i, detail)
        if sql.get("deny_tables"):
            for ref in st.tables:
                hit = next((c for c in ref.candidates if _glob_any(sql["deny_tables"], (c,))), None)
                if hit is not None:
                    add(
                        "deny_tables",
                        i,
                        ref.display if hit == ref.display.lower() else f"{ref.display} ({hit})",
                    )
        if sql.get("deny_schemas"):
            for ref in st.schemas:
                hit = next((c for c in ref.candidates if _glob_any(sql["deny_schemas"], (c,))), None)
                if hit is not None:
                    add("deny_schemas", i, hit if hit == ref.display.lower() else f"{hit} ({ref.display})")
        if sql.get("deny_functions"):
            for ref in st.functions:
                if _glob_any(sql["deny_functions"], ref.candidates):
                    add("deny_functions", i, ref.display)
        if opaque_applies:
            for detail in st.opaque:
                add("opaque", i, detail)
        for cls, detail in st.side_effects:
            if cls not in allowed_effects:
                add("side_effects", i, f"{detail} [{cls}]")
        if ceiling is not None:
            for kind, detail in st.kinds.items():
                if kind not in CEILING_KINDS:
                    add(
                        "max_affected_rows",
                        i,
                        f"{detail}: cannot run under an affected-rows ceiling (it would commit, end or "
                        "escape the transaction the count is taken in)",
                    )
    return out


# Databases every MySQL connection may name: metadata views (names only, never other data).
_MYSQL_SHARED_DATABASES = frozenset({"information_schema"})


def databases_named(text: str, dialect: str) -> set[str] | None:
    """The databases a MySQL input names outside its connection's default: `db.table`,
    `db.fn()`, `USE db`, `SHOW TABLES FROM db`. None when that cannot be told with certainty (the
    caller then refuses). Other dialects: PostgreSQL cannot name another database in a query, so
    the answer is always the empty set."""
    if dialect != "mysql":
        return set()
    names: set[str] = set()
    try:
        stmts = _parse_batch(text, dialect)
    except _ParseFailure:
        return None
    for stmt in stmts:
        toks = stmt.toks
        if stmt.ast is None or isinstance(stmt.ast, exp.Command):
            # Not parsed: a dotted name could be db.table or alias.column; refuse to guess.
            if any(t.text == "." for t in toks) or (toks and toks[0].upper in ("USE", "SHOW")):
                return None
            continue
        for table in stmt.ast.find_all(exp.Table):
            if table.args.get("catalog") is not None:
                return None
            if table.db:
                names.add(table.db.lower())
        for node in stmt.ast.find_all(exp.Use, exp.Show):
            target = node.this if isinstance(node, exp.Use) else node.args.get("db")
            if isinstance(target, exp.Expr) and target.name:
                names.add(target.name.lower())
        for dot in stmt.ast.find_all(exp.Dot):
            if isinstance(dot.expression, exp.Func) and isinstance(dot.this, exp.Expr) and dot.this.name:
                names.add(dot.this.name.lower())
        for col in stmt.ast.find_all(exp.Column):
            if col.args.get("catalog") is not None:
                names.add(col.catalog.lower())  # db.table.column
    return names - _MYSQL_SHARED_DATABASES


def affected_rows_ceiling(rules: list[Rule]) -> tuple[int, str] | None:
    """The smallest `max_affected_rows` of the rules and the rule that sets it, or None."""
    best = None
    for rule in rules:
        value = ((rule.input or {}).get("sql") or {}).get("max_affected_rows")
        if value is not None and (best is None or value < best[0]):
            best = (value, rule.name)
    return best


class _Views:
    """Lazily computed normalized views of one text."""

    def __init__(self, text: str, *, shell: bool):
        self.text = text
        self.shell = shell
        self._words: list[str] | None = None
        self._regex: list[tuple[str, str]] | None = None

    def word_views(self) -> list[str]:
        if self._words is None:
            norm = _normalize(self.text)
            views = [norm]
            if "/*" in norm:
                views.append(_strip_block_comments(norm))
            if self.shell and any(ch in norm for ch in "'\"\\"):
                views.append(norm.translate(_SHELL_QUOTES))
            self._words = views
        return self._words

    def regex_views(self) -> list[tuple[str, str]]:
        if self._regex is None:
            views = [("", self.text)]
            norm = _normalize_keep_case(self.text)
            if norm != self.text:
                views.append(("normalized ", norm))
            self._regex = views
        return self._regex


def _word_findings(rule: Rule, direction: str, words: list[str], views: _Views) -> list[Finding]:
    if not words:
        return []
    norm_words = tuple(_dedup(" ".join(_normalize(w).split()) for w in words if w and w.strip()))
    if not norm_words:
        return []
    pattern = _compile_words(norm_words)
    seen: set[str] = set()
    out = []
    for view in views.word_views():
        for m in pattern.finditer(view):
            word = " ".join(m.group().split())
            if word in seen:
                continue
            seen.add(word)
            out.append(
                Finding(
                    rule.name,
                    direction,
                    "deny_words",
                    None,
                    f"denied word {word!r} at line {_line_of(view, m.start())}",
                )
            )
    return out


def _regex_findings(rule: Rule, direction: str, patterns: list[str], views: _Views) -> list[Finding]:
    out = []
    for i, pattern in enumerate(patterns):
        try:
            compiled = _compile_regex(pattern)
        except re.error:
            out.append(
                Finding(
                    rule.name, direction, "regex", None, f"regex[{i}] could not be compiled; failing closed"
                )
            )
            continue
        for prefix, view in views.regex_views():
            m = compiled.search(view)
            if m is not None:
                out.append(
                    Finding(
                        rule.name,
                        direction,
                        "regex",
                        None,
                        f"regex[{i}] matched the {prefix}text at line {_line_of(view, m.start())}",
                    )
                )
                break
    return out


def evaluate_input(rules: list[Rule], text: str, *, dialect: str | None, assess_risk=None) -> list[Finding]:
    """All findings of all rules for an input. `dialect` is a sqlglot dialect name, or None for
    command connections (SQL conditions do not apply there; deny_words and regex do).

    `assess_risk()` returns the built-in analyzer's verdict on the input ({"risk_level", "title"});
    it is called at most once, and only when a rule has `risk_at_least`. Without it such a rule
    blocks (fail closed): this module cannot rate risk by itself."""
    if dialect is not None and dialect not in DIALECTS.values():
        raise InvalidInput(
            f"unknown SQL dialect {dialect!r}; use one of: {', '.join(sorted(set(DIALECTS.values())))}"
        )
    if not isinstance(text, str):
        raise InvalidInput("input must be a string")
    findings: list[Finding] = []
    analysis: _Analysis | None = None
    verdict: dict | None = None
    views = _Views(text, shell=dialect is None)
    for rule in rules:
        conds = rule.input or {}
        sql = conds.get("sql") or {}
        if dialect is not None and _has_sql(sql):
            if analysis is None:
                analysis = _analyze(text, dialect)
            findings.extend(_sql_findings(rule, sql, analysis, dialect))
        findings.extend(_word_findings(rule, "input", conds.get("deny_words") or [], views))
        findings.extend(_regex_findings(rule, "input", conds.get("regex") or [], views))
        if conds.get("risk_at_least"):
            if verdict is None:
                verdict = assess_risk() if assess_risk is not None else {}
            level = verdict.get("risk_level")
            if level not in RISK_LEVELS:
                findings.append(
                    Finding(rule.name, "input", "risk.at_least", None, "the risk could not be assessed")
                )
            elif RISK_LEVELS.index(level) >= RISK_LEVELS.index(conds["risk_at_least"]):
                detail = f"rated {level} by the analyzer: {verdict.get('title', '')}".rstrip(": ")
                findings.append(Finding(rule.name, "input", "risk.at_least", None, detail))
    return _dedup(findings)


def evaluate_output(rules: list[Rule], text: str) -> list[Finding]:
    """Findings of output conditions on a rendered result text."""
    if not isinstance(text, str):
        raise InvalidInput("output must be a string")
    findings: list[Finding] = []
    views = _Views(text, shell=False)
    secrets: list[str] | None = None
    for rule in rules:
        conds = rule.output or {}
        findings.extend(_word_findings(rule, "output", conds.get("deny_words") or [], views))
        findings.extend(_regex_findings(rule, "output", conds.get("regex") or [], views))
        if conds.get("secrets"):
            if secrets is None:
                secrets = find_secrets(text)
            findings.extend(Finding(rule.name, "output", "secrets", None, d) for d in secrets)
    return _dedup(findings)


def requires_read_only(rules: list[Rule]) -> bool:
    """True if any rule has sql.read_only, so the pipeline also runs the statement read-only."""
    return any(bool(((rule.input or {}).get("sql") or {}).get("read_only")) for rule in rules)
