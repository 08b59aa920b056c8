"""The phone fast path: exact shortcuts over libphonenumber, pinned to a fingerprint of the
functions they stand in for, with per-process caches."""

from __future__ import annotations

import hashlib
import re

from governance.masking.spec import logger

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
