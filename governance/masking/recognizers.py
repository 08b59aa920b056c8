"""Presidio's predefined recognizers as detectors (built once per process), custom detectors, and
Presidio's post-processing: duplicate removal and context words."""

from __future__ import annotations

import re
import threading
from itertools import groupby
from operator import itemgetter

import regex

from governance.masking.detectors import _Detector, _IbanDetector, _Pattern, _PatternDetector, _PhoneDetector
from governance.masking.spec import _CONTEXT_PREFIX_WORDS, _PRESIDIO_FLAGS, _deny_list_regex

# --- the built-in detectors (built once per process) --------------------------------------------

_RECOGNIZER_CLASSES = {
    "CREDIT_CARD": "CreditCardRecognizer",
    "CRYPTO": "CryptoRecognizer",
    "DATE_TIME": "DateRecognizer",
    "EMAIL_ADDRESS": "EmailRecognizer",
    "IBAN_CODE": "IbanRecognizer",
    "IP_ADDRESS": "IpRecognizer",
    "MAC_ADDRESS": "MacAddressRecognizer",
    "MEDICAL_LICENSE": "MedicalLicenseRecognizer",
    "PHONE_NUMBER": "PhoneRecognizer",
    "UK_NHS": "NhsRecognizer",
    "URL": "UrlRecognizer",
    "US_BANK_NUMBER": "UsBankRecognizer",
    "US_DRIVER_LICENSE": "UsLicenseRecognizer",
    "US_ITIN": "UsItinRecognizer",
    "US_PASSPORT": "UsPassportRecognizer",
    "US_SSN": "UsSsnRecognizer",
    "UUID": "UuidRecognizer",
}

# Necessary conditions on a text, read off each recognizer's regexes: digits counted with `\d`
# (Unicode) as nu, with [0-9] as nd; literal characters only (never letters, which IGNORECASE
# folds across scripts).
_CONDITIONS: dict[str, dict] = {
    "CREDIT_CARD": {"min_nu": 13, "min_len": 13},
    "CRYPTO": {"min_len": 26, "extra": lambda t, nu: "1" in t or "3" in t},
    "DATE_TIME": {"min_nu": 1, "any_first": True},
    "EMAIL_ADDRESS": {"min_len": 3, "extra": lambda t, nu: "@" in t},
    "IBAN_CODE": {"min_nd": 2, "min_len": 12},
    "IP_ADDRESS": {"min_len": 2, "extra": lambda t, nu: ":" in t or t.count(".") >= 3},
    "MAC_ADDRESS": {
        "min_len": 14,
        "extra": lambda t, nu: t.count(":") >= 5 or t.count("-") >= 5 or t.count(".") >= 2,
    },
    "MEDICAL_LICENSE": {"min_nu": 7, "min_len": 9},
    "UK_NHS": {"min_nd": 10, "min_len": 10},
    "URL": {"min_len": 3, "extra": lambda t, nu: "." in t},
    "US_BANK_NUMBER": {"min_nd": 8, "min_len": 8},
    "US_DRIVER_LICENSE": {"min_nd": 1, "min_len": 2},
    "US_ITIN": {"min_nu": 9, "min_len": 9, "extra": lambda t, nu: "9" in t, "any_first": True},
    "US_PASSPORT": {"min_nd": 8, "min_len": 9},
    "US_SSN": {"min_nd": 9, "min_len": 9},
    "UUID": {"min_len": 36, "extra": lambda t, nu: t.count("-") >= 4},
}


def _has_quote(text: str) -> bool:
    return '"' in text or "'" in text


def _ascii_needs(pattern: str):
    """A necessary substring, checked on ASCII text only: there IGNORECASE folds only ASCII
    letters, so a stdlib regex over ASCII classes decides it. Other text always passes."""
    rx = re.compile(pattern)
    return lambda text: not text.isascii() or rx.search(text) is not None


_DOT_LETTER = _ascii_needs(r"\.[A-Za-z]")  # every URL pattern has [.] then a TLD (letters)


