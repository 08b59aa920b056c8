"""Rendering a masked value: normalisation for pseudonyms, partial values."""

from __future__ import annotations

import ipaddress
import json
import unicodedata

# --- rendering ---------------------------------------------------------------------------------

_COMPACT_ENTITIES = frozenset(
    {
        "CREDIT_CARD",
        "IBAN_CODE",
        "PHONE_NUMBER",
        "US_SSN",
        "US_ITIN",
        "US_BANK_NUMBER",
        "US_PASSPORT",
        "US_DRIVER_LICENSE",
        "UK_NHS",
        "MEDICAL_LICENSE",
        "MAC_ADDRESS",
    }
)


def _normalise(entity: str, value: str) -> str:
    value = unicodedata.normalize("NFKC", value).strip().casefold()
    if entity in _COMPACT_ENTITIES:
        return "".join(ch for ch in value if ch.isalnum())
    if entity == "IP_ADDRESS":
        try:
            return ipaddress.ip_interface(value).compressed
        except ValueError:
            return value
    return value


def _partial(value: str, keep_last: int) -> str:
    positions = [i for i, ch in enumerate(value) if ch.isalnum()]
    if len(positions) <= keep_last + 2:
        return "*" * len(value)
    keep_from = positions[-keep_last] if keep_last else len(value)
    return "".join("*" if ch.isalnum() and i < keep_from else ch for i, ch in enumerate(value))


def _as_text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict | tuple):
        return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return str(value)
