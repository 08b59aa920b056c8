"""Secrets in output: credentials in URLs, key=value assignments and known token formats, with
placeholders left alone (`find_secrets`)."""

from __future__ import annotations

import re

from governance.guardrails.normalize import _line_of

# ---------------------------------------------------------------------------------------------
# Secret detectors (output)
# ---------------------------------------------------------------------------------------------

_SECRET_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?![A-Z0-9])")),
    ("private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----")),
    (
        "GitHub token",
        re.compile(
            r"(?<![A-Za-z0-9_])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?![A-Za-z0-9_])"
        ),
    ),
    ("Slack token", re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[0-9A-Za-z]{6,}(?:-[0-9A-Za-z]{4,}){1,4}")),
    ("JWT", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")),
    ("Stripe live key", re.compile(r"(?<![A-Za-z0-9])(?:sk|rk)_live_[0-9A-Za-z]{16,}")),
    ("Google API key", re.compile(r"(?<![A-Za-z0-9_-])AIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])")),
)
_URL_CREDENTIALS = re.compile(
    r"\b[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:/@'\"<>]{1,128}:([^\s@/'\"<>]{1,256})@[^\s/@]"
)
_ASSIGNMENT = re.compile(
    r"(?i)(?<![a-z0-9])(password|passwd|passphrase|secret|client[_-]?secret|secret[_-]?key|"
    r"(?:aws_)?secret_access_key|api[_-]?key|apikey|access[_-]?token|auth[_-]?token|private[_-]?key)"
    r"[\"']?[ \t]*[:=][ \t]*([\"']?)([^\s\"',;&]{4,200})"
)
_PLACEHOLDERS = frozenset(
    {
        "null",
        "none",
        "nil",
        "true",
        "false",
        "undefined",
        "empty",
        "redacted",
        "hidden",
        "masked",
        "removed",
        "secret",
        "password",
        "required",
        "optional",
        "string",
        "text",
        "varchar",
        "example",
        "changeit",
        "your_password",
        "yourpassword",
        "your-password",
        "<password>",
        "xxxx",
    }
)
_MASK_CHARS = set("*xX•#.-_?●")


def _is_placeholder(value: str) -> bool:
    v = value.strip().strip("\"'").rstrip(".)]}")
    low = v.lower()
    if low in _PLACEHOLDERS or len(v) < 4:
        return True
    if set(v) <= _MASK_CHARS or len(set(v)) == 1:
        return True
    if v[0] in "$%{<[(@:?" or v.startswith("{{") or "${" in v:
        return True
    if low.startswith(("redacted", "<redacted", "[redacted", "env:", "vault:", "secret:")):
        return True
    return False


def find_secrets(text: str) -> list[str]:
    """Details (kind and line, never the value) of secret-looking values in `text`."""
    found: list[str] = []
    for label, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            if label == "AWS access key id" and m.group().endswith("EXAMPLE"):
                continue
            found.append(f"{label} at line {_line_of(text, m.start())}")
            break
    for m in _URL_CREDENTIALS.finditer(text):
        if not _is_placeholder(m.group(1)):
            found.append(f"password in a URL at line {_line_of(text, m.start())}")
            break
    for m in _ASSIGNMENT.finditer(text):
        if not _is_placeholder(m.group(3)):
            found.append(f"{m.group(1).lower()} assignment at line {_line_of(text, m.start())}")
            break
    return found