# Per-pattern conditions, by Presidio's pattern names (a renamed pattern just loses its condition).
_PATTERN_NEEDS = {
    ("URL", "Standard Url"): lambda t: "://" in t and _DOT_LETTER(t),
    ("URL", "Non schema URL"): _DOT_LETTER,
    ("URL", "Quoted URL"): lambda t: "://" in t and _has_quote(t) and _DOT_LETTER(t),
    ("URL", "Quoted Non-schema URL"): lambda t: _has_quote(t) and _DOT_LETTER(t),
    ("IP_ADDRESS", "IPv4_mapped"): lambda t: "::" in t and t.count(".") >= 3,
    ("IP_ADDRESS", "IPv4_embedded"): lambda t: t.count(":") >= 2 and t.count(".") >= 3,
    ("IP_ADDRESS", "IPv4"): lambda t: t.count(".") >= 3,
    ("IP_ADDRESS", "IPv6"): lambda t: t.count(":") >= 2,
    ("IP_ADDRESS", "IPv6_unspecified"): lambda t: "::" in t,
    ("MAC_ADDRESS", "MAC_COLON_OR_HYPHEN"): lambda t: t.count(":") >= 5 or t.count("-") >= 5,
    ("MAC_ADDRESS", "MAC_CISCO_DOT"): lambda t: t.count(".") >= 2,
    # Every alternative has a letter (or the literal "]") right next to an ASCII digit.
    ("US_DRIVER_LICENSE", "Driver License - Alphanumeric (weak)"): _ascii_needs(
        r"[A-Za-z\]][0-9]|[0-9][A-Za-z]"
    ),
    # [A-Z]{2}[0-9]{2} without IGNORECASE: ASCII only, whatever the text.
    ("IBAN_CODE", "IBAN Generic"): re.compile(r"[A-Z]{2}[0-9]{2}").search,
    ("MEDICAL_LICENSE", "USA DEA Certificate Number (weak)"): _ascii_needs(r"[A-Za-z][A-Za-z9][0-9]{7}"),
    ("DATE_TIME", "Datetime (yyyy-mm-ddThh:mm[:ss[.f]] with timezone)"): lambda t: "-" in t and ":" in t,
    ("DATE_TIME", "mm/dd/yyyy or mm/dd/yy"): lambda t: "/" in t,
    ("DATE_TIME", "dd/mm/yyyy or dd/mm/yy"): lambda t: "/" in t,
    ("DATE_TIME", "yyyy/mm/dd"): lambda t: "/" in t,
    ("DATE_TIME", "mm-dd-yyyy"): lambda t: "-" in t,
    ("DATE_TIME", "dd-mm-yyyy"): lambda t: "-" in t,
    ("DATE_TIME", "yyyy-mm-dd"): lambda t: "-" in t,
    ("DATE_TIME", "dd.mm.yyyy or dd.mm.yy"): lambda t: "." in t,
    ("DATE_TIME", "dd-MMM-yyyy or dd-MMM-yy"): lambda t: "-" in t,
    ("DATE_TIME", "MMM-yyyy or MMM-yy"): lambda t: "-" in t,
    ("DATE_TIME", "dd-MMM or dd-MMM"): lambda t: "-" in t,
    ("DATE_TIME", "mm/yyyy or m/yyyy"): lambda t: "/" in t,
    ("DATE_TIME", "mm/yy or m/yy"): lambda t: "/" in t,
    ("US_SSN", "SSN1 (very weak)"): lambda t: "-" in t,
    ("US_SSN", "SSN2 (very weak)"): lambda t: "-" in t,
    ("US_SSN", "SSN3 (very weak)"): lambda t: "-" in t,
    ("US_SSN", "SSN5 (medium)"): lambda t: "-" in t or " " in t or "." in t,
}

_BUILTINS_LOCK = threading.Lock()
_BUILTINS: dict[str, _Detector] | None = None
_STOP_WORDS: frozenset[str] = frozenset()


def _offline_tldextract():
    """A tldextract extractor that only uses the Public Suffix List snapshot it ships with."""
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)


def _harden_tldextract() -> None:
    """Make `tldextract.extract` (used by Presidio's EmailRecognizer) offline, and load it now."""
    import tldextract.tldextract as tx

    if not getattr(tx.TLD_EXTRACTOR, "_portcullis_offline", False):
        extractor = _offline_tldextract()
        extractor._portcullis_offline = True
        tx.TLD_EXTRACTOR = extractor
    tx.TLD_EXTRACTOR("warm.example.com")


def _overrides(recognizer, method: str, base) -> bool:
    return getattr(type(recognizer), method) is not getattr(base, method)


