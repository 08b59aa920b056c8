"""The result-masking engine: find personal data in what a target returns, and mask it.

Pure: no models, no database, no settings. `governance.rules` stores rule specs and builds a
`Masker` per result; this module validates a spec, detects entities and rewrites values.

Detection
---------
Pattern entities (`SUPPORTED_ENTITIES`) are exactly the predefined pattern recognizers Presidio
enables for English by default. Detection runs Presidio's own recognizers' regexes (same flags),
context-free scores and `validate_result` / `invalidate_result` (Luhn, IBAN checksum, SSN
invalidation, `ipaddress`, base58/bech32, NHS mod 11, tldextract for e-mail domains), and
`phonenumbers.PhoneNumberMatcher` with the PhoneRecognizer's regions and leniency. The pipeline
after the recognizers is Presidio's as well: context enhancement (+0.35, floor 0.4, cap 1.0,
substring match), then the score threshold, then `EntityRecognizer.remove_duplicates`. So, for the
same text and context, our findings are Presidio's findings; the bench and the tests check it.

It is faster than Presidio's `AnalyzerEngine` (see bench/masking.py) without changing a result:

* only the recognizers for requested entities run, and a pattern whose best possible score
  (after any context boost) is below the threshold is not run at all, since Presidio would drop
  everything it finds before de-duplication;
* a cheap necessary condition is checked before each recognizer and some patterns: a card needs
  13 digits, an SSN 9 ASCII digits, an e-mail an '@', an IP three dots or a colon, a URL a dot
  followed by a letter, and so on (each read off the recognizer's regex; letters only on ASCII
  text, where IGNORECASE cannot fold other characters into them); for DATE_TIME and US_ITIN one
  alternation of all patterns is searched before running them one by one;
* phone numbers still go through libphonenumber's PhoneNumberMatcher, but with exact shortcuts
  (see `_PhoneFastPath`): a parse is skipped when the libphonenumber metadata shows the number
  cannot be valid in that region, an international number is parsed once rather than once per
  region, and a region whose pass provably repeats an earlier one is not run. They rely on
  libphonenumber internals, so they are pinned to a fingerprint of its source and switch off
  (exact, slower) if phonenumbers changes;
* results are cached per distinct value (and column, or JSON key) for the life of the `Masker`,
  while the values of that column keep repeating.

Context
-------
Without a spaCy model Presidio cannot see the words around a match, so its context boost never
fires and PHONE_NUMBER (score 0.4) is never reported at the default threshold of 0.5. We give
Presidio's enhancer the context it would have had:

* explicit context, exactly as `AnalyzerEngine.analyze(context=[...])` uses it: the SQL column
  name for a cell, the dict key for a JSON value (so a "phone" column's numbers score 0.75);
* the words before a match: up to five preceding keywords (plus the match's own first token),
  where a keyword is a lower-cased word that is not a spaCy English stop word, as
  `LemmaContextAwareEnhancer` does with a model, but on a regular-expression tokenisation and
  without lemmas (the substring match makes lemmas mostly unnecessary: "phones" contains "phone").
  Note that spaCy counts "call" and "us" as stop words, so they never boost, as in Presidio.

A phone number in free text with no such word nearby stays at 0.4: use score_threshold 0.4 to
mask every valid phone number (only PHONE_NUMBER sits between 0.4 and 0.5 context-free).

Rules and how several combine
-----------------------------
A spec (see `validate_spec`) names entities, custom recognizers and column rules. A `Masker`
takes every spec bound to a connection:

* the entities detected are the union over the specs; custom recognizers are all run;
* per entity, the threshold is the lowest any spec asks for it, and the method the strictest
  (redact > pseudonym > partial); for partial, the smallest keep_last;
* a column matching several specs' column rules is masked with the strictest of their methods;
* failures are tolerated (best_effort) only if every spec is best_effort.

Masking
-------
Overlapping findings are merged: the label is the best finding's (highest score, then longest
span, then earliest), and the masked span is the union of the overlapping findings, so no
fragment of a lower-ranked finding stays readable. Counts count merged findings per label and
never carry values. Methods:

* redact    -> `<EMAIL_ADDRESS>`
* partial   -> letters and digits starred except the last `keep_last` of them; other characters
  (separators such as '-', ' ', '@', '.') stay where they are; a value with at most keep_last + 2
  letters and digits is starred whole (every character).
* pseudonym -> `<EMAIL_ADDRESS:8c1f2a9b0d>`: the first 10 hex digits of
  HMAC-SHA256(key, entity + ":" + normalised value). Normalised: NFKC, trimmed, case-folded; for
  number-like entities (cards, IBANs, phones, SSNs, ...) only letters and digits are kept, and IP
  addresses are written canonically. Same value and key -> same pseudonym, across cells, rows and
  calls, so an agent can still join and group; another key gives unrelated pseudonyms.

Column rules (`columns`) mask every non-null cell of a matching column whole, before any
detection, under the entity name `COLUMN`. Strings are analysed; so are numbers (as `str(value)`:
an int card number is found); a masked number becomes a string; None and booleans are left as
they are (except under a column rule); lists and dicts in a cell (JSON columns) are masked like
`mask_json`, with the column name as context. `mask_json` masks every string and number inside,
dict keys included (two keys masked alike are kept apart with a trailing '#'); a key matching a
column rule masks everything under it whole.

Failing closed
--------------
If analysing a value raises (a regex exceeds its time budget of 1 s plus 10 us per character, a
validator fails, the NER model errors, ...), the Masker raises `MaskingError`, whose message names
the column but never the value (and chains no exception that could). Only when every spec is
best_effort does it go on, replacing that whole value with `<MASKING_ERROR>` (counted as
MASKING_ERROR): the value is never passed through unmasked. A column rule whose regex fails on a
column name raises too, or with best_effort masks that column whole. Stored specs are validated
again when a Masker is built; an invalid one raises MaskingError there.

Network
-------
Presidio's EmailRecognizer validates domains with tldextract, whose default extractor fetches the
Public Suffix List from the internet on first use (and has no timeout). Before the first e-mail
is checked, tldextract's shared extractor (process-wide) is replaced by one that uses only the
snapshot bundled with the package: no network, no disk cache, no delay.

Named entities (PERSON, LOCATION, NRP, ORGANIZATION) need a spaCy English model package
(en_core_web_lg/md/sm/trf). Without one they are accepted in a spec and reported in
`Masker.unavailable_entities`; nothing is detected for them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import threading
import unicodedata
from itertools import groupby
from operator import itemgetter

import regex

from governance.errors import InvalidInput

logger = logging.getLogger(__name__)

# Presidio's predefined pattern recognizers that its default registry enables for English.
SUPPORTED_ENTITIES: tuple[str, ...] = (
    "CREDIT_CARD",
    "CRYPTO",
    "DATE_TIME",
    "EMAIL_ADDRESS",
    "IBAN_CODE",
    "IP_ADDRESS",
    "MAC_ADDRESS",
    "MEDICAL_LICENSE",
    "PHONE_NUMBER",
    "UK_NHS",
    "URL",
    "US_BANK_NUMBER",
    "US_DRIVER_LICENSE",
    "US_ITIN",
    "US_PASSPORT",
    "US_SSN",
    "UUID",
)
NER_ENTITIES = ("PERSON", "LOCATION", "NRP", "ORGANIZATION")
METHODS = ("redact", "pseudonym", "partial")  # strictest first
COLUMN_ENTITY = "COLUMN"
ERROR_ENTITY = "MASKING_ERROR"

DEFAULT_THRESHOLD = 0.5
DEFAULT_KEEP_LAST = 4
MAX_KEEP_LAST = 32
DEFAULT_CUSTOM_SCORE = 1.0

_STRICTNESS = {"redact": 3, "pseudonym": 2, "partial": 1}
_SPEC_FIELDS = (
    "entities",
    "custom",
    "columns",
    "column_types",
    "score_threshold",
    "method",
    "keep_last",
    "best_effort",
)
_CUSTOM_FIELDS = ("name", "regex", "deny_list", "score")
_CUSTOM_NAME = re.compile(r"[A-Z][A-Z0-9_]{1,49}")
_RESERVED_NAMES = frozenset(SUPPORTED_ENTITIES) | frozenset(NER_ENTITIES) | {COLUMN_ENTITY, ERROR_ENTITY}
_MAX_CUSTOM = 50
_MAX_COLUMNS = 100
_MAX_REGEX_LEN = 2000
_MAX_DENY_TERMS = 10_000
_MAX_DENY_TERM_LEN = 256

# Presidio's PatternRecognizer default flags (custom recognizers use them too).
_PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
# Presidio's LemmaContextAwareEnhancer defaults.
_CONTEXT_FACTOR = 0.35
_CONTEXT_MIN_SCORE = 0.4
_CONTEXT_PREFIX_WORDS = 5
_MAX_SCORE = 1.0

_SPACY_EN_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")

# Time budget for one regular expression over one value (seconds): a base plus 10 microseconds per
# character, so a pathological custom regex fails the value (closed) instead of stalling the gateway.
_REGEX_TIMEOUT = 1.0
_REGEX_TIMEOUT_PER_CHAR = 1e-5

# Per-value cache: entries per Masker, and the longest value worth caching (a Masker may live as
# long as its connection's rules, so this bounds its memory to a few MB). A column (or JSON key,
# or free text) whose values rarely repeat stops being cached: after _CACHE_PROBE lookups with
# fewer than _CACHE_MIN_HIT_RATE hits, caching would only cost time.
_CACHE_ENTRIES = 20_000
_CACHE_VALUE_MAX_LEN = 128
_CONTEXTS_KEPT = 10_000  # column names / keys remembered per Masker (for context and cache use)
_CACHE_PROBE = 2000
_CACHE_MIN_HIT_RATE = 0.05


class MaskingError(Exception):
    """Masking itself failed and no spec allowed best effort. The message never holds a value."""


# --- spec validation ---------------------------------------------------------------------------


def _number(value, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{field} must be a number between 0 and 1")
    if not 0 <= value <= 1:
        raise InvalidInput(f"{field} must be between 0 and 1")
    return float(value)


def _compile(pattern: str, flags: int, field: str):
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput(f"{field} must be a non-empty string")
    if len(pattern) > _MAX_REGEX_LEN:
        raise InvalidInput(f"{field} is longer than {_MAX_REGEX_LEN} characters")
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise InvalidInput(f"{field} is not a valid regular expression: {exc}") from None


def _deny_list_regex(terms: list[str]) -> str:
    """Presidio's PatternRecognizer._deny_list_to_regex."""
    escaped = [regex.escape(term) for term in terms]
    return r"(?:^|(?<=\W))(" + "|".join(escaped) + r")(?:(?=\W)|$)"


