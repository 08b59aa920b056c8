"""The `Masker`: plans per column and entity, masks rows, text and JSON, with per-value caches."""

from __future__ import annotations

import hashlib
import hmac
import re

import regex

from governance.errors import InvalidInput
from governance.masking.detectors import _boosted, _Detector, _NerDetector, ner_available
from governance.masking.phone import _ascii_digits
from governance.masking.recognizers import (
    _builtin_detectors,
    _custom_detector,
    _remove_duplicates,
    _supported,
    _Words,
)
from governance.masking.render import _as_text, _normalise, _partial
from governance.masking.spec import (
    _CACHE_ENTRIES,
    _CACHE_MIN_HIT_RATE,
    _CACHE_PROBE,
    _CACHE_VALUE_MAX_LEN,
    _CONTEXTS_KEPT,
    _MAX_SCORE,
    _REGEX_TIMEOUT,
    _REGEX_TIMEOUT_PER_CHAR,
    _STRICTNESS,
    COLUMN_ENTITY,
    ERROR_ENTITY,
    NER_ENTITIES,
    SUPPORTED_ENTITIES,
    MaskingError,
    logger,
    validate_spec,
)

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


def stricter_method(a, b):
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
                plan = stricter_method(plan, (method, keep, entity))
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
            stricter_method(
                self._column_plan(name), plans[j] if plans is not None and j < len(plans) else None
            )
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
                plan = stricter_method(plan, (method, keep, entity))
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