def _builtin_detectors() -> dict[str, _Detector]:
    global _BUILTINS, _STOP_WORDS
    if _BUILTINS is None:
        with _BUILTINS_LOCK:
            if _BUILTINS is None:
                _harden_tldextract()
                from presidio_analyzer import PatternRecognizer, predefined_recognizers
                from spacy.lang.en.stop_words import STOP_WORDS

                detectors: dict[str, _Detector] = {}
                for entity, class_name in _RECOGNIZER_CLASSES.items():
                    recognizer = getattr(predefined_recognizers, class_name)()
                    if entity == "PHONE_NUMBER":
                        detectors[entity] = _PhoneDetector(recognizer)
                        continue
                    flags = recognizer.global_regex_flags
                    patterns = [
                        _Pattern(
                            p.name,
                            regex.compile(p.regex, flags),
                            p.score,
                            _PATTERN_NEEDS.get((entity, p.name)),
                        )
                        for p in recognizer.patterns
                    ]
                    validate = (
                        recognizer.validate_result
                        if _overrides(recognizer, "validate_result", PatternRecognizer)
                        else None
                    )
                    invalidate = (
                        recognizer.invalidate_result
                        if _overrides(recognizer, "invalidate_result", PatternRecognizer)
                        else None
                    )
                    cls = _IbanDetector if entity == "IBAN_CODE" else _PatternDetector
                    detectors[entity] = cls(
                        entity,
                        patterns,
                        validate=validate,
                        invalidate=invalidate,
                        context=recognizer.context or (),
                        **_CONDITIONS.get(entity, {}),
                    )
                _STOP_WORDS = frozenset(w.lower() for w in STOP_WORDS)
                _BUILTINS = detectors
    return _BUILTINS


def _custom_detector(entry: dict) -> _PatternDetector:
    if "regex" in entry:
        pattern = _Pattern(entry["name"], regex.compile(entry["regex"], _PRESIDIO_FLAGS), entry["score"])
    else:
        source = _deny_list_regex(entry["deny_list"])
        pattern = _Pattern("deny_list", regex.compile(source, _PRESIDIO_FLAGS), entry["score"])
    return _PatternDetector(entry["name"], [pattern])


def _clear_process_caches() -> None:
    """Forget what the phone fast path learnt (for benchmarks: every run starts cold)."""
    detectors = _BUILTINS or {}
    phone = detectors.get("PHONE_NUMBER")
    if phone is not None and phone.fast is not None:
        for cache in (phone.fast.kinds, phone.fast.invalid, phone.fast.nowhere):
            cache.clear()


# --- Presidio's post-processing ----------------------------------------------------------------


def _remove_duplicates(results: list[tuple[int, int, float, str]]) -> list[tuple[int, int, float, str]]:
    """EntityRecognizer.remove_duplicates: per entity type, drop a result contained in another
    with an equal or higher score (results are (start, end, score, entity))."""
    if len(results) == 1:
        return results if results[0][2] != 0 else []
    ordered = sorted(set(results), key=lambda r: (r[3], r[0], r[0] - r[1], -r[2]))
    kept = []
    for _, group in groupby(ordered, key=itemgetter(3)):
        active: list[tuple] = []
        for result in group:
            start, end, score, _ = result
            if score == 0:
                continue
            active = [f for f in active if f[1] >= start]
            if any(start >= f[0] and end <= f[1] and score <= f[2] for f in active):
                continue
            kept.append(result)
            active.append(result)
    return kept


_TOKEN = regex.compile(r"(\w+)|[^\w\s]")


class _Words:
    """The text's tokens for the context window: (end offsets, lower-cased keyword or None)."""

    __slots__ = ("ends", "keywords")

    def __init__(self, text: str):
        self.ends: list[int] = []
        self.keywords: list[str | None] = []
        for match in _TOKEN.finditer(text):
            word = match.group().lower()
            self.ends.append(match.end())
            if match.group(1) is None or word in _STOP_WORDS or word == "be":  # punctuation, stop word
                word = None
            self.keywords.append(word)

    def around(self, start: int) -> list[str]:
        """LemmaContextAwareEnhancer._extract_surrounding_words with 5 words before, 0 after."""
        index = next((i for i, end in enumerate(self.ends) if start < end), None)
        if index is None:
            return []
        words = []
        i, remaining = index, _CONTEXT_PREFIX_WORDS + 1
        while i >= 0 and remaining > 0:
            if self.keywords[i] is not None:
                words.append(self.keywords[i])
                remaining -= 1
            i -= 1
        i = index
        while i < len(self.keywords):
            if self.keywords[i] is not None:
                words.append(self.keywords[i])
                break
            i += 1
        return words


def _supported(context_words: tuple[str, ...], words) -> bool:
    return any(w in keyword for w in context_words for keyword in words)
