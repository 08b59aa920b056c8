"""The dialect-faithful lexer: strings, escapes, dollar quotes, nested comments, MySQL `#` and
executable comments; it splits a batch where the server would, so the parser can be checked."""

from __future__ import annotations

import re
from dataclasses import dataclass

from governance import sql_strings

# ---------------------------------------------------------------------------------------------
# An independent lexer per dialect: what the SERVER would treat as code
# ---------------------------------------------------------------------------------------------


# Real statements that sqlglot reads as bare expressions ("LISTEN c" as the column LISTEN aliased
# c): they are classified by their keyword like any command, not refused as unparseable.
_BARE_STATEMENT_WORDS = frozenset(
    "LISTEN NOTIFY UNLISTEN DISCARD CHECKPOINT FETCH MOVE CLOSE DECLARE DEALLOCATE RELEASE SAVEPOINT "
    "REASSIGN SECURITY IMPORT LOAD FLUSH PURGE RESET HANDLER XA CHECKSUM OPTIMIZE REPAIR SHUTDOWN".split()
)


class _ParseFailure(Exception):
    """The input (or a statement the input runs) cannot be analyzed: fail closed."""


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str  # word | str | qid | num | param | op | semi
    text: str  # source text (for str/qid: the decoded value)
    start: int
    end: int  # exclusive
    upper: str = ""