def validate_spec(spec: dict) -> dict:
    """Validate and normalise one masking rule; raise InvalidInput naming the first bad field.

    spec = {
      "entities": ["EMAIL_ADDRESS", ...],     # SUPPORTED_ENTITIES, or NER_ENTITIES (need a model)
      "custom": [{"name": "EMPLOYEE_ID", "regex": "E\\\\d{6}", "score": 0.9},
                 {"name": "PROJECT", "deny_list": ["apollo"], "score": 1.0}],
      "columns": ["(?i)e?mail|phone|ssn"],    # searched in SQL column names (and JSON keys)
      "score_threshold": 0.5,                 # 0..1
      "method": "redact" | "partial" | "pseudonym",
      "keep_last": 4,                         # for partial, 0..32
      "best_effort": False,
    }
    Custom regexes and deny lists use Presidio's flags (case-insensitive, DOTALL, MULTILINE); a
    custom score defaults to 1.0 and must reach the rule's threshold. The result has every field.
    """
    if not isinstance(spec, dict):
        raise InvalidInput("a masking spec must be an object")
    unknown = sorted(str(k) for k in spec if k not in _SPEC_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown masking spec field {unknown[0]!r}; allowed: {', '.join(_SPEC_FIELDS)}")

    entities = spec.get("entities")
    entities = [] if entities is None else entities
    if not isinstance(entities, list | tuple):
        raise InvalidInput("entities must be a list of entity names")
    known = set(SUPPORTED_ENTITIES) | set(NER_ENTITIES)
    out_entities: list[str] = []
    for i, name in enumerate(entities):
        if not isinstance(name, str) or name not in known:
            raise InvalidInput(
                f"entities[{i}] {name!r} is not a supported entity; supported: "
                f"{', '.join(SUPPORTED_ENTITIES)}; with a spaCy model also {', '.join(NER_ENTITIES)}"
            )
        if name not in out_entities:
            out_entities.append(name)

    threshold = spec.get("score_threshold")
    threshold = DEFAULT_THRESHOLD if threshold is None else _number(threshold, "score_threshold")

    method = spec.get("method")
    method = "redact" if method is None else method
    if method not in METHODS:
        raise InvalidInput(f"method must be one of: redact, partial, pseudonym (got {method!r})")

    keep_last = spec.get("keep_last")
    keep_last = DEFAULT_KEEP_LAST if keep_last is None else keep_last
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or not 0 <= keep_last <= MAX_KEEP_LAST:
        raise InvalidInput(f"keep_last must be an integer between 0 and {MAX_KEEP_LAST}")

    best_effort = spec.get("best_effort")
    best_effort = False if best_effort is None else best_effort
    if not isinstance(best_effort, bool):
        raise InvalidInput("best_effort must be true or false")

    custom = spec.get("custom")
    custom = [] if custom is None else custom
    if not isinstance(custom, list | tuple):
        raise InvalidInput("custom must be a list of recognizers")
    if len(custom) > _MAX_CUSTOM:
        raise InvalidInput(f"custom: at most {_MAX_CUSTOM} recognizers per rule")
    out_custom: list[dict] = []
    seen: set[str] = set()
    for i, item in enumerate(custom):
        where = f"custom[{i}]"
        if not isinstance(item, dict):
            raise InvalidInput(f"{where} must be an object with a name and a regex or a deny_list")
        bad = sorted(str(k) for k in item if k not in _CUSTOM_FIELDS)
        if bad:
            raise InvalidInput(f"unknown field {where}.{bad[0]}; allowed: {', '.join(_CUSTOM_FIELDS)}")
        name = item.get("name")
        if not isinstance(name, str) or not _CUSTOM_NAME.fullmatch(name):
            raise InvalidInput(f"{where}.name must match [A-Z][A-Z0-9_]{{1,49}} (got {name!r})")
        if name in _RESERVED_NAMES:
            raise InvalidInput(f"{where}.name {name!r} is reserved for a built-in entity")
        if name in seen:
            raise InvalidInput(f"{where}.name {name!r} is used twice in this rule")
        seen.add(name)
        has_regex, has_deny = item.get("regex") is not None, item.get("deny_list") is not None
        if has_regex == has_deny:
            raise InvalidInput(f"{where} needs exactly one of regex or deny_list")
        score = item.get("score")
        score = DEFAULT_CUSTOM_SCORE if score is None else _number(score, f"{where}.score")
        if score == 0 or score < threshold:
            raise InvalidInput(
                f"{where}.score ({score:g}) is below score_threshold ({threshold:g}), so it would never mask anything"
            )
        entry: dict = {"name": name, "score": score}
        if has_regex:
            _compile(item["regex"], _PRESIDIO_FLAGS, f"{where}.regex")
            entry["regex"] = item["regex"]
        else:
            terms = item["deny_list"]
            if not isinstance(terms, list | tuple) or not terms:
                raise InvalidInput(f"{where}.deny_list must be a non-empty list of strings")
            if len(terms) > _MAX_DENY_TERMS:
                raise InvalidInput(f"{where}.deny_list: at most {_MAX_DENY_TERMS} terms")
            for j, term in enumerate(terms):
                if not isinstance(term, str) or not term.strip():
                    raise InvalidInput(f"{where}.deny_list[{j}] must be a non-empty string")
                if len(term) > _MAX_DENY_TERM_LEN:
                    raise InvalidInput(
                        f"{where}.deny_list[{j}] is longer than {_MAX_DENY_TERM_LEN} characters"
                    )
            entry["deny_list"] = list(dict.fromkeys(terms))
        out_custom.append(entry)

    columns = spec.get("columns")
    columns = [] if columns is None else columns
    if not isinstance(columns, list | tuple):
        raise InvalidInput("columns must be a list of regular expressions")
    if len(columns) > _MAX_COLUMNS:
        raise InvalidInput(f"columns: at most {_MAX_COLUMNS} patterns per rule")
    for i, pattern in enumerate(columns):
        _compile(pattern, 0, f"columns[{i}]")

    column_types = spec.get("column_types")
    column_types = {} if column_types is None else column_types
    if not isinstance(column_types, dict):
        raise InvalidInput(
            'column_types must map column regexes to entity names ({"(?i)^iban$": "IBAN_CODE"})'
        )
    if len(column_types) > _MAX_COLUMNS:
        raise InvalidInput(f"column_types: at most {_MAX_COLUMNS} patterns per rule")
    typed_known = known | {c["name"] for c in out_custom}
    for pattern, entity in column_types.items():
        _compile(pattern, 0, f"column_types[{pattern!r}]")
        if not isinstance(entity, str) or entity not in typed_known:
            raise InvalidInput(
                f"column_types[{pattern!r}] must name a supported entity or a custom recognizer of this rule"
            )

    if not out_entities and not out_custom and not columns and not column_types:
        raise InvalidInput("a masking spec needs at least one of entities, custom, columns or column_types")
    return {
        "entities": out_entities,
        "custom": out_custom,
        "columns": list(columns),
        "column_types": dict(column_types),
        "score_threshold": threshold,
        "method": method,
        "keep_last": keep_last,
        "best_effort": best_effort,
    }


# --- NER availability --------------------------------------------------------------------------


@functools.cache
def _installed_spacy_model() -> str | None:
    """The first spaCy English pipeline package installed, or None. Never downloads anything."""
    try:
        from spacy.util import is_package
    except Exception:  # spaCy missing or broken: no NER
        return None
    for name in _SPACY_EN_MODELS:
        if is_package(name):
            return name
    return None


def ner_available() -> bool:
    """True iff a spaCy English model package is installed (checked once per process)."""
    return _installed_spacy_model() is not None


# --- detectors ---------------------------------------------------------------------------------
#
# A detector finds one recognizer's raw results: [(start, end, score, entity)], with Presidio's
# per-match validation already applied (score 0 results dropped). `max_score` is the best score
# any of its results can reach after context enhancement; `min_nd`/`min_nu`/`min_len`/`extra` are
# necessary conditions on the text (ASCII digits, Unicode digits, length, a predicate).


def _boosted(score: float) -> float:
    """Presidio's LemmaContextAwareEnhancer arithmetic, operation for operation."""
    score += _CONTEXT_FACTOR
    score = max(score, _CONTEXT_MIN_SCORE)
    return min(score, _MAX_SCORE)


class _Pattern:
    __slots__ = ("name", "rx", "score", "needs")

    def __init__(self, name: str, rx, score: float, needs=None):
        self.name, self.rx, self.score, self.needs = name, rx, score, needs


class _Detector:
    entity = ""
    context: tuple[str, ...] = ()
    min_nd = min_nu = 0
    min_len = 1
    extra = None

    def max_score(self) -> float:
        raise NotImplementedError

    def narrowed(self, threshold: float) -> _Detector | None:
        """This detector without what can never reach `threshold`; None if nothing can."""
        return self if self.max_score() >= threshold else None

    def find(self, text: str, timeout: float) -> list[tuple[int, int, float, str]]:
        raise NotImplementedError


class _PatternDetector(_Detector):
    """Presidio's PatternRecognizer.analyze / __analyze_patterns."""

    any_first = False  # search one alternation of all patterns before running them one by one
    anyone = None

    def __init__(self, entity, patterns, *, validate=None, invalidate=None, context=(), **conditions):
        self.entity = entity
        self.patterns = list(patterns)
        self.validate = validate
        self.invalidate = invalidate
        self.context = tuple(w.lower() for w in context)
        for key, value in conditions.items():
            setattr(self, key, value)
        self._build_anyone()

    def _build_anyone(self) -> None:
        """An alternation of the patterns (same flags): no match anywhere iff no pattern matches.
        Only for patterns without backreferences or inline flags (group numbers shift)."""
        self.conditional = any(p.needs is not None for p in self.patterns)
        self.anyone = None
        sources = [p.rx.pattern for p in self.patterns]
        flags = {p.rx.flags for p in self.patterns}
        if not self.any_first or len(sources) < 2 or len(flags) != 1:
            return
        if any(re.search(r"\\[1-9]|\(\?P=|\(\?[a-zA-Z]", src) for src in sources):
            return
        self.anyone = regex.compile("|".join(f"(?:{src})" for src in sources), flags.pop())

    def _pattern_max(self, pattern: _Pattern) -> float:
        if self.validate is not None:
            return _MAX_SCORE  # a successful validation scores 1.0
        return _boosted(pattern.score) if self.context else pattern.score

    def max_score(self) -> float:
        return max((self._pattern_max(p) for p in self.patterns), default=0.0)

    def narrowed(self, threshold):
        kept = [p for p in self.patterns if self._pattern_max(p) >= threshold]
        if not kept:
            return None
        if len(kept) == len(self.patterns):
            return self
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.patterns = kept
        clone._build_anyone()
        return clone

    def find(self, text, timeout):
        patterns = self.patterns
        if self.conditional:
            if len(patterns) == 1:
                if not patterns[0].needs(text):
                    return []
            else:
                patterns = [p for p in patterns if p.needs is None or p.needs(text)]
                if not patterns:
                    return []
        if (
            len(patterns) > 2
            and self.anyone is not None
            and self.anyone.search(text, timeout=timeout) is None
        ):
            return []
        out = []
        validate, invalidate, entity = self.validate, self.invalidate, self.entity
        for pattern in patterns:
            for match in pattern.rx.finditer(text, timeout=timeout):
                start, end = match.span()
                if start == end:
                    continue
                score = pattern.score
                if validate is not None:
                    valid = validate(text[start:end])
                    if valid is not None:
                        score = _MAX_SCORE if valid else 0
                if invalidate is not None and invalidate(text[start:end]):
                    score = 0
                if score > 0:
                    out.append((start, end, score, entity))
        return out


class _IbanDetector(_PatternDetector):
    """Presidio's IbanRecognizer.__analyze_patterns: tries the longest group first, keeps the first
    that validates."""

    def find(self, text, timeout):
        out = []
        validate, entity = self.validate, self.entity
        for pattern in self.patterns:
            if pattern.needs is not None and not pattern.needs(text):
                continue
            for match in pattern.rx.finditer(text, timeout=timeout):
                for group in reversed(range(1, len(match.groups()) + 1)):
                    start = match.span(0)[0]
                    end = match.span(group)[1] if match.span(group)[1] > 0 else match.span(0)[1]
                    if start == end:
                        continue
                    score = pattern.score
                    valid = validate(text[start:end])
                    if valid is not None:
                        score = _MAX_SCORE if valid else 0
                    if score > 0:
                        out.append((start, end, score, entity))
                        break
        return out


class _PhoneDetector(_Detector):
    """Presidio's PhoneRecognizer: every PhoneNumberMatcher match, for each of its regions."""

    entity = "PHONE_NUMBER"
    min_nu = 1

    def __init__(self, recognizer):
        self.regions = tuple(recognizer.supported_regions)
        self.leniency = recognizer.leniency
        self.score = recognizer.SCORE
        self.context = tuple(w.lower() for w in recognizer.context or ())
        self.entity = recognizer.supported_entities[0]
        # The shortcuts are derived for leniency VALID, the one PhoneRecognizer uses.
        self.fast = _phone_fast_path(self.regions) if self.leniency == 1 else None
        self.min_nsn = self.fast.min_nsn if self.fast else 1

    def extra(self, text: str, digits: int) -> bool:
        # The national significant number of a valid number has at least `min_nsn` characters,
        # all digits unless the candidate has ASCII letters (vanity numbers).
        return digits >= self.min_nsn or _ASCII_LETTER.search(text) is not None

    def max_score(self):
        return _boosted(self.score) if self.context else self.score

    def find(self, text, timeout):
        if self.fast is not None:
            spans = self.fast.find(text, self.regions, self.leniency)
        else:
            spans = set()
            import phonenumbers

            for region in self.regions:
                for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=self.leniency):
                    spans.add((match.start, match.end))
        return [(start, end, self.score, self.entity) for start, end in spans]


