"""Detectors: Presidio-style pattern detectors (with context words), IBAN, phone (over the fast
path) and the optional spaCy NER detector."""

from __future__ import annotations

import functools
import re
import threading

import regex

from governance.masking.phone import _ASCII_LETTER, _phone_fast_path
from governance.masking.spec import (
    _CONTEXT_FACTOR,
    _CONTEXT_MIN_SCORE,
    _MAX_SCORE,
    _SPACY_EN_MODELS,
    NER_ENTITIES,
)

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
