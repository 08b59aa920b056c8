"""sqlglot plumbing: thread-local tokenizers and parsers per dialect, and `_parse_batch`, which trusts a
parse only if sqlglot saw every code word and statement separator the lexer found."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError, TokenError
from sqlglot.tokens import TokenType

from governance.guardrails.lexer import _WORD_RE, _lex, _ParseFailure, _split, _Tok
from governance.guardrails.vocabulary import MAX_STATEMENTS

# ---------------------------------------------------------------------------------------------
# sqlglot plumbing (thread-local tokenizers and parsers)
# ---------------------------------------------------------------------------------------------


class _DropCommandFallbackWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in str(record.msg)


logging.getLogger("sqlglot").addFilter(_DropCommandFallbackWarning())


_local = threading.local()
_STRINGY = frozenset(t for t in TokenType if "STRING" in t.name) | {TokenType.IDENTIFIER}


def _sqlglot(dialect: str):
    cache = getattr(_local, "cache", None)
    if cache is None:
        cache = _local.cache = {}
    pair = cache.get(dialect)
    if pair is None:
        d = Dialect.get_or_raise(dialect)
        pair = cache[dialect] = (d.tokenizer(), d.parser())
    return pair


def _short(exc: Exception) -> str:
    if isinstance(exc, ParseError) and exc.errors:
        err = exc.errors[0]
        near = (err.get("highlight") or "").strip()
        desc = err.get("description") or "syntax error"
        where = f" at line {err.get('line')}, column {err.get('col')}" if err.get("line") else ""
        return f"{desc}{f' near {near[:40]!r}' if near else ''}{where}"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return message[:160]


@dataclass
class _Stmt:
    ast: exp.Expr | None
    toks: list[_Tok]  # the server's view of the statement (absolute offsets)
    text: str  # the statement's text, between separators
    base: int  # offset of `text` in the (rewritten) input


def _parse_batch(text: str, dialect: str) -> list[_Stmt]:
    """Lex, cross-check with sqlglot's tokenizer, split and parse. Raises _ParseFailure."""
    if "\x00" in text:
        raise _ParseFailure("contains a NUL character")
    text = text.replace("\f", " ").replace("\v", " ")
    toks, sql = _lex(text, dialect)
    tokenizer, parser = _sqlglot(dialect)
    try:
        sg = tokenizer.tokenize(sql)
    except (TokenError, SqlglotError) as exc:
        raise _ParseFailure(_short(exc)) from None

    # Cross-check: every code word and separator the server's lexer sees, sqlglot must see too.
    mine = Counter(w.lower() for t in toks if t.kind == "word" for w in _WORD_RE.findall(t.text))
    seen: Counter = Counter()
    commands = tokenizer.COMMANDS
    for i, t in enumerate(sg):
        if t.token_type in _STRINGY:
            tail = i > 0 and sg[i - 1].token_type in commands and t.token_type == TokenType.STRING
            if tail and (i == 1 or sg[i - 2].token_type in tokenizer.COMMAND_PREFIX_TOKENS):
                # sqlglot keeps the rest of a command as raw text: its code words count.
                try:
                    tail_toks, _ = _lex(t.text, dialect)
                except _ParseFailure:
                    tail_toks = []
                seen.update(
                    w.lower() for tt in tail_toks if tt.kind == "word" for w in _WORD_RE.findall(tt.text)
                )
            continue
        seen.update(w.lower() for w in _WORD_RE.findall(t.text))
    missing = [w for w, c in mine.items() if seen[w] < c]
    if missing:
        raise _ParseFailure(
            f"is tokenized differently than the server would (around {missing[0]!r}); refusing to guess"
        )
    my_semis = [t.start for t in toks if t.kind == "semi"]
    if len(my_semis) >= MAX_STATEMENTS:
        raise _ParseFailure(
            f"has {len(my_semis) + 1} statements or more; at most {MAX_STATEMENTS} are analyzed"
        )
    sg_semis = [t.start for t in sg if t.token_type == TokenType.SEMICOLON]
    if my_semis != sg_semis:
        raise _ParseFailure("has statement separators that are ambiguous; refusing to guess")

    sg_chunks: list[list] = [[]]
    for t in sg:
        if t.token_type == TokenType.SEMICOLON:
            sg_chunks.append([])
        else:
            sg_chunks[-1].append(t)
    my_chunks = _split(toks)
    bounds = [-1, *my_semis, len(sql)]
    stmts = []
    for k, (sg_chunk, my_chunk) in enumerate(zip(sg_chunks, my_chunks, strict=True)):
        if not my_chunk:
            continue
        try:
            ast = parser.parse(sg_chunk, sql)[0] if sg_chunk else None
        except (ParseError, TokenError, SqlglotError) as exc:
            ast = _fallback_parse(my_chunk, dialect, exc)
        except RecursionError:
            raise _ParseFailure("is nested too deeply to analyze") from None
        stmts.append(_Stmt(ast, my_chunk, sql[bounds[k] + 1 : bounds[k + 1]], bounds[k] + 1))
    return stmts


def _fallback_parse(toks: list[_Tok], dialect: str, exc: Exception) -> None:
    """Statements sqlglot does not parse but we can still classify by keyword (MySQL DO)."""
    if dialect == "mysql" and toks[0].upper == "DO":
        return None  # handled by the keyword path, which parses the expressions itself
    raise _ParseFailure(_short(exc))
