"""String literals decoded exactly as the servers decode them (used by governance/guardrails.py).

Whenever the guardrail engine re-parses SQL that sits inside a string (a DO body, a function
body, EXECUTE of a literal, MySQL PREPARE), it must read the string the server will run, not a
near miss: PostgreSQL turns ``E'\\x44ELETE'`` into ``DELETE`` and ``U&'d\\0061t'`` into
``dat``. These functions follow the servers' lexers (PostgreSQL ``scan.l``, MySQL
``sql_lex.cc``); the tests compare them with what the real servers return for the same
literals. Anything the server itself would reject, or that we cannot decode with certainty, raises
`Undecodable`, and the engine fails closed.

Hand-written because no maintained Python library decodes SQL string literals per dialect;
sqlglot's tokenizer knows only a few escapes (the very gap this module closes).
"""

from __future__ import annotations

import re

__all__ = ["Undecodable", "pg_escape_bytes", "pg_unicode", "mysql_bytes", "utf8"]


class Undecodable(ValueError):
    """The literal is invalid for the server, or cannot be decoded with certainty."""


# PostgreSQL E'' strings (scan.l, state xe): \b \f \n \r \t, octal \o..\ooo (one byte), hex \xh
# or \xhh (one byte), \uXXXX and \UXXXXXXXX (a code point, surrogate pairs combined), and a
# backslash before any other character stands for that character. '' is a quote.
_PG_SINGLE = {"b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t", "v": b"\v"}
_PG_ESC = re.compile(
    r"""\\(?:(?P<oct>[0-7]{1,3})|x(?P<hex>[0-9A-Fa-f]{1,2})|u(?P<u4>[0-9A-Fa-f]{4})|U(?P<u8>[0-9A-Fa-f]{8})
    |(?P<ubad>[uU])|(?P<ch>.))|(?P<q>'')|(?P<text>[^\\']+)""",
    re.S | re.X,
)


def _code_point_bytes(cp: int, pending_high: list[int]) -> bytes:
    """One code point of a Unicode escape; a high surrogate waits for its low half."""
    if 0xD800 <= cp <= 0xDBFF:
        if pending_high:
            raise Undecodable("invalid Unicode surrogate pair")
        pending_high.append(cp)
        return b""
    if 0xDC00 <= cp <= 0xDFFF:
        if not pending_high:
            raise Undecodable("invalid Unicode surrogate pair")
        high = pending_high.pop()
        cp = 0x10000 + ((high - 0xD800) << 10) + (cp - 0xDC00)
    elif pending_high:
        raise Undecodable("invalid Unicode surrogate pair")
    if cp == 0 or cp > 0x10FFFF:
        raise Undecodable("invalid Unicode escape value")
    return chr(cp).encode()


def pg_escape_bytes(raw: str, *, version: int = 0) -> bytes:
    """The bytes of one E'' literal's body (between the quotes). `version` is the server's
    major version when known; before 16, ``\\v`` is a plain ``v``."""
    out = bytearray()
    pending: list[int] = []
    for m in _PG_ESC.finditer(raw):
        group = m.lastgroup
        if pending and group not in ("u4", "u8"):
            raise Undecodable("invalid Unicode surrogate pair")
        if group == "text":
            out += m.group().encode()
        elif group == "q":
            out += b"'"
        elif group == "oct":
            out.append(int(m.group("oct"), 8) & 0xFF)
        elif group == "hex":
            out.append(int(m.group("hex"), 16))
        elif group in ("u4", "u8"):
            out += _code_point_bytes(int(m.group(group), 16), pending)
        elif group == "ubad":
            raise Undecodable("invalid Unicode escape (\\u needs 4 hex digits, \\U needs 8)")
        else:
            ch = m.group("ch")
            if ch == "v" and not version:
                raise Undecodable("\\v is a vertical tab from PostgreSQL 16 on and a plain v before")
            if ch == "v" and version < 16:
                out += b"v"
            else:
                out += _PG_SINGLE.get(ch, ch.encode())
    if pending:
        raise Undecodable("invalid Unicode surrogate pair")
    if 0 in out:
        raise Undecodable("a string may not contain a NUL byte")
    return bytes(out)


def pg_unicode(raw: str, escape: str = "\\") -> str:
    """The text of one U&'' literal's body with its UESCAPE character (scan.l, xus + str_udeescape):
    escape+4 hex digits, escape+'+'+6 hex digits, a doubled escape is the escape itself."""
    if len(escape) != 1 or escape in "0123456789abcdefABCDEF+'\" \t\n\r\f":
        raise Undecodable("invalid Unicode escape character")
    raw = raw.replace("''", "'")
    out = bytearray()
    pending: list[int] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch != escape:
            if pending:
                raise Undecodable("invalid Unicode surrogate pair")
            out += ch.encode()
            i += 1
            continue
        if raw[i + 1 : i + 2] == escape:
            if pending:
                raise Undecodable("invalid Unicode surrogate pair")
            out += escape.encode()
            i += 2
        elif re.fullmatch(r"[0-9A-Fa-f]{4}", raw[i + 1 : i + 5]):
            out += _code_point_bytes(int(raw[i + 1 : i + 5], 16), pending)
            i += 5
        elif raw[i + 1 : i + 2] == "+" and re.fullmatch(r"[0-9A-Fa-f]{6}", raw[i + 2 : i + 8]):
            out += _code_point_bytes(int(raw[i + 2 : i + 8], 16), pending)
            i += 8
        else:
            raise Undecodable("invalid Unicode escape")
    if pending:
        raise Undecodable("invalid Unicode surrogate pair")
    return utf8(bytes(out))


# MySQL (sql_lex.cc, get_text): \0 \b \n \r \t \Z, \% and \_ keep their backslash, a backslash
# before any other character stands for it; a doubled quote is one quote.
_MY_SINGLE = {"0": b"\0", "b": b"\b", "n": b"\n", "r": b"\r", "t": b"\t", "Z": b"\x1a"}


def mysql_bytes(raw: str, quote: str = "'") -> bytes:
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "\\" and i + 1 < n:
            nxt = raw[i + 1]
            if nxt in "%_":
                out += b"\\" + nxt.encode()
            else:
                out += _MY_SINGLE.get(nxt, nxt.encode())
            i += 2
        elif ch == quote and raw[i + 1 : i + 2] == quote:
            out += quote.encode()
            i += 2
        else:
            out += ch.encode()
            i += 1
    return bytes(out)


def utf8(data: bytes) -> str:
    """Bytes as the server's UTF-8 text; invalid sequences are rejected by the server too."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Undecodable("invalid byte sequence for encoding UTF8") from None
