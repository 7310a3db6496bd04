"""Phone numbers for the PII step: presidio's recognizer on digit runs, and phone-shaped numbers in context.

presidio's phone recognizer asks phonenumbers whether each digit group in a text is a valid
number in one of several regions. Here it runs only on the digit runs of a text, with shortcuts
that skip parses which cannot succeed (tests hold the result equal to presidio's).

For removal, validity is the wrong test: a number in an unassigned range, or written with odd
separators (`+44-84-835-7725`), is still somebody's number. `shaped_phones` finds numbers that
look like phone numbers (7 to 15 digits in groups, an optional `+country` code, area code in
brackets, extension) when a phone word stands next to them (`phone`, `tel`, `fax`, `mobile`, ...).
"""

from __future__ import annotations

import copy
import itertools
import re
from functools import cache, lru_cache
from typing import Any

from filters.light_imports import without_deep_learning

# Separators phonenumbers accepts between digits (its VALID_PUNCTUATION, plus whitespace).
SEPARATORS = (r"[\s().+/\[\]~\-\u00ad\u200b\u2010-\u2015\u2060\u2212\u2053\u223c\u3000\u30fc"
              r"\uff08\uff09\uff0d\uff0f\uff3b\uff3d\uff5e]")
# presidio's phone recognizer reports numbers of 4 digits (years such as "1648", at score 0.4);
# a shorter run than this is never a finding.
MIN_DIGITS = 4
DIGIT_RUN_PATTERN = rf"\d(?:{SEPARATORS}{{0,3}}\d){{{MIN_DIGITS - 1},}}"
WORD = re.compile(r"\S+")
DIGIT_RUN = re.compile(DIGIT_RUN_PATTERN)
DIGIT_OR_X = re.compile(r"[\dxX]")


def phone_recognizer_class() -> type:
    import phonenumbers

    with without_deep_learning():
        from presidio_analyzer import EntityRecognizer
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    class ShortCandidateSkippingMatcher(phonenumbers.PhoneNumberMatcher):
        """phonenumbers' matcher, minus the parses that cannot succeed or were done before.

        The matcher parses every candidate and every group inside it ("2019-07-17" is tried whole,
        then as "2019", "07" and "17"), once per region.
        - A candidate whose letters and digits (letters become digits in vanity numbers) are fewer
          than the region's shortest valid number can never be valid: it is rejected before
          parsing, the same None the parse would have given.
        - Otherwise the outcome depends only on the candidate, the region, the leniency and the
          characters on either side of it, so it is computed once per process for each."""

        def _parse_and_verify(self, candidate: str, offset: int) -> Any:
            if self.leniency >= phonenumbers.Leniency.VALID:
                fewest = fewest_digits(self.preferred_region, "+" in candidate or "\uff0b" in candidate)
                if len(candidate) < fewest or sum(c.isalnum() for c in candidate) < fewest:
                    return None
            end = offset + len(candidate)
            number = verified_number(candidate, self.preferred_region, self.leniency,
                                     self.text[max(0, offset - 1):offset], self.text[end:end + 1])
            return None if number is None else phonenumbers.PhoneNumberMatch(offset, candidate, number)

    class DigitRunPhoneRecognizer(PhoneRecognizer):
        """presidio's PhoneRecognizer, run on the digit runs of a text rather than on all of it.

        phonenumbers' matcher parses every candidate it finds in every region's numbering plan, so
        its cost follows the length of the text it scans. A phone number lies inside a digit run;
        each run is scanned with one word before it and two after (a `+44` prefix, an `ext. 12`),
        cut at whitespace, so the matcher sees the same neighbouring characters it would in the
        whole text. The loop is presidio's, with the matcher above; tests compare the results."""

        last: tuple[str, list[Any]] = ("", [])

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            # `Pii.analyze` probes a window with the recognizers alone, then runs presidio's full
            # analysis on it when something was found: the second call reuses the first's work.
            if text != self.last[0]:
                self.last = (text, self.find_numbers(text))
            return copy.deepcopy(self.last[1])  # presidio's context step changes scores in place

        def find_numbers(self, text: str) -> list[Any]:
            results = []
            for start, end in digit_run_spans(text):
                window = text[start:end]
                # No candidate in the window can hold more digits than the window does (an "x" may
                # become a 9 in a vanity number): regions whose numbers are longer are not scanned.
                digits, plus = len(DIGIT_OR_X.findall(window)), "+" in window or "\uff0b" in window
                for region in self.supported_regions:
                    if digits < fewest_digits(region, plus):
                        continue
                    for match in ShortCandidateSkippingMatcher(window, region, leniency=self.leniency):
                        try:  # presidio explains a finding by the region the number belongs to
                            found_in = phonenumbers.region_code_for_number(
                                phonenumbers.parse(window[match.start:match.end]))
                        except phonenumbers.NumberParseException:
                            found_in = region
                        result = self._get_recognizer_result(match, window, found_in, None)
                        result.start += start
                        result.end += start
                        results.append(result)
            return EntityRecognizer.remove_duplicates(results)

    return DigitRunPhoneRecognizer


@lru_cache(maxsize=1 << 16)
def verified_number(candidate: str, region: str, leniency: int, before: str, after: str) -> Any:
    """phonenumbers' own parse-and-verify of `candidate` between the characters `before` and
    `after` (empty at the edges of the text): the parsed number, or None."""
    import phonenumbers

    matcher = phonenumbers.PhoneNumberMatcher(before + candidate + after, region, leniency=leniency)
    match = phonenumbers.PhoneNumberMatcher._parse_and_verify(matcher, candidate, len(before))
    return None if match is None else match.number