class _NerDetector(_Detector):
    """spaCy NER through Presidio's SpacyNlpEngine and SpacyRecognizer (only with a model)."""

    def __init__(self, entities: tuple[str, ...]):
        self.entities = entities
        self.entity = entities[0]

    def extra(self, text, digits):
        return any(ch.isalpha() for ch in text)

    def max_score(self):
        return _MAX_SCORE

    def find(self, text, timeout):
        engine, recognizer = _ner_engine()
        artifacts = engine.process_text(text, "en")
        results = recognizer.analyze(text, list(self.entities), artifacts)
        return [(r.start, r.end, r.score, r.entity_type) for r in results if r.score > 0]


_NER_LOCK = threading.Lock()
_NER: tuple | None = None


def _ner_engine():
    """Load the installed spaCy model once per process (never downloads)."""
    global _NER
    if _NER is None:
        with _NER_LOCK:
            if _NER is None:
                name = _installed_spacy_model()
                if name is None:
                    raise RuntimeError("no spaCy English model is installed")
                _NER = _build_ner(name)
    return _NER


def _build_ner(model_name: str):
    import spacy
    from presidio_analyzer.nlp_engine import SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer

    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model_name}])
    engine.nlp = {"en": spacy.load(model_name)}  # load() would try to download a missing model
    return engine, SpacyRecognizer(supported_entities=list(NER_ENTITIES))


# --- the phone fast path -----------------------------------------------------------------------

_NATIONAL_CHARS = frozenset("0123456789 -.()/")
_ASCII_LETTER = re.compile("[A-Za-z]")
_PLUS_CHARS = "+\uff0b"
_ASCII_DIGITS = b"0123456789"


def _ascii_digits(text: str) -> int:
    data = text.encode("ascii")
    return len(data) - len(data.translate(None, _ASCII_DIGITS))


class _PhoneMemo:
    """What the matchers of one text (one per region) share."""

    __slots__ = (
        "results",
        "rejected",
        "fixed",
        "failed",
        "watching",
        "trace",
        "region_clean",
        "spans",
        "short",
        "skipped",
        "sequence",
    )

    def __init__(self, text: str):
        self.spans: set[tuple[int, int]] = set()
        self.skipped = _Skipped()
        self.short = len(text) <= _PHONE_SHORT_TEXT
        self.results: dict[tuple[str, int], object] = {}
        self.rejected: dict[tuple[str, int], bool] = {}
        self.fixed: dict[tuple[str, int], tuple[object, int]] = {}
        self.failed: dict[tuple[str, int], tuple[int, tuple[str, ...]]] = {}
        self.watching = False
        self.trace: list[str] | None = None
        self.sequence: list[tuple[str, int]] | None = None  # the first pass's candidates
        self.region_clean = True


