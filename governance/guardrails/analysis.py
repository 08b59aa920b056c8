"""SQL analysis per dialect: the facts the SQL conditions read (statement kinds, tables, schemas,
functions, side effects, WHERE clauses that pin rows), nested SQL included."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.optimizer.simplify import simplify

from governance.guardrails.conditions import _glob_any
from governance.guardrails.lexer import _BARE_STATEMENT_WORDS, _lex, _ParseFailure, _split, _Tok
from governance.guardrails.parser import _local, _parse_batch, _Stmt
from governance.guardrails.vocabulary import (
    _CLASS_KIND,
    _DEFAULT_SCHEMAS,
    _KEYWORD_KIND,
    _MAX_NESTING,
    _NESTED_KEYWORDS,
    _NOT_CALLS,
    _PRAGMA_READ_NO_VALUE,
    _PRAGMA_READ_WITH_ARG,
    _PRAGMA_TABLE_ARG,
    _QUERY_CLASSES,
    _READ_KINDS,
    _SQL_TEXT_FUNCTIONS,
    _STRING_NODES,
    _TABLE_NAME_FUNCTIONS,
    MAX_SQL_CHARS,
    READ_ONLY_DENIED_FUNCTIONS,
    SIDE_EFFECT_FUNCTIONS,
)

# ---------------------------------------------------------------------------------------------
# SQL analysis: facts about each top-level statement, independent of the rules
# ---------------------------------------------------------------------------------------------


@dataclass
class _Ref:
    display: str
    candidates: tuple[str, ...]  # lower-case names to match globs against


class _Facts:
    __slots__ = (
        "index",
        "kinds",
        "writes",
        "where",
        "tables",
        "schemas",
        "functions",
        "opaque",
        "side_effects",
    )

    def __init__(self, index: int):
        self.index = index
        self.kinds: dict[str, str] = {}
        self.writes: list[str] = []
        self.where: list[str] = []
        self.tables: list[_Ref] = []
        self.schemas: list[_Ref] = []
        self.functions: list[_Ref] = []
        self.opaque: list[str] = []
        self.side_effects: list[tuple[str, str]] = []  # (class, detail)


@dataclass
class _Analysis:
    statements: list[_Facts]
    error: str | None = None


class _Analyzer:
    def __init__(self, dialect: str):
        self.dialect = dialect
        self.depth = 0
        self.search_path: tuple[str, ...] = _DEFAULT_SCHEMAS[dialect]
        self.current_db: str | None = None
        self.prepared: set[str] = set()
        self.user_vars: dict[str, str | None] = {}
        self.denied = READ_ONLY_DENIED_FUNCTIONS[dialect]
        self.lead = ""
        self.sql_text_functions = _SQL_TEXT_FUNCTIONS[dialect]
        self.table_name_functions = _TABLE_NAME_FUNCTIONS[dialect]
        self.strings: dict[int, _Tok] = {}
        self.current_text, self.current_base = "", 0
        self.replacing = False  # inside REPLACE INTO (MySQL): conflicting rows are deleted
        self.side_effect_functions = SIDE_EFFECT_FUNCTIONS[dialect]

    # -- entry points -----------------------------------------------------------------------

    def run(self, text: str) -> _Analysis:
        if len(text) > MAX_SQL_CHARS:
            return _Analysis([], f"is too large to analyze ({len(text)} characters; at most {MAX_SQL_CHARS})")
        try:
            stmts = _parse_batch(text, self.dialect)
            out = []
            for i, stmt in enumerate(stmts, start=1):
                facts = _Facts(i)
                self.statement(stmt, facts, "")
                out.append(facts)
            return _Analysis(out)
        except _ParseFailure as exc:
            return _Analysis([], str(exc))
        except RecursionError:
            return _Analysis([], "is nested too deeply to analyze")

    def nested(self, text: str, facts: _Facts, label: str, *, on_fail: str) -> None:
        """Analyze SQL found inside the statement (a literal, the tail of EXPLAIN, ...)."""
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return
        self.depth += 1
        try:
            try:
                stmts = _parse_batch(text, self.dialect)
            except _ParseFailure as exc:
                if on_fail == "error":
                    raise _ParseFailure(f"the statement {label} {exc}") from None
                facts.opaque.append(f"SQL {label} does not parse")
                return
            for stmt in stmts:
                self.statement(stmt, facts, label)
        finally:
            self.depth -= 1

    def expression(self, text: str, facts: _Facts, label: str) -> bool:
        """Analyze an expression (functions, subqueries, tables) without counting a SELECT."""
        if not text.strip():
            return True
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return False
        self.depth += 1
        try:
            stmts = _parse_batch("SELECT " + text, self.dialect)
        except _ParseFailure:
            return False
        finally:
            self.depth -= 1
        if len(stmts) != 1 or not isinstance(stmts[0].ast, exp.Select):
            return False
        self.tree(stmts[0].ast, facts, label, count_root=False)
        return True

    # -- statements -------------------------------------------------------------------------

    def add_kind(self, facts: _Facts, kind: str, detail: str, *, write: bool | None = None) -> None:
        facts.kinds.setdefault(kind, detail)
        if write is None:
            write = kind not in _READ_KINDS
        if write:
            facts.writes.append(detail)

    @staticmethod
    def label_detail(word: str, label: str) -> str:
        return f"{word} {label}" if label else word

    def statement(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        saved = self.strings, self.current_text, self.current_base
        self.strings = {t.start: t for t in stmt.toks if t.kind in ("str", "bits")}
        self.current_text, self.current_base = stmt.text, stmt.base
        try:
            self._statement(stmt, facts, label)
        finally:
            self.strings, self.current_text, self.current_base = saved

    def server_string(self, node) -> str | None:
        """The text the server reads for a string literal of sqlglot's tree: our lexer's token at
        the same offset (decoded exactly), never sqlglot's own decoding. None if it is not a text
        literal, or cannot be matched with certainty (the caller then fails closed)."""
        if not isinstance(node, _STRING_NODES) or (isinstance(node, exp.Literal) and not node.is_string):
            return None
        start = (node.meta or {}).get("start") if hasattr(node, "meta") else None
        tok = self.strings.get(start) if start is not None else None
        if tok is not None:
            return tok.text if tok.kind == "str" else None
        if isinstance(node, (exp.Heredoc, exp.RawString)) and self.dialect == "postgres":
            # Dollar quoting has no escapes: sqlglot's text is the server's, if we saw it too.
            if any(t.kind == "str" and t.text == node.this for t in self.strings.values()):
                return node.this
        return None

    def mysql_user_var_writes(self, toks: list[_Tok]) -> None:
        """`SELECT @v := ...`, `... INTO @v`: a user variable changed by something other than a SET
        of a literal is no longer known (PREPARE FROM @v is then opaque)."""
        for k, t in enumerate(toks):
            if t.kind == "param" and k + 1 < len(toks) and toks[k + 1].kind == "word":
                name = toks[k + 1].text.lower()
                after = toks[k + 2].text if k + 2 < len(toks) else ""
                before = toks[k - 1].upper if k > 0 else ""
                if after == ":=" or before in ("INTO", ","):
                    self.user_vars[name] = None

    def _statement(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        ast, toks = stmt.ast, stmt.toks
        if self.dialect == "mysql" and toks and toks[0].upper != "SET":
            self.mysql_user_var_writes(toks)
        self.statement_effects(toks, facts, label)
        lead = next((t for t in toks if t.kind != "op" or t.text != "("), toks[0])
        self.lead = lead.upper
        cls_kind = _CLASS_KIND.get(type(ast)) if ast is not None else None
        if isinstance(ast, _QUERY_CLASSES):
            cls_kind = "select"
            if lead.upper not in ("SELECT", "WITH", "VALUES", "TABLE"):
                cls_kind = None  # a keyword sqlglot mistook for an expression
        if ast is not None and not isinstance(ast, exp.Command) and cls_kind is None:
            if lead.upper.lower() not in _KEYWORD_KIND and lead.upper not in _BARE_STATEMENT_WORDS:
                # sqlglot read a bare expression ("SELEC * FRM t" is SELEC * FRM AS t): no server
                # would run it as a statement, and we do not guess what it was meant to be.
                raise _ParseFailure(f"does not start with a statement keyword ({lead.text[:40]!r})")
        if ast is None or isinstance(ast, exp.Command) or cls_kind is None:
            self.command(stmt, facts, label)
            if ast is not None and not isinstance(ast, exp.Command):
                self.tree(ast, facts, label, count_root=False)
                self.token_calls(ast, toks, facts)
            return
        self.tree(ast, facts, label, count_root=True)
        self.token_calls(ast, toks, facts)

    def side_effect(self, facts: _Facts, cls: str, detail: str, label: str) -> None:
        facts.side_effects.append((cls, self.label_detail(detail, label)))

    def statement_effects(self, toks: list[_Tok], facts: _Facts, label: str) -> None:
        """What a statement does beyond its keyword, read off the server's tokens: side effects on the
        server, stored code and what its body will do when it fires, drops by another name."""
        if not toks:
            return
        words = [t.upper if t.kind == "word" else "" for t in toks]
        head, d = words[0], self.dialect
        second = words[1] if len(words) > 1 else ""
        if head == "COPY":
            for k, w in enumerate(words):
                if w in ("TO", "FROM") and k + 1 < len(toks):
                    nxt = toks[k + 1]
                    if nxt.kind == "word" and nxt.upper == "PROGRAM":
                        self.side_effect(
                            facts, "program", "COPY ... PROGRAM runs a command on the database host", label
                        )
                    elif nxt.kind in ("str", "bits"):
                        self.side_effect(
                            facts, "file", "COPY reads or writes a file on the database host", label
                        )
        elif head == "ALTER" and second == "SYSTEM":
            self.side_effect(facts, "server_config", "ALTER SYSTEM changes the server's configuration", label)
        elif head == "ALTER" and second in ("DATABASE", "ROLE", "USER") and "SET" in words[2:]:
            self.side_effect(facts, "server_config", f"ALTER {second} ... SET changes stored settings", label)
        elif head == "LOAD" and d == "postgres":
            self.side_effect(facts, "program", "LOAD loads a shared library into the server", label)
        elif head in ("KILL", "SHUTDOWN", "CHECKPOINT", "RESTART"):
            self.side_effect(facts, "server_control", f"{head} acts on the server", label)
        elif head in ("INSTALL", "UNINSTALL"):
            self.side_effect(facts, "program", f"{head} loads or unloads server code", label)
        elif head == "ATTACH" or (head == "VACUUM" and "INTO" in words):
            self.side_effect(facts, "file", f"{head} creates or opens a file on the host", label)
        elif head == "SET" and d == "mysql":
            scoped = any(w in ("GLOBAL", "PERSIST", "PERSIST_ONLY") for w in words[1:])
            scoped = scoped or any(
                t.kind == "param"
                and t.text == "@@"
                and k + 1 < len(toks)
                and toks[k + 1].upper in ("GLOBAL", "PERSIST", "PERSIST_ONLY")
                for k, t in enumerate(toks)
            )
            if scoped:
                self.side_effect(
                    facts, "server_config", "SET GLOBAL/PERSIST changes the server's configuration", label
                )
        if head == "CREATE" or (head == "ALTER" and second == "EVENT"):
            self.create_effects(toks, words, facts, label)

    def create_effects(self, toks: list[_Tok], words: list[str], facts: _Facts, label: str) -> None:
        i = 1
        while i < len(words) and words[i] in (
            "OR",
            "REPLACE",
            "TEMP",
            "TEMPORARY",
            "GLOBAL",
            "LOCAL",
            "UNLOGGED",
            "CONSTRAINT",
            "AGGREGATE",
            "DEFINER",
            "SQL",
            "SECURITY",
            "INVOKER",
            "ALGORITHM",
            "UNDEFINED",
            "MERGE",
            "TEMPTABLE",
            "DEFAULT",
            "UNIQUE",
            "NONCLUSTERED",
            "CLUSTERED",
        ):
            i += 1
            if i < len(toks) and toks[i].text == "=":  # DEFINER = user@host, ALGORITHM = x
                i += 2
                while i < len(toks) and (
                    toks[i].kind == "param"
                    or toks[i].text in ("@",)
                    or (i > 0 and toks[i - 1].kind == "param")
                ):
                    i += 1
        obj = words[i] if i < len(words) else ""
        replace = "REPLACE" in words[1:i]
        if obj == "TABLE" and replace:
            self.add_kind(
                facts, "drop", self.label_detail("CREATE OR REPLACE TABLE (drops the existing table)", label)
            )
        elif (
            obj in ("EXTENSION", "LANGUAGE")
            or (obj == "TRUSTED" and "LANGUAGE" in words)
            or obj == "PROCEDURAL"
        ):
            self.side_effect(facts, "program", f"CREATE {obj} loads code into the server", label)
        if obj not in ("FUNCTION", "PROCEDURE", "TRIGGER", "RULE", "EVENT"):
            return
        self.add_kind(facts, "stored_code", self.label_detail(f"{words[0]} {obj} (stored code)", label))
        if "BEGIN" in words and (self.dialect == "mysql" or "ATOMIC" in words):
            # The server reads a compound body (BEGIN ... END with ';' inside) as one statement;
            # its parts cannot be split and checked with certainty here.
            raise _ParseFailure(
                f"has a {obj.lower()} with a compound BEGIN ... END body, which is not analyzed"
            )
        if obj in ("FUNCTION", "PROCEDURE"):
            language = next(
                (
                    toks[k + 1].text.lower()
                    for k, w in enumerate(words)
                    if w == "LANGUAGE" and k + 1 < len(toks)
                ),
                "sql",
            )
            if language in ("c", "internal") or (
                language.endswith("u") and language not in ("sql", "plpgsql")
            ):
                self.side_effect(
                    facts, "program", f"a {language} {obj.lower()} runs code on the database host", label
                )
            return
        body_at = None
        if obj == "RULE":
            body_at = next((k + 1 for k, w in enumerate(words) if w == "DO" and k > i), None)
            while body_at is not None and body_at < len(words) and words[body_at] in ("ALSO", "INSTEAD"):
                body_at += 1
        elif obj == "TRIGGER" and self.dialect == "mysql":
            row_at = next(
                (k for k in range(i, len(words) - 2) if words[k : k + 3] == ["FOR", "EACH", "ROW"]), None
            )
            if row_at is not None:
                body_at = row_at + 3
                if body_at < len(words) and words[body_at] in ("FOLLOWS", "PRECEDES"):
                    body_at += 2
        elif obj == "EVENT":
            body_at = next((k + 1 for k, w in enumerate(words) if w == "DO" and k > i), None)
        else:
            return  # a PostgreSQL trigger runs a function, checked when that function is created
        if body_at is None or body_at >= len(toks):
            facts.opaque.append(self.label_detail(f"the body of CREATE {obj} could not be found", label))
            return
        if words[body_at] == "NOTHING":
            return
        start, end = toks[body_at].start, toks[-1].end
        body = self.current_text[start - self.current_base : end - self.current_base]
        if body.startswith("(") and body.endswith(")"):
            body = body[1:-1]
        self.nested(body, facts, f"in the body of {words[0]} {obj} (as if it ran now)", on_fail="error")

    def token_calls(self, ast: exp.Expr, toks: list[_Tok], facts: _Facts) -> None:
        """Names written as calls (`name(`) that the tree does not show as functions: sqlglot maps
        some built-ins to typed nodes named differently (IFNULL -> COALESCE), so match as written."""
        known = {c for ref in facts.functions for c in ref.candidates}
        names = None
        for k in range(len(toks) - 1):
            t = toks[k]
            if toks[k + 1].text != "(" or t.kind not in ("word", "qid"):
                continue
            low = t.text.lower()
            if low in known or (t.kind == "word" and low in _NOT_CALLS):
                continue
            if names is None:  # identifiers the tree uses as tables, aliases, columns: not calls
                names = {
                    i.name.lower() for i in ast.find_all(exp.Identifier) if not isinstance(i.parent, exp.Func)
                }
            if low in names:
                continue
            parts = [t.text]
            if k >= 2 and toks[k - 1].text == "." and toks[k - 2].kind in ("word", "qid"):
                parts.insert(0, toks[k - 2].text)
            self.function_ref(parts, facts)
            known.add(low)

    def command(self, stmt: _Stmt, facts: _Facts, label: str) -> None:
        """Statements sqlglot only knows as a generic command: classify by the leading keyword."""
        toks = stmt.toks
        head = toks[0]
        word = head.upper if head.kind == "word" else head.text
        kind = _KEYWORD_KIND.get(word.lower(), "other")
        detail = self.label_detail(word, label)
        rest = _text_from(stmt, toks[1]) if len(toks) > 1 else ""
        rest_toks = toks[1:]
        d = self.dialect

        if word == "EXPLAIN":
            self.add_kind(facts, "explain", detail)
            i = 1
            if i < len(toks) and toks[i].text == "(":
                i = _skip_parens(toks, i)
            while i < len(toks) and toks[i].upper in ("ANALYZE", "ANALYSE", "VERBOSE", "QUERY", "PLAN"):
                i += 1
            if i >= len(toks):
                raise _ParseFailure("has EXPLAIN without a statement")
            self.nested(_text_from(stmt, toks[i]), facts, "inside EXPLAIN", on_fail="error")
        elif word == "PREPARE":
            self.add_kind(facts, "prepare", detail)
            name = rest_toks[0].text.lower() if rest_toks else ""
            as_at = next((i for i, t in enumerate(toks) if t.upper in ("AS", "FROM") and i >= 2), None)
            if as_at is None or as_at + 1 >= len(toks):
                raise _ParseFailure("has PREPARE without a statement")
            body = toks[as_at + 1]
            if d == "mysql" and toks[as_at].upper == "FROM":
                if body.kind == "str":
                    self.nested(body.text, facts, "inside PREPARE", on_fail="opaque")
                elif body.kind == "param" and as_at + 2 < len(toks):
                    value = self.user_vars.get(toks[as_at + 2].text.lower())
                    if value is None:
                        facts.opaque.append(
                            "PREPARE from a user variable whose value is not a literal in this input"
                        )
                    else:
                        self.nested(value, facts, "inside PREPARE", on_fail="opaque")
                else:
                    facts.opaque.append("PREPARE from an expression that is not a string literal")
            else:
                self.nested(_text_from(stmt, body), facts, "inside PREPARE", on_fail="error")
            self.prepared.add(name)
        elif word in ("EXECUTE", "EXEC"):
            self.add_kind(facts, "execute", detail)
            name = rest_toks[0].text.lower() if rest_toks else ""
            if name not in self.prepared:
                facts.opaque.append(
                    f"EXECUTE runs prepared statement {name!r}, which this input does not define"
                )
            if d == "postgres" and len(toks) > 2 and toks[2].text == "(":
                if not self.expression(_text_from(stmt, toks[2]), facts, "in EXECUTE arguments"):
                    facts.opaque.append("EXECUTE arguments do not parse")
        elif word == "DEALLOCATE":
            self.add_kind(facts, "prepare", detail)
        elif word == "DO":
            self.add_kind(facts, "do", detail)
            if d == "postgres":
                self.do_block(toks, facts)
            elif not self.expression(rest, facts, "inside DO"):
                raise _ParseFailure("has a DO statement whose expressions do not parse")
        elif word == "CALL":
            self.add_kind(facts, "call", detail)
            if not self.expression(rest, facts, "in CALL"):
                raise _ParseFailure("has a CALL that does not parse")
        elif word == "REPLACE":
            self.add_kind(facts, "insert", detail)
            self.add_kind(facts, "delete", detail)
            self.replacing = True
            try:
                self.nested("INSERT " + rest, facts, label, on_fail="error")
            finally:
                self.replacing = False
        elif word in ("SET", "RESET"):
            self.add_kind(facts, "set", detail)
            self.track_set(word, rest_toks)
        elif word == "DECLARE":
            self.add_kind(facts, "other", detail)
            for_at = next((i for i, t in enumerate(toks) if t.upper == "FOR"), None)
            if for_at is not None and for_at + 1 < len(toks):
                self.nested(
                    _text_from(stmt, toks[for_at + 1]), facts, "inside DECLARE CURSOR", on_fail="error"
                )
        elif word == "SHOW":
            self.add_kind(facts, "show", detail)  # PostgreSQL: SHOW <setting>; no object names
        elif word in ("DESCRIBE", "DESC"):
            self.add_kind(facts, "show", detail)
            self.scan(rest_toks, facts, label, nested_kinds=False)
        else:
            self.add_kind(facts, kind, detail)
            self.scan(rest_toks, facts, label, nested_kinds=True)
            if word == "CREATE" and any(t.upper in ("FUNCTION", "PROCEDURE") for t in toks[1:5]):
                self.command_routine_body(toks, facts)

    def command_routine_body(self, toks: list[_Tok], facts: _Facts) -> None:
        """CREATE FUNCTION/PROCEDURE that sqlglot could not parse: still read its body."""
        language, body = "sql", None
        for i, t in enumerate(toks):
            if t.upper == "LANGUAGE" and i + 1 < len(toks):
                language = toks[i + 1].text.lower()
            elif t.upper == "AS" and i + 1 < len(toks) and toks[i + 1].kind == "str":
                body = toks[i + 1].text
        if body is None:
            facts.opaque.append("the body of CREATE FUNCTION/PROCEDURE could not be found")
        else:
            self.routine_body(body, language, facts, "inside CREATE FUNCTION")

    def track_set(self, word: str, toks: list[_Tok]) -> None:
        if self.dialect != "postgres":
            return
        names = [t.upper for t in toks[:2]]
        if word == "RESET" and names and names[0] in ("SEARCH_PATH", "ALL"):
            return  # back to the default, which stays among the candidates
        i = 1 if names and names[0] in ("SESSION", "LOCAL") else 0
        if i < len(toks) and toks[i].upper == "SEARCH_PATH":
            values = [t.text.lower() for t in toks[i + 2 :] if t.kind in ("word", "str", "qid")]
            self.add_search_path(values)

    def add_search_path(self, schemas: list[str]) -> None:
        """Unqualified names are tried in every schema any search_path of the batch named (a
        superset of where the server resolves them; conservative for deny lists)."""
        schemas = [s.strip().strip('"').lower() for s in schemas]
        schemas = [s for s in schemas if s and s not in ("$user", "default")]
        self.search_path = tuple(dict.fromkeys([*self.search_path, *schemas]))

    def scan(self, toks: list[_Tok], facts: _Facts, label: str, *, nested_kinds: bool) -> None:
        """Token scan of a generic command: dotted names are tables (or functions before '(')."""
        i = 0
        while i < len(toks):
            t = toks[i]
            if t.kind in ("word", "qid"):
                parts = [t]
                j = i + 1
                while j + 1 < len(toks) and toks[j].text == "." and toks[j + 1].kind in ("word", "qid"):
                    parts.append(toks[j + 1])
                    j += 2
                names = [p.text for p in parts]
                if (
                    nested_kinds
                    and len(parts) == 1
                    and t.kind == "word"
                    and t.upper.lower() in _NESTED_KEYWORDS
                ):
                    kw = t.upper.lower()
                    self.add_kind(facts, kw, self.label_detail(f"{t.upper} inside {self.lead}", label))
                if j < len(toks) and toks[j].text == "(":
                    self.function_ref(names, facts)
                elif not (len(parts) == 1 and t.kind == "word" and t.upper in _SCAN_SKIP) and not (
                    i > 0 and toks[i - 1].upper == "LANGUAGE"
                ):
                    self.table_ref(names, facts)
                i = j
            else:
                i += 1

    # -- PL/pgSQL ---------------------------------------------------------------------------

    def do_block(self, toks: list[_Tok], facts: _Facts) -> None:
        body = None
        language = "plpgsql"
        for i, t in enumerate(toks[1:], start=1):
            if t.upper == "LANGUAGE" and i + 1 < len(toks):
                language = toks[i + 1].text.lower()
            elif t.kind == "str" and body is None:
                body = t.text
        if body is None:
            raise _ParseFailure("has a DO statement without a body")
        self.routine_body(body, language, facts, "inside a DO block")

    def routine_body(self, body: str, language: str, facts: _Facts, label: str) -> None:
        if language == "sql":
            self.nested(body, facts, label, on_fail="opaque")
        elif language == "plpgsql":
            self.plpgsql(body, facts, label)
        else:
            facts.opaque.append(f"code in language {language!r} {label} cannot be analyzed")

    def plpgsql(self, body: str, facts: _Facts, label: str) -> None:
        if self.depth >= _MAX_NESTING:
            facts.opaque.append(f"SQL {label} is nested too deeply to analyze")
            return
        try:
            toks, _ = _lex(body, "postgres")
        except _ParseFailure:
            facts.opaque.append(f"the code {label} does not parse")
            return
        self.depth += 1
        try:
            declaring = False
            for chunk in _split(toks):
                declaring = self.plpgsql_statement(body, chunk, facts, label, declaring)
        finally:
            self.depth -= 1

    def plpgsql_statement(
        self, body: str, toks: list[_Tok], facts: _Facts, label: str, declaring: bool
    ) -> bool:
        def text(a: int, b: int | None = None) -> str:
            if a >= len(toks):
                return ""
            end = (
                toks[b - 1].end if b is not None and b > a else (toks[-1].end if b is None else toks[a].start)
            )
            return body[toks[a].start : end]

        def find(words, start=0) -> int | None:
            depth = 0
            for k in range(start, len(toks)):
                tx = toks[k].text
                depth += tx == "("
                depth -= tx == ")"
                if depth == 0 and toks[k].upper in words:
                    return k
            return None

        def expr(a: int, b: int | None = None) -> None:
            if not self.expression(text(a, b), facts, label):
                facts.opaque.append(f"an expression {label} does not parse")

        i = 0
        while i < len(toks):
            head = toks[i].upper
            if head == "DECLARE":
                declaring, i = True, i + 1
            elif head == "BEGIN":
                declaring, i = False, i + 1
            elif declaring:
                at = find((":=", "=", "DEFAULT"), i)
                if at is not None:
                    expr(at + 1)
                return True
            elif head == "<<":
                close = find((">>",), i)
                i = close + 1 if close is not None else len(toks)
            elif head == "END":
                return False
            elif head in ("IF", "ELSIF", "ELSEIF", "WHEN", "WHILE"):
                stop = find(("THEN", "LOOP"), i + 1)
                if stop is None:
                    facts.opaque.append(f"a {head} {label} could not be read")
                    return False
                if head != "WHEN" or toks[i + 1].upper not in ("OTHERS", "SQLSTATE"):
                    expr(i + 1, stop)
                i = stop + 1
            elif head == "EXCEPTION":
                i += 1
            elif head in ("ELSE", "LOOP"):
                i += 1
            elif head == "CASE":
                stop = find(("WHEN",), i + 1)
                if stop is None:
                    return False
                expr(i + 1, stop)
                i = stop
            elif head in ("FOR", "FOREACH"):
                in_at = find(("IN",), i + 1)
                loop_at = find(("LOOP",), i + 1)
                if in_at is None or loop_at is None:
                    facts.opaque.append(f"a FOR loop {label} could not be read")
                    return False
                first = toks[in_at + 1].upper if in_at + 1 < len(toks) else ""
                if first == "EXECUTE":
                    self.dynamic(body, toks[in_at + 2 : loop_at], facts, label)
                elif first in ("SELECT", "WITH", "VALUES", "TABLE"):
                    self.nested(text(in_at + 1, loop_at), facts, label, on_fail="opaque")
                else:
                    range_text = text(in_at + 1, loop_at).replace("..", ",")
                    if first == "ARRAY":
                        range_text = range_text[5:]
                    if not self.expression(range_text, facts, label):
                        facts.opaque.append(f"a FOR loop range {label} does not parse")
                i = loop_at + 1
            else:
                break
        if i >= len(toks):
            return declaring
        head = toks[i].upper
        nxt = toks[i + 1].upper if i + 1 < len(toks) else ""
        if head == "EXECUTE":
            self.dynamic(body, toks[i + 1 :], facts, label)
        elif head == "PERFORM":
            expr(i + 1)
        elif head == "RETURN":
            if nxt == "QUERY":
                if i + 2 < len(toks) and toks[i + 2].upper == "EXECUTE":
                    self.dynamic(body, toks[i + 3 :], facts, label)
                else:
                    self.nested(text(i + 2), facts, label, on_fail="opaque")
            else:
                expr(i + 2 if nxt == "NEXT" else i + 1)
        elif head == "RAISE":
            at = next((k for k in range(i + 1, len(toks)) if toks[k].kind == "str"), None)
            using = find(("USING",), i + 1)
            if at is not None and at + 1 < len(toks) and toks[at + 1].text == ",":
                expr(at + 2, using)
            if using is not None:
                for part in text(using + 1).split(","):
                    _, _, value = part.partition("=")
                    if value.strip() and not self.expression(value, facts, label):
                        facts.opaque.append(f"a RAISE option {label} does not parse")
        elif head in ("NULL", "GET", "FETCH", "MOVE", "CLOSE", "CONTINUE", "EXIT", "COMMIT", "ROLLBACK"):
            when = find(("WHEN",), i + 1)
            if head in ("EXIT", "CONTINUE") and when is not None:
                expr(when + 1)
            elif head in ("COMMIT", "ROLLBACK"):
                self.add_kind(facts, "transaction", self.label_detail(head, label))
        elif head == "OPEN":
            for_at = find(("FOR",), i + 1)
            if for_at is not None and for_at + 1 < len(toks):
                if toks[for_at + 1].upper == "EXECUTE":
                    self.dynamic(body, toks[for_at + 2 :], facts, label)
                else:
                    self.nested(text(for_at + 1), facts, label, on_fail="opaque")
        elif head == "ASSERT":
            expr(i + 1)
        elif nxt in (":=", "=") or (i + 2 < len(toks) and toks[i + 1].text in (".", "[")):
            at = find((":=", "="), i + 1)
            if at is None:
                facts.opaque.append(f"a statement {label} could not be read")
            else:
                expr(at + 1)
        else:
            self.plpgsql_sql(text(i), facts, label)
        return declaring

    def plpgsql_sql(self, text: str, facts: _Facts, label: str) -> None:
        """A SQL statement inside PL/pgSQL; `SELECT ... INTO var` assigns a variable there."""
        try:
            stmts = _parse_batch(text, "postgres")
        except _ParseFailure:
            facts.opaque.append(f"a statement {label} does not parse")
            return
        for stmt in stmts:
            if isinstance(stmt.ast, exp.Select) and stmt.ast.args.get("into"):
                stmt.ast.set("into", None)
            self.statement(stmt, facts, label)

    def dynamic(self, body: str, toks: list[_Tok], facts: _Facts, label: str) -> None:
        """EXECUTE <expr> [INTO ...] [USING ...]: resolvable only if <expr> is literal text."""
        end = next((k for k, t in enumerate(toks) if t.upper in ("INTO", "USING")), len(toks))
        parts = toks[:end]
        literal = []
        for k, t in enumerate(parts):
            if (k % 2 == 0 and t.kind == "str") or (k % 2 == 1 and t.text == "||"):
                if t.kind == "str":
                    literal.append(t.text)
                continue
            literal = None
            break
        if not parts or literal is None or len(parts) % 2 == 0:
            facts.opaque.append(f"EXECUTE of a dynamic expression {label}")
            return
        self.nested("".join(literal), facts, f"executed {label}", on_fail="opaque")

    # -- syntax trees -----------------------------------------------------------------------

    def tree(self, root: exp.Expr, facts: _Facts, label: str, *, count_root: bool) -> None:
        for node in root.walk():
            cls = type(node)
            kind = _CLASS_KIND.get(cls)
            if kind is None and cls is exp.Values and node is root:
                kind = "select"
            if kind is not None and (node is not root or count_root):
                self.node_kind(node, kind, root, facts, label)
            if cls is exp.Table:
                self.table_node(node, facts)
            elif isinstance(node, exp.Func):
                self.func_node(node, facts, label)
            elif cls is exp.Select:
                self.select_node(node, facts, label)
            elif cls in (exp.Update, exp.Delete):
                self.where_check(node, facts, label)
            elif cls is exp.TruncateTable:
                facts.where.append(self.label_detail("TRUNCATE removes every row", label))

    def node_kind(self, node: exp.Expr, kind: str, root: exp.Expr, facts: _Facts, label: str) -> None:
        word = kind.upper()
        if kind == "explain" and isinstance(node, exp.Describe):
            target = node.this
            if not isinstance(target, (exp.Query, exp.DML, exp.DDL, exp.Command)):
                kind, word = "show", "DESCRIBE"
            else:
                word = "EXPLAIN"
        if node is root:
            if _KEYWORD_KIND.get(self.lead.lower()) == kind and kind != "select":
                word = self.lead  # BEGIN, COMMIT, END, ANALYZE, ... as written
            detail = self.label_detail(word, label)
        else:
            where = "inside a WITH clause" if node.find_ancestor(exp.CTE) else "inside another statement"
            detail = f"{word} {where}" + (f" {label}" if label else "")
        write: bool | None = None
        if kind == "set":
            write = self.set_node(node)
        elif kind == "use":
            target = node.this
            name = target.name if isinstance(target, exp.Expr) else str(target or "")
            if name:
                self.current_db = name.lower()
                facts.schemas.append(_Ref(name, (name.lower(),)))
        elif kind == "pragma":
            write = not self.pragma_is_read(node, facts)
            if write:
                detail = f"PRAGMA {self.pragma_name(node)}"
        elif kind == "insert":
            conflict = node.args.get("conflict")
            upsert = conflict is not None and (
                conflict.args.get("expressions") or "UPDATE" in str(conflict.args.get("action") or "").upper()
            )
            if upsert:
                self.add_kind(facts, "update", detail.replace("INSERT", "INSERT ... UPDATE", 1))
            alternative = str(node.args.get("alternative") or "").upper()
            replacing = alternative == "REPLACE" or node.args.get("replace") or self.replacing
            if replacing:
                self.add_kind(facts, "delete", detail.replace("INSERT", "INSERT OR REPLACE", 1))
            if upsert or replacing:
                self.upsert_check(
                    node,
                    conflict if upsert else None,
                    facts,
                    label,
                    "REPLACE" if replacing and not upsert else "upsert",
                )
        elif kind == "merge":
            whens = node.args.get("whens")
            for when in whens.expressions if whens else []:
                then = when.args.get("then")
                if isinstance(then, exp.Var) and then.name.upper() == "DELETE":
                    self.add_kind(facts, "delete", f"DELETE inside MERGE{f' {label}' if label else ''}")
            self.merge_check(node, facts, label)
        elif kind == "create":
            self.create_body(node, facts)
        elif kind == "show" and isinstance(node, exp.Show):
            target, db = node.args.get("target"), node.args.get("db")
            names = [x.name for x in (db, target) if isinstance(x, exp.Expr) and x.name]
            if target is not None and names:
                self.table_ref(names, facts)
            elif names:
                facts.schemas.append(_Ref(names[-1], (names[-1].lower(),)))
        elif kind == "copy":
            files = " ".join(
                str(f.name if isinstance(f, exp.Expr) else f).upper() for f in node.args.get("files") or []
            )
            if "PROGRAM" in files:
                detail = self.label_detail("COPY ... PROGRAM", label)
        self.add_kind(facts, kind, detail, write=write)

    def set_node(self, node: exp.Set) -> bool:
        """Track search_path and MySQL user variables; user-variable assignments are not writes."""
        write = False
        for item in node.expressions:
            target = item.this if isinstance(item, exp.SetItem) else item
            if isinstance(target, (exp.EQ, exp.PropertyEQ)):
                left, right = target.this, target.expression
            else:
                left, right = target, None
            if self.dialect == "mysql" and isinstance(left, exp.Parameter) and not item.args.get("kind"):
                value = self.server_string(right)
                self.user_vars[left.name.lower()] = value
                continue
            write = True
            if (
                self.dialect == "postgres"
                and isinstance(left, (exp.Column, exp.Var))
                and left.name.lower() == "search_path"
            ):
                values = right.expressions if isinstance(right, exp.Tuple) else [right]
                names = [v.name.lower() for v in values if isinstance(v, exp.Expr) and v.name]
                self.add_search_path(names)
        return write

    @staticmethod
    def pragma_name(node: exp.Pragma) -> str:
        target = node.this
        left = target.this if isinstance(target, (exp.EQ, exp.PropertyEQ)) else target
        if isinstance(left, exp.Dot):
            left = left.expression
        return (left.name if isinstance(left, exp.Expr) else str(left or "")).lower()

    def pragma_is_read(self, node: exp.Pragma, facts: _Facts) -> bool:
        name = self.pragma_name(node)
        target = node.this
        has_value = isinstance(target, (exp.EQ, exp.PropertyEQ))
        if has_value and name in _PRAGMA_TABLE_ARG:
            value = target.expression
            if isinstance(value, exp.Expr) and value.name:
                self.table_ref([value.name], facts)
        if name in _PRAGMA_READ_WITH_ARG:
            return True
        return name in _PRAGMA_READ_NO_VALUE and not has_value

    def create_body(self, node: exp.Create, facts: _Facts) -> None:
        kind = str(node.args.get("kind") or "").upper()
        if kind not in ("FUNCTION", "PROCEDURE"):
            return
        body = node.args.get("expression")
        if isinstance(body, exp.Block) and any(isinstance(e, _STRING_NODES) for e in body.expressions):
            if len(body.expressions) != 1:
                facts.opaque.append(f"the body of CREATE {kind} has several parts and is not analyzed")
                return
            body = body.expressions[0]  # PROCEDURE ... AS '<body>' comes wrapped in a block
        if not isinstance(body, _STRING_NODES):
            return  # no body, or a SQL-standard body (RETURN ..., BEGIN ATOMIC): part of the tree walked
        language = "sql"
        props = node.args.get("properties")
        for prop in props.expressions if props else []:
            if isinstance(prop, exp.LanguageProperty):
                language = prop.name.lower()
        text = self.server_string(body)
        if text is None:
            facts.opaque.append(f"the body of CREATE {kind} cannot be read as the server would read it")
            return
        self.routine_body(text, language, facts, f"inside CREATE {kind}")

    def select_node(self, node: exp.Select, facts: _Facts, label: str) -> None:
        into = node.args.get("into")
        if into is not None:
            target = into.this
            is_var = isinstance(target, exp.Table) and isinstance(
                target.this, (exp.Parameter, exp.SessionParameter)
            )
            if not (self.dialect == "mysql" and is_var):
                self.add_kind(facts, "create", self.label_detail("SELECT ... INTO (creates a table)", label))
        if node.args.get("locks"):
            facts.writes.append(self.label_detail("SELECT ... FOR UPDATE/SHARE (takes row locks)", label))

    def merge_check(self, node: exp.Merge, facts: _Facts, label: str) -> None:
        """MERGE's UPDATE/DELETE actions change the target rows its ON (and WHEN ... AND) condition
        matches: judged like a WHERE, and the matched rows must be bounded by the source or by a
        restriction of the target to constants."""
        target = node.this
        targets = set()
        if isinstance(target, exp.Table):
            targets.add(target.name.lower())
            if target.alias:
                targets.add(target.alias.lower())
        on = node.args.get("on")
        whens = node.args.get("whens")
        for when in whens.expressions if whens else []:
            then = when.args.get("then")
            deleting = isinstance(then, exp.Var) and then.name.upper() == "DELETE"
            if not (when.args.get("matched") and (deleting or isinstance(then, exp.Update))):
                continue
            word = "MERGE ... DELETE" if deleting else "MERGE ... UPDATE"
            cond = on.copy() if isinstance(on, exp.Expr) else exp.true()
            if when.args.get("condition") is not None:
                cond = exp.and_(cond, when.args["condition"].copy())
            reason = _always_true(cond, targets, self.dialect)
            if not reason and not _mentions_target(cond, targets):
                reason = "does not restrict the target table"
            if (
                not reason
                and not _bounded_source(node.args.get("using"), self.dialect)
                and not _pins_target(cond, targets)
            ):
                reason = "matches every target row the source can name (the source is not bounded)"
            if reason:
                facts.where.append(self.label_detail(f"{word} with an ON condition that {reason}", label))

    def upsert_check(self, node: exp.Insert, conflict, facts: _Facts, label: str, word: str) -> None:
        """INSERT ... ON CONFLICT DO UPDATE / ON DUPLICATE KEY UPDATE / REPLACE change the existing
        rows the inserted rows collide with: bounded when the rows come from a VALUES list or a
        restricted query, or the DO UPDATE has a WHERE pinning the target."""
        source = node.args.get("expression")
        if _bounded_source(source, self.dialect):
            return
        where = conflict.args.get("where") if conflict is not None else None
        target = node.this.this if isinstance(node.this, exp.Schema) else node.this
        targets = {target.name.lower()} if isinstance(target, exp.Table) else set()
        if isinstance(target, exp.Table) and target.alias:
            targets.add(target.alias.lower())
        if (
            where is not None
            and not _always_true(where.this, targets, self.dialect)
            and _pins_target(where.this, targets)
        ):
            return
        facts.where.append(
            self.label_detail(
                f"{word} of rows from an unrestricted query (can change every existing row)", label
            )
        )

    def where_check(self, node: exp.Expr, facts: _Facts, label: str) -> None:
        if isinstance(node.parent, exp.When):
            return  # a MERGE action: judged with the MERGE's ON condition (merge_check)
        word = "UPDATE" if isinstance(node, exp.Update) else "DELETE"
        where = node.args.get("where")
        if where is None:
            facts.where.append(self.label_detail(f"{word} without WHERE", label))
            return
        targets = set()
        for table in [node.this, *(node.args.get("tables") or [])]:
            if isinstance(table, exp.Table):
                targets.add(table.name.lower())
                if table.alias:
                    targets.add(table.alias.lower())
        reason = _always_true(where.this, targets, self.dialect)
        joined = (
            node.args.get("from_")
            or node.args.get("using")
            or any(
                isinstance(t, exp.Table) and t.args.get("joins")
                for t in [node.this, *(node.args.get("tables") or [])]
            )
        )
        # The tables written: MySQL's DELETE t1 FROM ... names them; otherwise the first table.
        written = {
            t.alias_or_name.lower() for t in (node.args.get("tables") or []) if isinstance(t, exp.Table)
        }
        if not written and isinstance(node.this, exp.Table):
            written = {node.this.name.lower(), node.this.alias_or_name.lower()}
        if not reason and joined and not _mentions_target(where.this, written or targets):
            # UPDATE t ... FROM o WHERE o.x = 1 / DELETE FROM t USING o / MySQL UPDATE t JOIN o ...
            # WHERE o.x = 1: every row of t that joins.
            reason = "does not restrict the table written"
        if reason:
            snippet = _generator(self.dialect).generate(where.this, copy=False)
            snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
            facts.where.append(self.label_detail(f"{word} with a WHERE that {reason}: {snippet}", label))

    # -- references -------------------------------------------------------------------------

    def table_node(self, node: exp.Table, facts: _Facts) -> None:
        this = node.this
        if this is not None and not isinstance(this, exp.Identifier):
            return  # a table function (seen as a function) or a variable
        parent = node.parent
        kind = str(parent.args.get("kind") or "").upper() if parent is not None else ""
        names = [p for p in (node.catalog, node.db, node.name) if p]
        if not names:
            return
        if isinstance(parent, (exp.Create, exp.Drop, exp.Grant, exp.Revoke)) and kind in (
            "SCHEMA",
            "DATABASE",
        ):
            facts.schemas.append(_Ref(names[-1], (names[-1].lower(),)))
            return
        if isinstance(parent, exp.UserDefinedFunction) or (
            isinstance(parent, exp.Drop) and kind in ("FUNCTION", "PROCEDURE")
        ):
            self.function_ref(names, facts)
            return
        if isinstance(parent, exp.Use):
            return  # handled as a schema reference in node_kind
        if not node.db and not _is_write_target(node) and self.is_cte(node):
            return
        self.table_ref(names, facts)

    def is_cte(self, node: exp.Table) -> bool:
        """Does this unqualified name refer to a CTE visible at this point (not a real table)?"""
        key = _ident_key(node.this, self.dialect)
        grandchild: exp.Expr | None = None
        child: exp.Expr = node
        parent = node.parent
        while parent is not None:
            with_ = parent.args.get("with_")
            if isinstance(with_, exp.With):
                ctes = with_.expressions
                names = [
                    _ident_key(c.args["alias"].this, self.dialect) if c.args.get("alias") else None
                    for c in ctes
                ]
                if child is with_:
                    # We came up through one of the CTEs: it sees the earlier ones (all, if recursive).
                    pos = next((k for k, c in enumerate(ctes) if c is grandchild), len(ctes))
                    visible = names if with_.args.get("recursive") else names[:pos]
                else:
                    visible = names
                if key in visible:
                    return True
            grandchild, child, parent = child, parent, parent.parent
        return False

    def table_ref(self, names: list[str], facts: _Facts) -> None:
        low = [n.lower() for n in names]
        display = ".".join(names)
        name = low[-1]
        cands = {name}
        schemas: list[str] = []
        if len(low) >= 2:
            cands.add(f"{low[-2]}.{name}")
            schemas.append(low[-2])
            if len(low) >= 3:
                cands.add(".".join(low[-3:]))
        else:
            defaults = (
                list(self.search_path)
                if self.dialect != "mysql"
                else ([self.current_db] if self.current_db else [])
            )
            if self.dialect == "postgres" and name.startswith("pg_"):
                defaults.append("pg_catalog")
            for schema in defaults:
                cands.add(f"{schema}.{name}")
                schemas.append(schema)
        facts.tables.append(_Ref(display, tuple(sorted(cands))))
        if schemas:
            facts.schemas.append(_Ref(display, tuple(schemas)))

    def function_ref(self, names: list[str], facts: _Facts) -> None:
        low = [n.lower() for n in names]
        cands = (low[-1], ".".join(low[-2:])) if len(low) >= 2 else (low[-1],)
        facts.functions.append(_Ref(".".join(names), cands))
        if len(low) >= 2:
            facts.schemas.append(_Ref(".".join(names), (low[-2],)))
        if _glob_any(self.denied, (low[-1],)):
            facts.writes.append(f"calls {low[-1]}() (side effects or server access)")
        for pattern, cls in self.side_effect_functions:
            if _glob_any((pattern,), (low[-1],)):
                facts.side_effects.append((cls, f"calls {low[-1]}() ({cls.replace('_', ' ')})"))
                break

    def func_node(self, node: exp.Func, facts: _Facts, label: str) -> None:
        if isinstance(node, (exp.Binary, exp.Connector, exp.Unary, exp.Not)):
            return  # operators sqlglot models as functions
        if isinstance(node, exp.Anonymous):
            name = node.name
            names = [name] if name else []
        else:
            names = [n.lower() for n in node.sql_names()]
            name = names[0] if names else node.key
        if not names:
            return
        parent = node.parent
        schema = None
        if isinstance(parent, exp.Dot) and parent.expression is node and isinstance(parent.this, exp.Expr):
            schema = parent.this.name  # schema.fn(...)
        elif isinstance(parent, exp.Table) and parent.this is node and parent.db:
            schema = parent.db  # FROM schema.fn(...)
        for n in names[:3]:
            self.function_ref([schema, n] if schema else [n], facts)
        lname = (name or "").lower()
        args = node.expressions if isinstance(node, exp.Anonymous) else [a for a in node.args.values() if a]
        chooser = self.sql_text_functions.get(lname)
        if chooser is not None:
            position = chooser(len(args))
            if position is not None:
                arg = args[position] if position < len(args) else None
                literal = self.server_string(arg)
                if literal is not None:
                    self.nested(literal, facts, f"inside {lname}()", on_fail="opaque")
                else:
                    facts.opaque.append(f"{lname}() runs SQL that is not a string literal")
        if lname == "set_config" and self.dialect == "postgres" and len(args) >= 2:
            setting, value = self.server_string(args[0]), self.server_string(args[1])
            if setting is None:
                facts.opaque.append("set_config() of a setting named by an expression")
            elif setting.strip().lower() == "search_path":
                if value is not None:
                    self.add_search_path(value.split(","))
                else:
                    facts.opaque.append("set_config() sets search_path to a computed value")
        reads = self.table_name_functions.get(lname)
        if reads is not None:
            arg = self.server_string(args[0]) if args else None
            if reads == "all":
                facts.opaque.append(f"{lname}() reads every table of the database")
            elif arg is None:
                facts.opaque.append(f"{lname}() reads a {reads} named by an expression")
            else:
                parts = _split_name(arg, self.dialect)
                if not parts:
                    facts.opaque.append(f"{lname}() reads a {reads} whose name cannot be read")
                elif reads == "table":
                    self.table_ref(parts, facts)
                else:
                    facts.schemas.append(_Ref(parts[-1], (parts[-1].lower(),)))


def _split_name(text: str, dialect: str) -> list[str]:
    """'billing."Invoices"' -> ['billing', 'Invoices'] (PostgreSQL folds unquoted parts)."""
    parts = []
    for m in re.finditer(
        r'\s*(?:"((?:[^"]|"")*)"|`((?:[^`]|``)*)`|\[([^\]]*)\]|([^."`\[\s]+))\s*(\.|$)', text
    ):
        quoted = next((g for g in m.group(1, 2, 3) if g is not None), None)
        parts.append(quoted if quoted is not None else m.group(4))
        if not m.group(5):
            break
    return parts if 1 <= len(parts) <= 3 and all(parts) else []


_SCAN_SKIP = frozenset(
    {
        "TABLE",
        "TABLES",
        "ONLY",
        "FULL",
        "VERBOSE",
        "FREEZE",
        "ANALYZE",
        "ANALYSE",
        "IN",
        "MODE",
        "NOWAIT",
        "SHARE",
        "EXCLUSIVE",
        "ACCESS",
        "ROW",
        "UPDATE",
        "READ",
        "WRITE",
        "LOCAL",
        "LOW_PRIORITY",
        "INDEX",
        "SCHEMA",
        "DATABASE",
        "SYSTEM",
        "MATERIALIZED",
        "VIEW",
        "CONCURRENTLY",
        "WITH",
        "DATA",
        "NO",
        "TO",
        "AS",
        "ON",
        "USING",
        "TRUE",
        "FALSE",
        "FUNCTION",
        "PROCEDURE",
        "RETURNS",
        "SETOF",
        "LANGUAGE",
        "TRIGGER",
        "EXTENSION",
        "RULE",
        "INSTEAD",
        "ALSO",
        "BEFORE",
        "AFTER",
        "EACH",
        "STATEMENT",
        "EXECUTE",
        "OR",
        "REPLACE",
        "IF",
        "EXISTS",
        "NOT",
        "CASCADE",
        "RESTRICT",
        "ROLE",
        "USER",
        "SESSION",
        "AUTHORIZATION",
        "TEMP",
        "TEMPORARY",
        "UNLOGGED",
        "SECURITY",
        "DEFINER",
        "INVOKER",
        "IMMUTABLE",
        "STABLE",
        "VOLATILE",
        "STRICT",
        "PARALLEL",
        "SAFE",
        "COST",
        "ROWS",
        "DO",
        "NOTHING",
        "SELECT",
        "INSERT",
        "DELETE",
        "FROM",
        "WHERE",
        "AND",
        "INTO",
        "VALUES",
        "BEGIN",
        "END",
        "FOR",
        "OF",
        "NEW",
        "OLD",
        "REFERENCING",
        "WHEN",
        "THEN",
        "SET",
        "DEFAULT",
        "ALL",
        "PRIVILEGES",
        "PUBLIC",
    }
)


def _text_from(stmt: _Stmt, tok: _Tok) -> str:
    """Statement text from `tok` to the end of the statement."""
    return stmt.text[tok.start - stmt.base :]


_WRITE_TARGET_PARENTS = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.DDL, exp.TruncateTable, exp.Copy)


def _is_write_target(node: exp.Table) -> bool:
    """The table an INSERT/UPDATE/DELETE/MERGE/DDL statement writes: servers never resolve it to
    a CTE of the same name, so `WITH t AS (...) DELETE FROM t` deletes from the real table t."""
    parent, key = node.parent, node.arg_key
    if isinstance(parent, exp.Schema):  # INSERT INTO t (cols)
        parent, key = parent.parent, parent.arg_key
    return isinstance(parent, _WRITE_TARGET_PARENTS) and key in ("this", "tables", "expressions")


def _column_owner(col: exp.Column) -> str | None:
    return col.table.lower() if col.table else None


def _mentions_target(cond: exp.Expr, targets: set[str]) -> bool:
    """Does the condition use a column of the written table (qualified by its name or alias, or
    unqualified, which may be it)?"""
    return any(_column_owner(c) in targets or _column_owner(c) is None for c in cond.find_all(exp.Column))


_PREDICATES = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.In,
    exp.Between,
    exp.Like,
    exp.ILike,
    exp.Is,
)


def _pins_target(cond: exp.Expr, targets: set[str]) -> bool:
    """Some predicate compares a target column with constants only (t.id = 5, t.id IN (1, 2))."""
    for pred in cond.find_all(*_PREDICATES):
        cols = list(pred.find_all(exp.Column))
        if cols and all(
            _column_owner(c) in targets or (_column_owner(c) is None and len(targets) > 0) for c in cols
        ):
            if not any(isinstance(x, (exp.Select, exp.Subquery)) for x in pred.walk()):
                if len({c.name.lower() for c in cols}) == 1 and len(cols) == 1:
                    return True
    return False


def _bounded_source(source, dialect: str) -> bool:
    """Rows that are spelled out (VALUES, SELECT of constants) or come from a restricted query."""
    while isinstance(source, (exp.Subquery, exp.Paren)):
        source = source.this
    if isinstance(source, exp.Values):
        return True
    if isinstance(source, exp.Select):
        if source.args.get("limit") is not None and isinstance(source.args["limit"].expression, exp.Literal):
            return True
        if not source.args.get("from_"):
            return True
        where = source.args.get("where")
        if where is not None and not _always_true(where.this, set(), dialect):
            tables = {t.alias_or_name.lower() for t in source.find_all(exp.Table)}
            return _pins_target(where.this, tables)
    return False


def _skip_parens(toks: list[_Tok], i: int) -> int:
    depth = 0
    while i < len(toks):
        depth += toks[i].text == "("
        depth -= toks[i].text == ")"
        i += 1
        if depth == 0:
            break
    return i


def _ident_key(ident, dialect: str) -> str | None:
    if not isinstance(ident, exp.Identifier):
        return None
    if dialect == "postgres" and not ident.quoted:
        return ident.name.lower()
    return ident.name


# -- require_where --------------------------------------------------------------------------------


_SIMPLIFY_MAX_NODES = 300  # sqlglot's simplifier is quadratic on long AND/OR chains


def _simplified(e: exp.Expr, dialect: str) -> exp.Expr:
    try:
        return simplify(e.copy(), dialect=dialect)
    except Exception:  # the simplifier is best effort; fall back to the raw expression
        return e


def _fold(e: exp.Expr, dialect: str) -> exp.Expr:
    """Constant-fold a condition: whole if small, else each constant AND/OR operand on its own."""
    if sum(1 for _ in zip(e.walk(), range(_SIMPLIFY_MAX_NODES + 1), strict=False)) <= _SIMPLIFY_MAX_NODES:
        return _simplified(e, dialect)
    return _fold_operands(e, dialect)


def _fold_operands(e: exp.Expr, dialect: str) -> exp.Expr:
    e = _unparen(e)
    if isinstance(e, exp.Connector):
        operands = [_fold_operands(op, dialect) for op in e.flatten()]
        return (exp.or_ if isinstance(e, exp.Or) else exp.and_)(*operands, copy=False, wrap=False)
    if e.find(exp.Column) is None:
        return _simplified(e, dialect)  # a constant operand: fold it (1=1, 'a'='a', NOT FALSE)
    return e


def _always_true(cond: exp.Expr, targets: set[str], dialect: str) -> str | None:
    return _taut(_fold(cond, dialect), targets, dialect)


def _unparen(e: exp.Expr) -> exp.Expr:
    while isinstance(e, exp.Paren):
        e = e.this
    return e


def _const_false(e: exp.Expr) -> bool:
    e = _unparen(e)
    if isinstance(e, exp.Boolean):
        return not e.this
    if isinstance(e, exp.Null):
        return True
    if isinstance(e, exp.Literal):
        if e.is_string:
            return e.this.strip().lower() in ("", "0", "f", "false", "n", "no", "off")
        try:
            return float(e.this) == 0
        except ValueError:
            return False
    if isinstance(e, exp.Not) and isinstance(_unparen(e.this), exp.Boolean):
        return bool(_unparen(e.this).this)
    return False


def _canon(e: exp.Expr, targets: set[str], dialect: str) -> str:
    """SQL text of `e` with the target table's own qualifier dropped (t.id and id are the same)."""
    if any(col.table and col.table.lower() in targets for col in e.find_all(exp.Column)):
        e = e.copy()
        for col in e.find_all(exp.Column):
            if col.table and col.table.lower() in targets:
                col.set("table", None)
    return _generator(dialect).generate(e, copy=False).lower()