@cache
def fewest_digits(region: str, plus_sign: bool) -> int:
    """The fewest digits a candidate must hold for phonenumbers to parse a valid number from it
    with `region` as the default (presidio uses leniency VALID: a match must be a valid number):

    - a national number: the shortest valid length among the regions sharing `region`'s country
      code (a number parsed for CA may be valid in the US, one parsed for GB in Jersey);
    - another country's number, written "+<country code><number>": 1 + the shortest valid number
      anywhere (only when the candidate has a plus sign);
    - written with `region`'s international call prefix instead: the prefix's digits, plus those.
    """
    import phonenumbers
    from phonenumbers import PhoneMetadata

    def shortest(code: str) -> int:
        metadata = PhoneMetadata.metadata_for_region(code)
        if metadata is None:
            return 1
        lengths = [n for n in metadata.general_desc.possible_length if n > 0]
        if metadata.national_prefix_transform_rule:  # parsing can add digits (Norfolk Island: 2xxxx -> 32xxxx)
            lengths += [n for n in metadata.general_desc.possible_length_local_only if n > 0]
        return min(lengths, default=1)

    anywhere = min(shortest(code) for code in phonenumbers.SUPPORTED_REGIONS)
    same_code = phonenumbers.region_codes_for_country_code(phonenumbers.country_code_for_region(region))
    national = min(shortest(code) for code in same_code)
    idd = re.compile(PhoneMetadata.metadata_for_region(region).international_prefix or "(?!)")
    idd_digits = next((n for n in range(1, 5) if any(idd.fullmatch(str(k).zfill(n)) for k in range(10 ** n))), 4)
    other_region = (1 if plus_sign else idd_digits) + anywhere
    return min(national, other_region)


def word_window(text: str, start: int, end: int, before: int, after: int) -> tuple[int, int]:
    """[start, end) widened to whole words, plus `before` words before it and `after` after it
    (fewer at the edges of the text). Only the text near the span is scanned: splitting a whole
    page into words cost more than everything else the pre-check does."""
    reach = 32 * (before + 1)
    while True:  # back from `start`, over a stretch that grows until it holds enough word starts
        low = max(0, start - reach)
        starts = [m.start() for m in WORD.finditer(text, low, start + 1)]
        if low > 0 and not text[low - 1].isspace():
            starts = starts[1:]  # the first word found is cut at `low`
        if len(starts) > before or low == 0:
            break
        reach *= 4
    first = starts[max(0, len(starts) - 1 - before)] if starts else start
    last = end
    ends = (m.end() for m in WORD.finditer(text, start))
    for word_end in ends:  # forward: the word holding `end`, then `after` more
        if word_end >= end:
            last = word_end
            for later_end in itertools.islice(ends, after):
                last = later_end
            break
    return min(first, start), max(last, end)


def digit_run_spans(text: str) -> list[tuple[int, int]]:
    """Merged spans of whole words around each digit run: one word before, two after."""
    spans: list[tuple[int, int]] = []
    for match in DIGIT_RUN.finditer(text):
        start, end = word_window(text, match.start(), match.end(), before=1, after=2)
        if spans and start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans



# A phone-shaped number: an optional +country code, an optional "(0)", an optional area code in
# brackets, then 1 to 6 groups of digits split by one space, dot or hyphen, and an optional
# extension. Not glued to a word, a number, a decimal point or a time on either side.
PHONE_SHAPE = re.compile(
    r"(?<![\w+.,/:(-])(?<!\d[ \u00a0.\-])"
    r"(?P<number>(?:\+\d{1,3}[ \u00a0.\-]?)?(?:\(0\)[ \u00a0]?)?(?:\(\d{1,5}\)[ \u00a0.\-]?)?"
    r"\d{1,12}(?:[ \u00a0.\-]\d{1,12}){0,5})"
    r"(?:[ \u00a0]?(?:x|ext\.?|extension)[ \u00a0]?\d{1,5})?"
    r"(?!\w|[.,:]\d)",
    re.IGNORECASE)
# Dates and decimals are number-shaped too: 2019-07-17, 17.07.2019, 10-12-2020, 3.14159265.
ISO_DATE = re.compile(r"\d{4}-\d\d-\d\d")
NOT_A_PHONE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}|\d+\.\d+")
# Words that say the number next to them is a phone number. Not "number" alone: order, invoice and
# account numbers are numbers too.
PHONE_WORDS = frozenset(
    "phone phones telephone tel tel. tél téléphone telefon telefono teléfono cell cellphone mobile mob mob. "
    "handy fax call calls calling ring dial text sms whatsapp hotline helpline landline contact office desk "
    "home work direct switchboard".split())
CONTEXT_WORD = re.compile(r"[^\W\d_]+\.?")
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15


def shaped_phones(text: str, before: int = 4, after: int = 2) -> list[tuple[int, int]]:
    """Spans of phone-shaped numbers with a phone word among the `before` words before them or
    the `after` words after them (words of letters, compared lower-cased and whole)."""
    spans = []
    for match in PHONE_SHAPE.finditer(text):
        number = match.group("number")
        digits = sum(c.isdigit() for c in number)
        if not MIN_PHONE_DIGITS <= digits <= MAX_PHONE_DIGITS or NOT_A_PHONE.fullmatch(number) \
                or ISO_DATE.search(number):
            continue
        start, end = match.span()
        head = CONTEXT_WORD.findall(text[max(0, start - 24 * before):start])[-before:]
        tail = CONTEXT_WORD.findall(text[end:end + 24 * after])[:after]
        if any(w.lower() in PHONE_WORDS or w.lower().rstrip(".") in PHONE_WORDS for w in head + tail):
            spans.append((start, end))
    return spans
