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

Layout (a package by stage; other packages import only the public names re-exported here):
`spec` (vocabulary and `validate_spec`), `phone` (the phone fast path over libphonenumber),
`detectors` (pattern, IBAN, phone and NER detectors), `recognizers` (Presidio's built-in
recognizers as detectors, built once per process, and Presidio's post-processing), `render`
(pseudonyms and partial values) and `masker` (`Masker`).
"""

from __future__ import annotations

from governance.masking.detectors import ner_available  # noqa: F401
from governance.masking.masker import Masker, stricter_method  # noqa: F401
from governance.masking.spec import (  # noqa: F401
    COLUMN_ENTITY,
    DEFAULT_CUSTOM_SCORE,
    DEFAULT_KEEP_LAST,
    DEFAULT_THRESHOLD,
    ERROR_ENTITY,
    MAX_KEEP_LAST,
    METHODS,
    NER_ENTITIES,
    SUPPORTED_ENTITIES,
    MaskingError,
    validate_spec,
)
