"""Text normalization for deny_words and regex: invisible characters dropped, look-alikes folded,
block comments stripped, line numbers."""

from __future__ import annotations

import unicodedata

# ---------------------------------------------------------------------------------------------
# Text normalization (deny_words, regex)
# ---------------------------------------------------------------------------------------------

_INVISIBLE_RANGES = (
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF9, 0xFFFB),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE007F),
    (0xE0100, 0xE01EF),
)
_INVISIBLE = {cp: None for lo, hi in _INVISIBLE_RANGES for cp in range(lo, hi + 1)}

# Visual lookalikes of Latin letters, case kept (applied after NFKC, before casefolding).
_LOOKALIKES = {
    # Cyrillic capitals
    "А": "A",
    "В": "B",
    "Е": "E",
    "Ё": "E",
    "Ѕ": "S",
    "І": "I",
    "Ї": "I",
    "Ј": "J",
    "К": "K",
    "М": "M",
    "Н": "H",
    "О": "O",
    "Р": "P",
    "С": "C",
    "Т": "T",
    "У": "Y",
    "Х": "X",
    "Ү": "Y",
    "Һ": "H",
    "Ӏ": "I",
    "Ԛ": "Q",
    "Ԝ": "W",
    # Cyrillic small
    "а": "a",
    "е": "e",
    "ё": "e",
    "ѕ": "s",
    "і": "i",
    "ї": "i",
    "ј": "j",
    "к": "k",
    "м": "m",
    "о": "o",
    "р": "p",
    "с": "c",
    "у": "y",
    "х": "x",
    "ү": "y",
    "һ": "h",
    "ӏ": "l",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ɡ": "g",
    "ı": "i",
    "ȷ": "j",
    # Greek capitals
    "Α": "A",
    "Β": "B",
    "Ε": "E",
    "Ζ": "Z",
    "Η": "H",
    "Ι": "I",
    "Κ": "K",
    "Μ": "M",
    "Ν": "N",
    "Ο": "O",
    "Ρ": "P",
    "Τ": "T",
    "Υ": "Y",
    "Χ": "X",
    "Ϲ": "C",
    "Ϳ": "J",
    # Greek small
    "α": "a",
    "ε": "e",
    "ι": "i",
    "κ": "k",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "υ": "u",
    "χ": "x",
    "γ": "y",
    "ω": "w",
    "ϲ": "c",
    "ϳ": "j",
    # Armenian
    "օ": "o",
    "ս": "u",
}
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKES)


def _normalize_keep_case(text: str) -> str:
    """NFKC, invisible characters removed, lookalikes mapped to Latin; case kept."""
    if text.isascii():
        return text
    return unicodedata.normalize("NFKC", text).translate(_INVISIBLE).translate(_LOOKALIKE_TABLE)


def _normalize(text: str) -> str:
    """What deny words are matched against: `_normalize_keep_case` and casefolded."""
    if text.isascii():
        return text.lower()
    return _normalize_keep_case(text).casefold()


def _strip_block_comments(text: str) -> str:
    """Replace /* ... */ with a space, in linear time (a lazy regex is quadratic on unclosed /*)."""
    out, pos = [], 0
    while True:
        start = text.find("/*", pos)
        if start < 0:
            break
        end = text.find("*/", start + 2)
        if end < 0:
            break
        out.append(text[pos:start])
        out.append(" ")
        pos = end + 2
    out.append(text[pos:])
    return "".join(out)


_SHELL_QUOTES = str.maketrans({"'": None, '"': None, "\\": None})


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1