def _generator(dialect: str):
    cache = getattr(_local, "generators", None)
    if cache is None:
        cache = _local.generators = {}
    gen = cache.get(dialect)
    if gen is None:
        gen = cache[dialect] = Dialect.get_or_raise(dialect).generator()
    return gen


def _taut(e: exp.Expr, targets: set[str], dialect: str) -> str | None:
    e = _unparen(e)
    if isinstance(e, exp.Boolean):
        return "is always true" if e.this else None
    if _const_false(e):
        return None
    if not any(True for _ in e.find_all(exp.Column)):
        return "refers to no column"
    if isinstance(e, exp.Or):
        branches = list(e.flatten())
        for branch in branches:
            reason = _taut(branch, targets, dialect)
            if reason:
                return reason
        polarity: dict[str, set[bool]] = {}
        for branch in branches:
            key, positive = _polar(branch, targets, dialect)
            polarity.setdefault(key, set()).add(positive)
            if len(polarity[key]) == 2:
                return "holds a condition and its negation"
        return None
    if isinstance(e, exp.And):
        reasons = [_taut(b, targets, dialect) for b in e.flatten()]
        return reasons[0] if all(reasons) else None
    if isinstance(e, (exp.EQ, exp.NullSafeEQ, exp.GTE, exp.LTE, exp.Like, exp.ILike)):
        left, right = e.this, e.expression
        if isinstance(e, (exp.Like, exp.ILike)) and isinstance(right, exp.Literal) and right.is_string:
            if right.this and set(right.this) == {"%"}:
                return "matches every value (LIKE '%')"
        if (
            left is not None
            and right is not None
            and _canon(left, targets, dialect) == _canon(right, targets, dialect)
        ):
            return "compares an expression with itself"
    if isinstance(e, exp.Is) and isinstance(e.expression, exp.Boolean) and e.expression.this:
        return _taut(e.this, targets, dialect)
    return None


def _polar(e: exp.Expr, targets: set[str], dialect: str) -> tuple[str, bool]:
    e = _unparen(e)
    positive = True
    while isinstance(e, exp.Not):
        positive = not positive
        e = _unparen(e.this)
    c = lambda x: _canon(x, targets, dialect)  # noqa: E731
    if isinstance(e, (exp.EQ, exp.NEQ)):
        a, b = sorted((c(e.this), c(e.expression)))
        return f"eq:{a}|{b}", positive if isinstance(e, exp.EQ) else not positive
    if isinstance(e, (exp.GT, exp.LTE)):
        return f"gt:{c(e.this)}|{c(e.expression)}", positive if isinstance(e, exp.GT) else not positive
    if isinstance(e, (exp.LT, exp.GTE)):
        return f"gt:{c(e.expression)}|{c(e.this)}", positive if isinstance(e, exp.LT) else not positive
    if isinstance(e, exp.Is) and isinstance(e.expression, exp.Null):
        return f"null:{c(e.this)}", positive != bool(e.args.get("negate"))
    return c(e), positive


def _analyze(text: str, dialect: str) -> _Analysis:
    return _Analyzer(dialect).run(text)