# In a text this short, PhoneNumberMatcher cannot use up its 65,535 tries: each pass processes at
# most one candidate per character, each costing at most 1 + 6 * (1 + its length) tries.
_PHONE_SHORT_TEXT = 100
_PHONE_SHORT_CANDIDATE = 20


class _Skipped:
    """What a skipped candidate returns to the matcher instead of a PhoneNumberMatch: the matcher
    only reads `end` (to go on from there), and find() drops it. One per text."""

    __slots__ = ("start", "end")


class _PureCache(dict):
    """A bounded memo for pure functions, shared by threads (dict operations are atomic)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def put(self, key, value):
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value


# The libphonenumber code the shortcuts below were derived from. If any of it changes (another
# phonenumbers version), the fast path is off and PhoneNumberMatcher runs as is.
_PHONENUMBERS_FUNCTIONS = (
    "phonenumbermatcher.PhoneNumberMatcher._find",
    "phonenumbermatcher.PhoneNumberMatcher._extract_match",
    "phonenumbermatcher.PhoneNumberMatcher._extract_inner_match",
    "phonenumbermatcher.PhoneNumberMatcher._parse_and_verify",
    "phonenumbermatcher._verify",
    "phonenumbermatcher._contains_only_valid_x_chars",
    "phonenumbermatcher._is_national_prefix_present_if_required",
    "phonenumberutil._choose_formatting_pattern_for_number",
    "phonenumberutil._formatting_rule_has_first_group_only",
    "phonenumberutil.parse",
    "phonenumberutil._build_national_number_for_parsing",
    "phonenumberutil._extract_possible_number",
    "phonenumberutil._maybe_strip_extension",
    "phonenumberutil._maybe_extract_country_code",
    "phonenumberutil._maybe_strip_i18n_prefix_and_normalize",
    "phonenumberutil._parse_prefix_as_idd",
    "phonenumberutil._extract_country_code",
    "phonenumberutil._maybe_strip_national_prefix_carrier_code",
    "phonenumberutil._normalize",
    "phonenumberutil._set_italian_leading_zeros_for_phone_number",
    "phonenumberutil.national_significant_number",
    "phonenumberutil.is_valid_number",
    "phonenumberutil.is_valid_number_for_region",
    "phonenumberutil.region_code_for_number",
    "phonenumberutil._region_code_for_number_from_list",
    "phonenumberutil._number_type_helper",
    "phonenumberutil._is_number_matching_desc",
)
_PHONENUMBERS_FINGERPRINT = "fa2e97b766e1dbae907ef05a53335b49aad06cce5b4e9730c0cb59648a210c23"


def _phonenumbers_fingerprint() -> str:
    import inspect

    import phonenumbers.phonenumbermatcher
    import phonenumbers.phonenumberutil

    digest = hashlib.sha256()
    for path in _PHONENUMBERS_FUNCTIONS:
        module_name, *attrs = path.split(".")
        obj = getattr(phonenumbers, module_name)
        for attr in attrs:
            obj = getattr(obj, attr)
        digest.update(inspect.getsource(obj).encode())
    return digest.hexdigest()


class _PhoneFastPath:
    """Exact shortcuts around libphonenumber's PhoneNumberMatcher (leniency VALID and up).

    Presidio's PhoneRecognizer reports every match of one matcher per region (8 regions). A
    "candidate" is what the matcher's `_find` hands to `_extract_match`, which tries it whole and
    then groups inside it; a "group" is what `_parse_and_verify` is asked about. Only leniency
    VALID is in play. What is skipped is only ever what provably gives the same result:

    1. The checks `_parse_and_verify` makes before parsing (brackets, page references, a Latin
       letter, '%' or a currency sign next to the group) depend only on the text, not the region.
    2. A group of ASCII digits and " -.()/" only, in region R, whose digits do not start with R's
       international prefix: parse() keeps R's country code, and the national significant number
       is one of a few strings (the digits, or the digits without R's country code, each with or
       without a national prefix stripped or transformed by R's or the country's main region's
       rule), computed here with the same regular expressions. is_valid_number then needs a
       region of that country code where _number_type_helper finds a type (one precompiled
       alternation per country code and length decides it), and, when the country code was not
       read from the digits, _is_national_prefix_present_if_required must hold (decided with one
       ordered alternation of the country's formats). If no string passes, the group is invalid
       in R, without parsing. When the digits do start with R's international prefix (and no 0
       follows it), parse() needs more than two digits after it, starting with a known country
       code, and the rest, with or without that country's national prefix, is checked the same
       way.
    3. A group "+<digits and ' -.()/'>" whose digits start with a known country code: parse()
       takes the country code from the number, so the outcome is the same whatever the default
       region; it is computed once per text and offset.
    4. A candidate all of whose groups were settled by 1, 3, or 2 for every region has the same
       outcome, after the same number of tries, in every region: it is computed once, and reused
       while a region has more tries left than it took (so `max_tries` ends where it would).
    5. If every candidate of a region's pass was of kind 4, every region finds exactly the same
       matches: the other regions are not run.
    6. All phone findings score the same, and one inside another can never outscore it (the
       words between their starts are digits of the number, never context words), so Presidio's
       remove_duplicates drops it. A candidate lying inside a span some region already found can
       therefore only add such findings: it is skipped, i.e. treated as a match of its own span,
       which is not recorded. The region then goes on from the candidate's end, where it would
       have gone on anyway, or from inside the candidate, where it could only find more spans
       inside it: the candidate is exactly what the matcher's pattern matched there (not
       trimmed) and too short (20 characters) to reach its repetition limits, so no match can
       start inside it and end beyond it. Only in texts of at most 100 characters, where
       `max_tries` cannot run out, so skipping tries changes nothing.
    7. A candidate that found nothing in one region, having tried national groups (kind 2) and
       groups settled by 1 or 3, finds nothing in another region where 2 rejects each of those
       national groups: it tries the same groups, with the same outcomes, in the same tries.
    8. A region in which every candidate of the first region's pass has the outcome it had there
       (by 4 or 7), or lies inside a span found since (6), walks the same candidates and finds
       nothing new: it is not run.
    0. Before any region runs, `nothing_anywhere` looks at the text's candidates: if each is dead
       for a reason that holds in every region, no region can match.
    Everything else goes to libphonenumber unchanged. The tests compare with PhoneNumberMatcher
    and with Presidio.
    """

    def __init__(self, regions):
        from phonenumbers import (
            COUNTRY_CODE_TO_REGION_CODE,
            CountryCodeSource,
            Leniency,
            PhoneMetadata,
            PhoneNumber,
            PhoneNumberType,
        )
        from phonenumbers import phonenumbermatcher as pm
        from phonenumbers.phonenumberutil import (
            _formatting_rule_has_first_group_only,
            _is_number_matching_desc,
            _maybe_strip_national_prefix_carrier_code,
            _number_type_helper,
            _set_italian_leading_zeros_for_phone_number,
            normalize_digits_only,
            region_code_for_country_code,
        )

        def library_prefix_present(code: int, number: str, raw: str) -> bool:
            numobj = PhoneNumber(country_code=code, raw_input=raw)
            _set_italian_leading_zeros_for_phone_number(number, numobj)
            numobj.national_number = int(number)
            numobj.country_code_source = CountryCodeSource.FROM_DEFAULT_COUNTRY
            return pm._is_national_prefix_present_if_required(numobj)

        formats_by_code: dict[int, tuple | None] = {}

        def formats(code: int):
            """(alternation of the main region's formats in order, one named group each, and
            whether each requires the national prefix), or None to use the library."""
            if code in formats_by_code:
                return formats_by_code[code]
            result = None
            metadata = PhoneMetadata.metadata_for_region(region_code_for_country_code(code))
            if metadata is not None:
                parts, requires = [], []
                for i, fmt in enumerate(metadata.number_format):
                    lead = f"(?=(?:{fmt.leading_digits_pattern[-1]}))" if fmt.leading_digits_pattern else ""
                    parts.append(f"(?P<f{i}>{lead}(?:{fmt.pattern}))")
                    rule = fmt.national_prefix_formatting_rule
                    requires.append(
                        bool(rule)
                        and not fmt.national_prefix_optional_when_formatting
                        and not _formatting_rule_has_first_group_only(rule)
                    )
                try:
                    result = (re.compile("|".join(parts)) if parts else None, requires, metadata)
                except re.error:
                    result = None
            formats_by_code[code] = result
            return result

        def prefix_present(code: int, number: str, raw: str) -> bool:
            """_is_national_prefix_present_if_required for a number whose country code came from
            the default region, `number` its national significant number and `raw` the digits:
            _choose_formatting_pattern_for_number takes the first format whose last leading-digits
            pattern matches at the start and whose pattern matches whole, which is the first
            alternative of the ordered alternation that fullmatches."""
            known = formats(code)
            if known is None:
                return library_prefix_present(code, number, raw)
            rx, requires, metadata = known
            match = rx.fullmatch(number) if rx is not None else None
            if match is None or not requires[int(match.lastgroup[1:])]:
                return True
            return _maybe_strip_national_prefix_carrier_code(normalize_digits_only(raw), metadata)[2]

        self.prefix_present = prefix_present
        self.library_prefix_present = library_prefix_present

        self.country_codes = frozenset(COUNTRY_CODE_TO_REGION_CODE)
        self.matches_desc = _is_number_matching_desc
        self.number_type = _number_type_helper
        self.unknown = PhoneNumberType.UNKNOWN
        self.pm = pm
        self.valid_leniency = Leniency.VALID

        def prefix_rule(md):
            npp = md.national_prefix_for_parsing
            return (re.compile(npp) if npp else None), md.national_prefix_transform_rule

        self.metadata_for_region = PhoneMetadata.metadata_for_region
        self.region_for_code = region_code_for_country_code
        self.code_regions = COUNTRY_CODE_TO_REGION_CODE
        self.prefix_rule = prefix_rule
        self.descs_by_code: dict[int, tuple | None] = {}
        self.typed_by_key: dict[tuple[int, int], object] = {}
        self.any_typed_by_length: dict[int, object] = {}
        self.regions_typed_by_length: dict[int, list] = {}
        self.info = {}
        for region in regions:
            metadata = PhoneMetadata.metadata_for_region(region)
            code = metadata.country_code
            main = PhoneMetadata.metadata_for_region(region_code_for_country_code(code))
            self.info[region] = (
                re.compile(metadata.international_prefix) if metadata.international_prefix else None,
                str(code),
                prefix_rule(metadata),
                prefix_rule(main if main is not None else metadata),
                code if main is not None else None,
            )
        # The shortest national significant number any valid number can have (all metadata).
        lengths = []
        for code, code_regions in COUNTRY_CODE_TO_REGION_CODE.items():
            for region in code_regions:
                md = (
                    PhoneMetadata.metadata_for_nongeo_region(code)
                    if region == "001"
                    else PhoneMetadata.metadata_for_region(region)
                )
                possible = md.general_desc.possible_length if md and md.general_desc else ()
                lengths.extend([n for n in possible if n > 0] if possible else [1])
        self.min_nsn = min(lengths) if lengths else 1
        # Bounded memos of pure functions of digit strings (about 10 MB at most, per process).
        self.kinds = _PureCache(20_000)
        self.invalid = _PureCache(50_000)
        self.nowhere = _PureCache(20_000)
        fast = self

        class Matcher(pm.PhoneNumberMatcher):
            def __init__(self, text, region, leniency, memo):
                super().__init__(text, region, leniency=leniency)
                self._fast_region = region
                self._fast_memo = memo

            def _extract_match(self, candidate, offset):
                memo = self._fast_memo
                if memo.sequence is not None:
                    memo.sequence.append((candidate, offset))
                if memo.short and memo.spans and fast.inside_found(self.text, candidate, offset, memo.spans):
                    memo.skipped.start, memo.skipped.end = offset, offset + len(candidate)
                    return memo.skipped
                key = (candidate, offset)
                fixed = memo.fixed.get(key)
                if fixed is not None and self._max_tries > fixed[1]:
                    self._max_tries -= fixed[1]
                    return fixed[0]
                failed = memo.failed.get(key)
                if (
                    failed is not None
                    and self._max_tries > failed[0]
                    and all(fast.cannot_be_valid(self._fast_region, digits) for digits in failed[1])
                ):
                    self._max_tries -= failed[0]  # shortcut 7
                    memo.region_clean = False
                    return None
                memo.watching, memo.trace = True, []
                before = self._max_tries
                try:
                    result = super()._extract_match(candidate, offset)
                    clean, trace = memo.watching, memo.trace
                finally:
                    memo.watching, memo.trace = False, None
                tries = before - self._max_tries
                if clean and self._max_tries > 0:
                    memo.fixed[key] = (result, tries)
                else:
                    memo.region_clean = False
                    if result is None and trace is not None and self._max_tries > 0:
                        memo.failed[key] = (tries, tuple(trace))
                return result

            def _parse_and_verify(self, candidate, offset):
                memo = self._fast_memo
                key = (candidate, offset)
                rejected = memo.rejected.get(key)
                if rejected is None:
                    rejected = memo.rejected[key] = fast.rejected_before_parsing(self, candidate, offset)
                if rejected:
                    return None
                kind = fast.kinds.get(candidate) or fast.kinds.put(candidate, fast.classify(candidate))
                if kind[0] == "national":
                    if memo.trace is not None:
                        memo.trace.append(kind[1])
                    if memo.watching:
                        if fast.invalid_everywhere(kind[1]):
                            return None  # here too, and the same in every region
                        memo.watching = False
                    if fast.cannot_be_valid(self._fast_region, kind[1]):
                        return None
                    return super()._parse_and_verify(candidate, offset)
                if kind[0] == "plus":
                    if key not in memo.results:
                        memo.results[key] = super()._parse_and_verify(candidate, offset)
                    return memo.results[key]
                memo.watching, memo.trace = False, None
                return super()._parse_and_verify(candidate, offset)

        self.matcher = Matcher

    def find(self, text: str, regions, leniency) -> set[tuple[int, int]]:
        if self.nothing_anywhere(text):
            return set()
        memo = _PhoneMemo(text)
        spans = memo.spans
        first = None
        for region in regions:
            if first is not None and self.same_as_first(text, region, first, memo):
                continue  # shortcut 8
            memo.region_clean = True
            if first is None:
                memo.sequence = []
            for match in self.matcher(text, region, leniency, memo):
                if match is not memo.skipped:
                    spans.add((match.start, match.end))
            if first is None:
                first, memo.sequence = memo.sequence, None
            if memo.region_clean:
                break  # every region's pass finds the same matches (shortcut 5)
        return spans

    def same_as_first(self, text: str, region: str, first, memo: _PhoneMemo) -> bool:
        for key in first:
            if key in memo.fixed:
                continue
            failed = memo.failed.get(key)
            if failed is not None and all(self.cannot_be_valid(region, digits) for digits in failed[1]):
                continue
            if memo.short and memo.spans and self.inside_found(text, key[0], key[1], memo.spans):
                continue
            return False
        return True

    def inside_found(self, text: str, candidate: str, offset: int, spans) -> bool:
        end = offset + len(candidate)
        if len(candidate) > _PHONE_SHORT_CANDIDATE or not any(s <= offset and end <= e for s, e in spans):
            return False
        match = self.pm._PATTERN.match(text, offset)
        return match is not None and match.end() == end

    def rejected_before_parsing(self, matcher, candidate: str, offset: int) -> bool:
        return self.rejected_at(matcher.text, candidate, offset)

    def rejected_at(self, text: str, candidate: str, offset: int) -> bool:
        """The checks at the top of PhoneNumberMatcher._parse_and_verify (leniency VALID)."""
        pm, matcher = self.pm, self.pm.PhoneNumberMatcher
        if not pm.fullmatch(pm._MATCHING_BRACKETS, candidate) or pm._PUB_PAGES.search(candidate):
            return True
        if offset > 0 and not pm._LEAD_PATTERN.match(candidate):
            previous_char = text[offset - 1]
            if matcher._is_invalid_punctuation_symbol(previous_char) or matcher._is_latin_letter(
                previous_char
            ):
                return True
        last_char_index = offset + len(candidate)
        if last_char_index < len(text):
            next_char = text[last_char_index]
            if matcher._is_invalid_punctuation_symbol(next_char) or matcher._is_latin_letter(next_char):
                return True
        return False

    def nothing_anywhere(self, text: str) -> bool:
        """Shortcut 0: no region can match. Without an 'x', the matcher never trims a candidate,
        so its candidates are exactly the pattern's successive matches. Each one is dead if it
        has fewer digits than the shortest valid number and no letters (parse() could turn
        letters into digits), or if it is all ASCII digits, so no group inside it is tried, and
        that group is rejected before parsing or invalid in every region (shortcut 2)."""
        if "x" in text or "X" in text or "\uff58" in text or "\uff38" in text:
            return False
        for match in self.pm._PATTERN.finditer(text):
            candidate = match.group()
            if candidate.isdigit() and candidate.isascii():
                if len(candidate) < self.min_nsn:
                    continue
                if self.rejected_at(text, candidate, match.start()) or self.invalid_everywhere(candidate):
                    continue
                return False
            digits = sum(1 for ch in candidate if ch.isdigit())
            if digits >= self.min_nsn or _ASCII_LETTER.search(candidate) is not None:
                return False
        return True

    def classify(self, candidate: str) -> tuple:
        for i, ch in enumerate(candidate):
            if ch in _PLUS_CHARS:
                rest = candidate[i + 1 :]
                if rest and all(c in _NATIONAL_CHARS for c in rest):
                    digits = "".join(c for c in rest if "0" <= c <= "9")
                    if (
                        len(digits) > 2
                        and digits[0] != "0"
                        and any(int(digits[:n]) in self.country_codes for n in (1, 2, 3))
                    ):
                        return ("plus",)
                return ("other",)
            if ch.isdigit():
                break
        else:
            return ("other",)
        if all(c in _NATIONAL_CHARS for c in candidate):
            return ("national", "".join(c for c in candidate if "0" <= c <= "9"))
        return ("other",)

    def invalid_everywhere(self, digits: str) -> bool:
        """cannot_be_valid in every region. Where nothing can be stripped from the front of the
        digits, a region's only national number is the digits themselves: if no region's country
        code has a type for them (one alternation), those regions are all settled at once."""
        verdict = self.nowhere.get(digits)
        if verdict is not None:
            return verdict
        length = len(digits)
        anywhere = self.any_typed(length)
        if anywhere is not False and (anywhere is None or anywhere.fullmatch(digits) is None):
            regions = [r for r, info in self.info.items() if info[4] is None or self.strippable(info, digits)]
        else:
            regions = [
                region
                for region, info, typed in self.regions_typed(length)
                if typed is False or self.strippable(info, digits) or (typed and typed.fullmatch(digits))
            ]
        return self.nowhere.put(digits, all(self.cannot_be_valid(region, digits) for region in regions))

    def regions_typed(self, length: int) -> list:
        """[(region, info, typed(its country code, length))], computed once per length."""
        known = self.regions_typed_by_length.get(length)
        if known is None:
            known = self.regions_typed_by_length[length] = [
                (region, info, self.typed(info[4], length) if info[4] is not None else False)
                for region, info in self.info.items()
            ]
        return known

    @staticmethod
    def strippable(info, digits: str) -> bool:
        """Whether parse() could take an international prefix, the country code or a national
        prefix off the front of the digits in this region (see cannot_be_valid)."""
        idd, code_text, own_rule, _, _ = info
        return (
            (idd is not None and idd.match(digits) is not None)
            or digits.startswith(code_text)
            or (own_rule[0] is not None and own_rule[0].match(digits) is not None)
        )

    def any_typed(self, length: int):
        """typed() for every country code of the regions, as one alternation (None: no code has
        a type of this length; False: unknown, check region by region)."""
        if length in self.any_typed_by_length:
            return self.any_typed_by_length[length]
        parts = []
        result = None
        for code in dict.fromkeys(info[4] for info in self.info.values()):
            typed = self.typed(code, length) if code is not None else False
            if typed is False:
                result = False
                break
            if typed is not None:
                parts.append(f"(?:{typed.pattern})")
        else:
            result = re.compile("|".join(parts)) if parts else None
        self.any_typed_by_length[length] = result
        return result

    @staticmethod
    def _strip_prefix(rule, number: str) -> str | None:
        """What _maybe_strip_national_prefix_carrier_code returns when it strips, else None."""
        pattern, transform = rule
        if not number or pattern is None:
            return None
        match = pattern.match(number)
        if match is None:
            return None
        groups = match.groups()
        if not transform or groups[len(groups) - 1] is None:
            return number[match.end() :]
        return re.sub(pattern, transform, number, count=1)

    def descs(self, code: int):
        """The metadata of a country code's regions, or None when that is not known (a
        non-geographic code, missing metadata)."""
        if code in self.descs_by_code:
            return self.descs_by_code[code]
        result = []
        for region in self.code_regions.get(code, ()):
            metadata = self.metadata_for_region(region) if region != "001" else None
            if metadata is None or metadata.general_desc is None:
                result = None
                break
            result.append(metadata)
        self.descs_by_code[code] = result = tuple(result) if result else None
        return result

    def typed(self, code: int, length: int):
        """A regex that fullmatches a national number of this length iff _number_type_helper
        finds a type for it in some region of the code: per region, the general description
        (as a lookahead) and then any type description that admits the length. None when no
        region can; False when the patterns do not combine (use the slow check)."""
        key = (code, length)
        if key in self.typed_by_key:
            return self.typed_by_key[key]
        parts = []
        for metadata in self.descs(code) or ():
            general = metadata.general_desc
            if not general.national_number_pattern or (
                general.possible_length and length not in general.possible_length
            ):
                continue
            types = [
                metadata.premium_rate,
                metadata.toll_free,
                metadata.shared_cost,
                metadata.voip,
                metadata.personal_number,
                metadata.pager,
                metadata.uan,
                metadata.voicemail,
                metadata.fixed_line,
            ]
            if not metadata.same_mobile_and_fixed_line_pattern:
                types.append(metadata.mobile)
            patterns = [
                d.national_number_pattern
                for d in types
                if d is not None
                and d.national_number_pattern
                and (not d.possible_length or length in d.possible_length)
            ]
            if patterns:
                alternatives = "|".join(f"(?:{p})" for p in dict.fromkeys(patterns))
                parts.append(f"(?=(?:{general.national_number_pattern})\\Z)(?:{alternatives})")
        try:
            result = re.compile("|".join(f"(?:{p})" for p in parts)) if parts else None
        except re.error:
            result = False
        self.typed_by_key[key] = result
        return result

    def has_type(self, code: int, number: str) -> bool:
        typed = self.typed(code, len(number))
        if typed is None:
            return False
        if typed is not False:
            return typed.fullmatch(number) is not None
        return any(
            self.matches_desc(number, md.general_desc) and self.number_type(number, md) != self.unknown
            for md in self.descs(code)
        )

    def none_valid(self, code: int, options, raw: str = "") -> bool:
        """No (national number, country code from the default region?) option passes
        is_valid_number and, for the latter, the national prefix check."""
        if self.descs(code) is None:
            return False
        for number, from_default in options:
            if self.has_type(code, number) and (not from_default or self.prefix_present(code, number, raw)):
                return False
        return True

    def invalid_after_idd(self, rest: str) -> bool:
        """parse() stripped an international prefix; `rest` is what follows it."""
        if len(rest) <= 2:
            return True  # TOO_SHORT_AFTER_IDD
        for size in (1, 2, 3):
            code = int(rest[:size])
            if code in self.code_regions and rest[0] != "0":
                break
        else:
            return True  # INVALID_COUNTRY_CODE, and no plus sign to retry without
        number = rest[size:]
        region = self.region_for_code(code)
        metadata = self.metadata_for_region(region) if region != "001" else None
        if metadata is None:
            return False
        options = {(number, False)}
        stripped = self._strip_prefix(self.prefix_rule(metadata), number)
        if stripped is not None:
            options.add((stripped, False))
        return self.none_valid(code, options)

    def national_numbers(self, info, digits: str) -> set[tuple[str, bool]]:
        """Every national significant number parse(digits, R) can produce when R's international
        prefix does not match (see _maybe_extract_country_code and parse), each with whether the
        country code then comes from the default region (CountryCodeSource.FROM_DEFAULT_COUNTRY)."""
        _, code, own_rule, main_rule, _ = info
        options = {(digits, True)}
        stripped = self._strip_prefix(own_rule, digits)
        if stripped is not None:
            options.add((stripped, True))
        if digits.startswith(code):
            without_code = digits[len(code) :]
            firsts = {without_code}
            stripped = self._strip_prefix(own_rule, without_code)
            if stripped is not None:
                firsts.add(stripped)
            for first in firsts:
                options.add((first, False))
                stripped = self._strip_prefix(main_rule, first)
                if stripped is not None:
                    options.add((stripped, False))
        return options

    def cannot_be_valid(self, region: str, digits: str) -> bool:
        key = (region, digits)
        verdict = self.invalid.get(key)
        if verdict is not None:
            return verdict
        info = self.info[region]
        idd, code_text, own_rule, _, code = info
        if code is None:
            return self.invalid.put(key, False)
        try:
            match = idd.match(digits) if idd is not None else None
            if (
                match is None
                and not digits.startswith(code_text)
                and (own_rule[0] is None or not own_rule[0].match(digits))
            ):
                # Nothing for parse() to strip: the national number is the digits themselves.
                return self.invalid.put(key, self.none_valid(code, ((digits, True),), digits))
            rest = digits[match.end() :] if match is not None else None
            if rest is not None and (not rest or rest[0] != "0"):  # _parse_prefix_as_idd strips it
                verdict = self.invalid_after_idd(rest)
            else:
                verdict = self.none_valid(code, self.national_numbers(info, digits), digits)
        except Exception:  # whatever parse() would make of it, we do not know
            verdict = False
        return self.invalid.put(key, verdict)


def _clear_process_caches() -> None:
    """Forget what the phone fast path learnt (for benchmarks: every run starts cold)."""
    detectors = _BUILTINS or {}
    phone = detectors.get("PHONE_NUMBER")
    if phone is not None and phone.fast is not None:
        for cache in (phone.fast.kinds, phone.fast.invalid, phone.fast.nowhere):
            cache.clear()


def _phone_fast_path(regions) -> _PhoneFastPath | None:
    try:
        fingerprint = _phonenumbers_fingerprint()
        if fingerprint != _PHONENUMBERS_FINGERPRINT:
            logger.warning(
                "phonenumbers changed (%s): phone matching runs without its shortcuts", fingerprint[:12]
            )
            return None
        return _PhoneFastPath(regions)
    except Exception as exc:  # another phonenumbers layout: use the plain matcher
        logger.warning("phone matching runs without its shortcuts (%s)", type(exc).__name__)
        return None


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


# --- the Masker --------------------------------------------------------------------------------


_NORMALISE_MAX_LEN = 512  # longer texts are prose, not a transformed value
_SEPARATOR_CHARS = frozenset("-_./ :")
_SEPARATORS = re.compile(r"[0-9][-_./ :]+[0-9]")


def _between_alnum(text: str, i: int) -> bool:
    """Is text[i] inside a run of separators that has a letter or digit on both sides?"""
    j = i
    while j > 0 and text[j - 1] in _SEPARATOR_CHARS:
        j -= 1
    k = i
    while k + 1 < len(text) and text[k + 1] in _SEPARATOR_CHARS:
        k += 1
    return j > 0 and k + 1 < len(text) and text[j - 1].isdigit() and text[k + 1].isdigit()


def _stricter(a, b):
    """The stricter of two whole-value plans (method, keep_last[, label]); None is no plan."""
    if a is None:
        return b
    if b is None:
        return a
    if _STRICTNESS[b[0]] > _STRICTNESS[a[0]]:
        return b
    if _STRICTNESS[b[0]] == _STRICTNESS[a[0]] and b[1] < a[1]:
        return b
    return a


class Masker:
    """Masks SQL rows, text and JSON with the union of the given (validated) specs.

    `key` is the HMAC key for pseudonyms. A Masker is cheap to build (detectors are shared per
    process; the first one in a process loads Presidio, about 2 s), safe to share between threads
    and to keep for as long as its specs hold: it caches results per distinct value within fixed
    bounds (see _CACHE_ENTRIES).
    """

    def __init__(self, specs: list[dict], *, key: bytes):
        if not isinstance(key, bytes | bytearray) or not key:
            raise ValueError("the pseudonym key must be non-empty bytes")
        self._key = bytes(key)
        checked = []
        for i, spec in enumerate(specs or []):
            try:
                checked.append(validate_spec(spec))
            except InvalidInput as exc:
                raise MaskingError(f"masking rule #{i + 1} is invalid: {exc.message}") from None
        self._specs = checked
        self._active = bool(checked)
        self._best_effort = bool(checked) and all(s["best_effort"] for s in checked)

        # Per entity: lowest threshold, strictest method, smallest keep_last among those.
        how: dict[str, tuple[str, int]] = {}
        threshold: dict[str, float] = {}

        def want(entity: str, spec: dict, score_threshold: float) -> None:
            threshold[entity] = min(threshold.get(entity, 1.0), score_threshold)
            method, keep = spec["method"], spec["keep_last"]
            if entity in how:
                old_method, old_keep = how[entity]
                if _STRICTNESS[old_method] > _STRICTNESS[method]:
                    return
                if old_method == method:
                    keep = min(keep, old_keep)
            how[entity] = (method, keep)

        customs: list[tuple[dict, float]] = []
        requested_ner: list[str] = []
        for spec in checked:
            for entity in spec["entities"]:
                want(entity, spec, spec["score_threshold"])
                if entity in NER_ENTITIES and entity not in requested_ner:
                    requested_ner.append(entity)
            for entry in spec["custom"]:
                want(entry["name"], spec, spec["score_threshold"])
                customs.append((entry, spec["score_threshold"]))
        self._how = how
        self._columns = [
            (regex.compile(pattern), spec["method"], spec["keep_last"])
            for spec in checked
            for pattern in spec["columns"]
        ]
        # Columns an admin typed as an entity: masked whole, and so is anything derived from them.
        self._typed = [
            (regex.compile(pattern), entity, spec["method"], spec["keep_last"])
            for spec in checked
            for pattern, entity in (spec.get("column_types") or {}).items()
        ]
        self._source_plans: dict[str, tuple | None] = {}

        detectors: list[tuple[_Detector, float]] = []
        wanted_builtin = [e for e in SUPPORTED_ENTITIES if e in threshold]
        if wanted_builtin:
            builtins = _builtin_detectors()
            for entity in wanted_builtin:
                narrowed = builtins[entity].narrowed(threshold[entity])
                if narrowed is not None:
                    detectors.append((narrowed, threshold[entity]))
        for entry, _ in customs:
            detectors.append((_custom_detector(entry), threshold[entry["name"]]))
        self._unavailable: list[str] = []
        if requested_ner:
            if ner_available():
                detectors.append(
                    (_NerDetector(tuple(requested_ner)), min(threshold[e] for e in requested_ner))
                )
            else:
                self._unavailable = sorted(requested_ner)
        self._detectors = detectors
        self._plan = [(det.min_len, det.min_nd, det.min_nu, det.extra, det.find, det) for det, _ in detectors]
        self._thresholds = threshold
        self._explicit: dict[tuple[str, str], bool] = {}
        self._cache: dict[tuple[str | None, str], tuple[str | None, tuple]] = {}
        self._cache_entries = _CACHE_ENTRIES
        self._cache_use: dict[str | None, list[int]] = {}  # context -> [lookups, hits]
        self._column_plans: dict[str, tuple | None] = {}

    # --- public surface ------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    @property
    def unavailable_entities(self) -> list[str]:
        return list(self._unavailable)

    def mask_text(self, text: str) -> tuple[str, dict[str, int]]:
        if not isinstance(text, str):
            raise TypeError("mask_text takes a string")
        if not self._active or not text:
            return text, {}
        counts: dict[str, int] = {}
        return self._mask_string(text, None, counts, None), counts

    @property
    def follows_lineage(self) -> bool:
        """Whether values derived from masked columns must be found (column rules or types)."""
        return bool(self._columns or self._typed)

    def source_plan(self, qualified: str):
        """How a value fed by base column "table.column" is masked whole, or None if that column
        is not masked (a column rule on its name, or a type an admin gave it)."""
        if qualified in self._source_plans:
            return self._source_plans[qualified]
        bare = qualified.rsplit(".", 1)[-1]
        plan = self._column_plan(bare)
        for rx, entity, method, keep in self._typed:
            if rx.search(bare, timeout=_REGEX_TIMEOUT) or rx.search(qualified, timeout=_REGEX_TIMEOUT):
                plan = _stricter(plan, (method, keep, entity))
        if len(self._source_plans) < _CONTEXTS_KEPT:
            self._source_plans[qualified] = plan
        return plan

    def mask_rows(
        self, columns: list[str], rows: list[list], *, plans: list | None = None
    ) -> tuple[list[list], dict[str, int]]:
        """`plans` (optional, per column): a whole-value plan from the column's lineage
        (governance/masking_lineage.py), combined with the column's own name rules."""
        if not self._active:
            return rows, {}
        counts: dict[str, int] = {}
        names = [str(c) for c in columns]
        plans = [
            _stricter(self._column_plan(name), plans[j] if plans is not None and j < len(plans) else None)
            for j, name in enumerate(names)
        ]
        contexts = [name.lower() for name in names]
        width = len(names)
        out = []
        for row in rows:
            new = list(row)
            for j, value in enumerate(new):
                if value is None:
                    continue
                plan = plans[j] if j < width else None
                if plan is not None:
                    new[j] = self._whole(value, plan, counts, names[j])
                    continue
                kind = type(value)
                if kind is str:
                    if value:
                        new[j] = self._mask_string(
                            value, contexts[j] if j < width else None, counts, names, j
                        )
                elif kind is bool:
                    continue
                elif kind is list or kind is dict or kind is tuple:
                    new[j] = self._mask_nested(value, contexts[j] if j < width else None, counts, None)
                else:
                    text = self._scalar_text(value, counts, names, j)
                    if text is None:
                        new[j] = f"<{ERROR_ENTITY}>"
                        continue
                    masked = self._mask_string(text, contexts[j] if j < width else None, counts, names, j)
                    if masked is not text:
                        new[j] = masked
            out.append(new)
        return out, counts

    def mask_json(self, value) -> tuple[object, dict[str, int]]:
        if not self._active:
            return value, {}
        counts: dict[str, int] = {}
        return self._mask_nested(value, None, counts, None), counts

    # --- cells and values ----------------------------------------------------------------------

    def _column_plan(self, name: str):
        """(method, keep_last) for a column matched by a column rule, else None (strictest wins)."""
        if name in self._column_plans:
            return self._column_plans[name]
        plan = None
        for rx, method, keep in self._columns:
            try:
                matched = rx.search(name, timeout=_REGEX_TIMEOUT) is not None
            except Exception as exc:  # cannot tell: the column is masked whole, or nothing is
                if not self._best_effort:
                    raise MaskingError(
                        f"a column rule failed on column {name!r}: {type(exc).__name__}"
                    ) from None
                logger.warning(
                    "a column rule failed on column %r (%s); masking it whole", name, type(exc).__name__
                )
                plan = ("redact", 0)
                break
            if matched:
                if plan is None or _STRICTNESS[method] > _STRICTNESS[plan[0]]:
                    plan = (method, keep)
                elif method == plan[0]:
                    plan = (method, min(keep, plan[1]))
        for rx, entity, method, keep in getattr(self, "_typed", ()):
            if rx.search(name, timeout=_REGEX_TIMEOUT) is not None:
                plan = _stricter(plan, (method, keep, entity))
        if len(self._column_plans) < _CONTEXTS_KEPT:
            self._column_plans[name] = plan
        return plan

    def _whole(self, value, plan, counts, column=None):
        """A whole value masked by a column rule (or a column type: labelled with its entity)."""
        label = plan[2] if len(plan) > 2 else COLUMN_ENTITY
        try:
            text = _as_text(value)
            replacement = self._replacement(label, text, plan[:2])
        except Exception as exc:
            return self._failed(exc, counts, column)
        counts[label] = counts.get(label, 0) + 1
        return replacement

    def _scalar_text(self, value, counts, names, j):
        try:
            return value if isinstance(value, str) else str(value)
        except Exception as exc:
            self._failed(exc, counts, names[j] if names and j < len(names) else None)
            return None

    def _mask_nested(self, value, context, counts, plan):
        """mask_json's walk: strings and numbers analysed (or masked whole under a column rule),
        keys too; the nearest key is the context and is matched against column rules."""
        kind = type(value)
        if value is None:
            return value
        if kind is dict:
            out = {}
            for key, item in value.items():
                key_text = key if isinstance(key, str) else str(key)
                item_plan = (
                    plan if plan is not None else (self._column_plan(key_text) if self._columns else None)
                )
                new_key = self._mask_string(key_text, None, counts, None) if key_text else key_text
                if new_key is key_text and not isinstance(key, str):
                    new_key = key
                while new_key in out:  # two keys masked alike: keep both
                    new_key = f"{new_key}#"
                out[new_key] = self._mask_nested(item, key_text.lower(), counts, item_plan)
            return out
        if kind is list or kind is tuple:
            return [self._mask_nested(item, context, counts, plan) for item in value]
        if plan is not None:
            return self._whole(value, plan, counts)
        if kind is bool:
            return value
        if kind is str:
            return self._mask_string(value, context, counts, None) if value else value
        text = self._scalar_text(value, counts, None, 0)
        if text is None:
            return f"<{ERROR_ENTITY}>"
        masked = self._mask_string(text, context, counts, None)
        return value if masked is text else masked

    def _mask_string(self, text: str, context: str | None, counts: dict, names, j: int = 0) -> str:
        """The masked text (the same object when nothing was found); adds to counts."""
        cacheable = len(text) <= _CACHE_VALUE_MAX_LEN and self._cache_entries > 0
        if cacheable:
            use = self._cache_use.get(context)
            if use is None:
                if len(self._cache_use) >= _CONTEXTS_KEPT:
                    self._cache_use.clear()
                use = self._cache_use.setdefault(context, [0, 0])
            if use[0] >= _CACHE_PROBE and use[1] < use[0] * _CACHE_MIN_HIT_RATE:
                cacheable = False  # values here do not repeat
            else:
                use[0] += 1
                hit = self._cache.get((context, text))
                if hit is not None:
                    use[1] += 1
                    masked, found = hit
                    for entity, n in found:
                        counts[entity] = counts.get(entity, 0) + n
                    return text if masked is None else masked
        try:
            findings = self._analyze(text, context)
            if not any(f[0] == 0 and f[1] == len(text) for f in findings):  # whole value found: done
                findings += self._normalised_findings(text, context)
            masked, found = self._render(text, findings) if findings else (None, ())
        except Exception as exc:
            column = names[j] if isinstance(names, list) and j < len(names) else None
            return self._failed(exc, counts, column)
        if cacheable:
            if len(self._cache) >= self._cache_entries:
                self._cache.clear()
            self._cache[(context, text)] = (masked, found)
        for entity, n in found:
            counts[entity] = counts.get(entity, 0) + n
        return text if masked is None else masked

    def _failed(self, exc: Exception, counts: dict, column: str | None) -> str:
        where = f" in column {column!r}" if column is not None else ""
        if not self._best_effort:
            raise MaskingError(f"masking failed{where}: {type(exc).__name__}") from None
        logger.warning("masking failed%s (%s); value withheld", where, type(exc).__name__)
        counts[ERROR_ENTITY] = counts.get(ERROR_ENTITY, 0) + 1
        return f"<{ERROR_ENTITY}>"

    # --- detection -----------------------------------------------------------------------------

    def _normalised_findings(self, text: str, context: str | None) -> list[tuple]:
        """Findings in normalised views of a number-like value, mapped back onto the original:
        upper case (an IBAN written `lower(iban)` is still an IBAN) and without separators between
        digits (`de89-3704-0044...`, `078 05 1120`). Only values with at least 7 digits
        are looked at twice more; the recognizers' own validation still applies to each view."""
        if not text.isascii() or _ascii_digits(text) < 7 or len(text) > _NORMALISE_MAX_LEN:
            return []
        out: list[tuple] = []
        upper = text.upper()
        if upper != text:
            out += self._analyze(upper, context)
        if _SEPARATORS.search(text):
            keep = [
                i for i, ch in enumerate(upper) if not (ch in _SEPARATOR_CHARS and _between_alnum(upper, i))
            ]
            if len(keep) < len(text):
                compact = "".join(upper[i] for i in keep)
                for start, end, score, entity in self._analyze(compact, context):
                    out.append((keep[start], keep[end - 1] + 1, score, entity))
        return out

    def _analyze(self, text: str, context: str | None, *, window: bool = True) -> list[tuple]:
        """Presidio's findings for `text` with explicit context `context` (a column name or JSON
        key), after context enhancement, threshold and remove_duplicates: [(start, end, score,
        entity)]. `window=False` leaves out the preceding-words context (Presidio without a model)."""
        n = len(text)
        if text.isascii():
            nd = nu = _ascii_digits(text)
        else:
            nd = sum(text.count(d) for d in "0123456789")
            nu = sum(1 for ch in text if ch.isdigit())
        timeout = _REGEX_TIMEOUT + n * _REGEX_TIMEOUT_PER_CHAR
        raw = []
        for min_len, min_nd, min_nu, extra, find, det in self._plan:
            if n < min_len or nd < min_nd or nu < min_nu or (extra is not None and not extra(text, nu)):
                continue
            found = find(text, timeout)
            if found:
                raw.append((det, found))
        if not raw:
            return []
        results = []
        words = lowered = None
        thresholds = self._thresholds
        for det, found in raw:
            context_words = det.context
            explicit = False
            if context_words and context is not None:
                key = (det.entity, context)
                explicit = self._explicit.get(key)
                if explicit is None:
                    if len(self._explicit) >= _CONTEXTS_KEPT:
                        self._explicit.clear()
                    explicit = self._explicit[key] = _supported(context_words, (context,))
            nearby = window
            if context_words and window and not explicit:
                # A keyword containing a context word means the text contains it.
                if lowered is None:
                    lowered = text.lower()
                nearby = any(w in lowered for w in context_words)
            for start, end, score, entity in found:
                if context_words and score < _MAX_SCORE:
                    boost = explicit
                    if not boost and nearby:
                        if words is None:
                            words = _Words(text)
                        boost = _supported(context_words, words.around(start))
                    if boost:
                        score = _boosted(score)
                if score >= thresholds[entity]:
                    results.append((start, end, score, entity))
        return _remove_duplicates(results) if results else []

    def _render(self, text: str, findings: list[tuple]) -> tuple[str, tuple]:
        """Merge overlapping findings (label: highest score, then longest, then earliest) and
        replace each merged span. Returns the text and ((entity, count), ...)."""
        if len(findings) == 1:
            start, end, _, entity = findings[0]
            replacement = self._replacement(entity, text[start:end], self._how.get(entity, ("redact", 0)))
            return text[:start] + replacement + text[end:], ((entity, 1),)
        findings = sorted(findings)
        clusters: list[list] = []
        for finding in findings:
            if clusters and finding[0] < clusters[-1][1]:
                cluster = clusters[-1]
                cluster[1] = max(cluster[1], finding[1])
                cluster[2].append(finding)
            else:
                clusters.append([finding[0], finding[1], [finding]])
        parts = []
        counts: dict[str, int] = {}
        position = 0
        for start, end, members in clusters:
            best = min(members, key=lambda f: (-f[2], f[0] - f[1], f[0], f[3]))
            entity = best[3]
            parts.append(text[position:start])
            parts.append(self._replacement(entity, text[start:end], self._how.get(entity, ("redact", 0))))
            counts[entity] = counts.get(entity, 0) + 1
            position = end
        parts.append(text[position:])
        return "".join(parts), tuple(counts.items())

    def _replacement(self, entity: str, value: str, how: tuple[str, int]) -> str:
        method, keep_last = how
        if method == "redact":
            return f"<{entity}>"
        if method == "pseudonym":
            message = f"{entity}:{_normalise(entity, value)}".encode()
            return f"<{entity}:{hmac.new(self._key, message, hashlib.sha256).hexdigest()[:10]}>"
        return _partial(value, keep_last)