_NONASCII = "\u0080-\U0010ffff"
_PG_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>--[^\n\r]*)
   |(?P<block>/\*)
   |(?P<estr>[eE]')
   |(?P<ustr>[uU]&')
   |(?P<uqid>[uU]&")
   |(?P<pstr>[bBxXnN]')
   |(?P<str>')
   |(?P<qid>")
   |(?P<dollar>\$(?:[A-Za-z_{_NONASCII}][A-Za-z0-9_{_NONASCII}]*)?\$)
   |(?P<param>\$\d+)
   |(?P<num>(?:\d|\.\d)[\w.]*)
   |(?P<word>[A-Za-z_{_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>::|:=|\|\||<<|>>|\.\.|.)
    """,
    re.X | re.S,
)
_MY_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>(?:\#|--(?=[\x00-\x20]|\Z))[^\n]*)
   |(?P<exec>/\*[mM]?!\d{{0,6}})
   |(?P<block>/\*)
   |(?P<execend>\*/)
   |(?P<pstr>[xXbB]')
   |(?P<nstr>[nN]')
   |(?P<str>')
   |(?P<dstr>")
   |(?P<bq>`)
   |(?P<param>@@?)
   |(?P<num>(?:\d|\.\d)[\w.$]*)
   |(?P<word>[A-Za-z_${_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>:=|\|\||&&|<=>|.)
    """,
    re.X | re.S,
)
_LITE_LEX = re.compile(
    rf"""
    (?P<ws>[ \t\n\r\f\v]+)
   |(?P<line>--[^\n]*)
   |(?P<block>/\*)
   |(?P<pstr>[xX]')
   |(?P<str>')
   |(?P<qid>")
   |(?P<bq>`)
   |(?P<br>\[)
   |(?P<num>(?:\d|\.\d)[\w.]*)
   |(?P<param>[?:@$][\w$]*)
   |(?P<word>[A-Za-z_{_NONASCII}][A-Za-z0-9_${_NONASCII}]*)
   |(?P<semi>;)
   |(?P<op>\|\||.)
    """,
    re.X | re.S,
)
_STD_STR_END = re.compile(r"(?:[^']|'')*'", re.S)
_ESC_STR_END = re.compile(r"(?:[^'\\]|\\.|'')*'", re.S)
_MY_DSTR_END = re.compile(r'(?:[^"\\]|\\.|"")*"', re.S)
_QID_END = re.compile(r'(?:[^"]|"")*"', re.S)
_BQ_END = re.compile(r"(?:[^`]|``)*`", re.S)
_PG_COMMENT_EDGE = re.compile(r"/\*|\*/")
_WORD_RE = re.compile(rf"[A-Za-z_${_NONASCII}][A-Za-z0-9_${_NONASCII}]*")


def _lex(text: str, dialect: str) -> tuple[list[_Tok], str]:
    """Tokens as the server's lexer would see them, and the text to give sqlglot (for MySQL,
    executable comments opened up; same length, so offsets line up). Raises _ParseFailure."""
    master = {"postgres": _PG_LEX, "mysql": _MY_LEX, "sqlite": _LITE_LEX}[dialect]
    toks: list[_Tok] = []
    out = list(text) if dialect == "mysql" else None
    in_exec = False
    pos, n = 0, len(text)
    while pos < n:
        m = master.match(text, pos)
        kind = m.lastgroup
        end = m.end()
        if kind in ("ws", "line"):
            pass
        elif kind == "block":
            if dialect == "postgres":
                depth, scan = 1, end
                while depth:
                    edge = _PG_COMMENT_EDGE.search(text, scan)
                    if not edge:
                        raise _ParseFailure("has an unterminated /* comment")
                    depth += 1 if edge.group() == "/*" else -1
                    scan = edge.end()
                end = scan
            else:
                close = text.find("*/", end)
                if close < 0:
                    if dialect == "sqlite":
                        end = n
                    else:
                        raise _ParseFailure("has an unterminated /* comment")
                else:
                    end = close + 2
        elif kind == "exec":
            in_exec = True
            out[pos:end] = " " * (end - pos)
        elif kind == "execend":
            if in_exec:
                in_exec = False
                out[pos:end] = "  "
            else:
                toks.append(_Tok("op", "*", pos, pos + 1))
                end = pos + 1
        elif kind in ("str", "pstr", "ustr", "estr", "nstr", "dstr"):
            tok, end = _string_token(text, m, dialect, kind)
            prev = toks[-1] if toks else None
            if (
                dialect == "mysql"
                and prev is not None
                and prev.kind == "str"
                and tok.kind == "str"
                and kind in ("str", "dstr")
            ):
                # MySQL concatenates adjacent literals ('DEL' 'ETE' is 'DELETE'): one token, as the server reads it.
                toks[-1] = _Tok("str", prev.text + tok.text, prev.start, tok.end)
            else:
                toks.append(tok)
        elif kind in ("qid", "uqid", "bq", "br"):
            if kind == "br":
                close = text.find("]", end)
                if close < 0:
                    raise _ParseFailure("has an unterminated [identifier]")
                end = close + 1
                value = text[pos + 1 : close]
            else:
                sm = (_BQ_END if kind == "bq" else _QID_END).match(text, end)
                if not sm:
                    raise _ParseFailure("has an unterminated quoted identifier")
                q = "`" if kind == "bq" else '"'
                value = text[m.end() : sm.end() - 1].replace(q + q, q)
                end = sm.end()
            toks.append(_Tok("qid", value, pos, end))
        elif kind == "dollar":
            tag = m.group()
            close = text.find(tag, end)
            if close < 0:
                raise _ParseFailure("has an unterminated dollar-quoted string")
            toks.append(_Tok("str", text[end:close], pos, close + len(tag)))
            end = close + len(tag)
        elif kind == "word":
            toks.append(_Tok("word", m.group(), pos, end, m.group().upper()))
        elif kind == "semi":
            toks.append(_Tok("semi", ";", pos, end))
        else:  # num, param, op
            toks.append(_Tok(kind, m.group(), pos, end, m.group().upper()))
        pos = end
    return toks, ("".join(out) if out is not None else text)


_PG_CONTINUE = re.compile(r"(?:[ \t\f]|--[^\n\r]*)*[\n\r](?:[ \t\n\r\f\v]+|--[^\n\r]*[\n\r])*'")
_UESCAPE = re.compile(r"(?:\s|--[^\n\r]*|/\*(?:[^*]|\*(?!/))*\*/)*UESCAPE\b", re.I)
_UESCAPE_CHAR = re.compile(r"(?:\s|--[^\n\r]*|/\*(?:[^*]|\*(?!/))*\*/)*'((?:[^']|'')*)'")


def _string_token(text: str, m: re.Match, dialect: str, kind: str) -> tuple[_Tok, int]:
    """One string literal as the server reads it: decoded exactly (governance/sql_strings.py),
    PostgreSQL continuation lines joined, a U&'' string's UESCAPE applied. Bit and binary strings
    that are not text get kind "bits" (never re-parsed as SQL). Raises _ParseFailure where the
    server's reading is invalid or uncertain."""
    pos, quote_end = m.start(), m.end()
    if dialect == "mysql" and kind in ("str", "nstr", "dstr"):
        finder = _MY_DSTR_END if kind == "dstr" else _ESC_STR_END
    elif kind == "estr":
        finder = _ESC_STR_END
    else:
        finder = _STD_STR_END
    parts = []
    while True:
        sm = finder.match(text, quote_end)
        if not sm:
            raise _ParseFailure("has an unterminated string")
        end = sm.end()
        parts.append(text[quote_end : end - 1])
        if dialect != "postgres":
            break
        cont = _PG_CONTINUE.match(text, end)
        if not cont:
            break
        quote_end = cont.end()  # 'a'<newline>'b' is one literal 'ab' (same kind as the first part)
    prefix = text[pos : m.end() - 1].upper()
    try:
        if dialect == "mysql":
            if kind == "pstr":
                raw = "".join(parts)
                if prefix == "X":
                    if len(raw) % 2 or not re.fullmatch(r"[0-9A-Fa-f]*", raw):
                        raise sql_strings.Undecodable("invalid hexadecimal literal")
                    data = bytes.fromhex(raw)
                else:  # b'0101'
                    if not re.fullmatch(r"[01]*", raw):
                        raise sql_strings.Undecodable("invalid bit literal")
                    data = int(raw or "0", 2).to_bytes((len(raw) + 7) // 8, "big")
                try:
                    return _Tok("str", sql_strings.utf8(data), pos, end), end
                except sql_strings.Undecodable:
                    return _Tok("bits", raw, pos, end), end
            quote = '"' if kind == "dstr" else "'"
            data = b"".join(sql_strings.mysql_bytes(p, quote) for p in parts)
            if b"\0" in data:
                return _Tok("bits", "", pos, end), end
            return _Tok("str", sql_strings.utf8(data), pos, end), end
        if kind == "estr":
            data = b"".join(sql_strings.pg_escape_bytes(p) for p in parts)
            return _Tok("str", sql_strings.utf8(data), pos, end), end
        if kind == "ustr":
            escape = "\\"
            um = _UESCAPE.match(text, end)
            if um:
                cm = _UESCAPE_CHAR.match(text, um.end())
                if not cm:
                    raise sql_strings.Undecodable("UESCAPE must be followed by a one-character string")
                escape = cm.group(1).replace("''", "'")
                end = cm.end()
            return _Tok("str", sql_strings.pg_unicode("".join(parts), escape), pos, end), end
        if kind == "pstr" and prefix in ("B", "X"):
            return _Tok("bits", "".join(parts), pos, end), end
        return _Tok("str", "".join(p.replace("''", "'") for p in parts), pos, end), end
    except sql_strings.Undecodable as exc:
        raise _ParseFailure(
            f"has a string literal the server would not read with certainty ({exc})"
        ) from None


def _split(toks: list[_Tok]) -> list[list[_Tok]]:
    chunks, cur = [], []
    for tok in toks:
        if tok.kind == "semi":
            chunks.append(cur)
            cur = []
        else:
            cur.append(tok)
    chunks.append(cur)
    return chunks
