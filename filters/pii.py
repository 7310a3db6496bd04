"""PII removal with presidio-analyzer's pattern recognizers, offline and fast.

presidio analyses a whole page at a few dozen pages per second per core, and most pages contain
no PII at all. So a compiled pre-check (one regex that matches a superset of what the configured
recognizers can match: an `@`, a run of digits, a dotted quad, ...) finds candidate positions
first. A page with none skips presidio entirely; otherwise presidio runs on windows of text around
the candidates, wide enough to hold the context words presidio looks at. Offsets map back to
the page, and only the entity spans change: everything else, whitespace included, stays as it was.

presidio needs a spaCy pipeline for tokens and context words. Without a model (the default, and
the only offline option) it gets a blank spaCy pipeline with lower-cased tokens as lemmas; name a
spaCy model in `spacy_model` to add NER-based PERSON and LOCATION. Email validation uses
tldextract on its bundled suffix list, never the network.
"""

from __future__ import annotations

import copy
import itertools
import random
import re
from collections import Counter
from functools import cache, lru_cache
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from filters.base import Doc, Step, StepParams, pkg_version

PATTERN_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "CRYPTO")
NER_ENTITIES = ("PERSON", "LOCATION")
PLACEHOLDER_NAMES = {"EMAIL_ADDRESS": "EMAIL", "PHONE_NUMBER": "PHONE", "IP_ADDRESS": "IP", "CREDIT_CARD": "CARD",
                     "IBAN_CODE": "IBAN", "US_SSN": "SSN", "CRYPTO": "WALLET", "PERSON": "PERSON",
                     "LOCATION": "LOCATION"}
# FineWeb's replacements (datatrove's PIIFormatter): fixed e-mails, and addresses from a fixed list for IPs.
FINEWEB_EMAILS = ("email@example.com", "firstname.lastname@example.org")
FINEWEB_IPS = ("22.214.171.124", "126.96.36.199", "188.8.131.52", "184.108.40.206", "220.127.116.11", "18.104.22.168")

# Pre-check: cheap patterns that match a superset of what the recognizers behind them can match
# (presidio matches case-insensitively), each with the entities it can lead to. A window of text
# around a match is analysed for those entities only: a window found by an `@` never runs the
# phone recognizer, which is presidio's costliest (it parses every digit run for 8 regions).
# Separators phonenumbers accepts between digits (its VALID_PUNCTUATION, plus whitespace).
_SEPARATORS = (r"[\s().+/\[\]~\-\u00ad\u200b\u2010-\u2015\u2060\u2212\u2053\u223c\u3000\u30fc"
               r"\uff08\uff09\uff0d\uff0f\uff3b\uff3d\uff5e]")
# presidio's phone recognizer reports numbers of 4 digits (years such as "1648", at score 0.4);
# a shorter run than this is never a finding.
_MIN_DIGITS = 4
PRECHECK: dict[str, tuple[str, tuple[str, ...]]] = {
    "at_sign": (r"\S@\S", ("EMAIL_ADDRESS",)),
    "digit_run": (rf"\d(?:{_SEPARATORS}{{0,3}}\d){{{_MIN_DIGITS - 1},}}",
                  ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE")),
    # Written to start at a rare character (a colon, a digit): a pattern that may start at any
    # letter is tried at every letter of the page.
    "ip": (r"\d{1,3}(?:\.\d{1,3}){3}|:[0-9a-f]{0,4}:", ("IP_ADDRESS",)),
    "iban": (r"(?<=[a-z][a-z])\d\d", ("IBAN_CODE",)),
    "wallet": (r"(?:bc1|[13])[a-z0-9]{25,}", ("CRYPTO",)),
}
WORD = re.compile(r"\S+")
DIGIT_RUN = re.compile(PRECHECK["digit_run"][0])
DIGIT_OR_X = re.compile(r"[\dxX]")
# The flags of presidio's default registry: its recognizers match case-insensitively.
REGISTRY_FLAGS = re.DOTALL | re.MULTILINE | re.IGNORECASE


class PiiParams(StepParams):
    type: Literal["pii"] = "pii"
    entities: list[str] = Field(default_factory=lambda: list(PATTERN_ENTITIES))
    min_score: float = Field(0.4, ge=0, le=1)  # presidio score a finding needs to count
    score_thresholds: dict[str, float] = Field(default_factory=dict)  # per entity, overrides min_score
    context: dict[str, list[str]] = Field(default_factory=dict)  # context words per entity (presidio's if unset)
    replacement: Literal["placeholder", "fineweb"] = "placeholder"
    spacy_model: str | None = None  # an installed spaCy model: adds PERSON and LOCATION
    # Regions whose numbering plans phone numbers are parsed with (presidio's default: 8 regions).
    # Each region is one more pass of phonenumbers over every digit run.
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"])
    language: str = "en"
    # Words on each side of a candidate that presidio sees. presidio reads 5 tokens of context
    # before a finding (a word is at least one token), and patterns reach a few words forward.
    window_words: int = Field(8, ge=6)
    precheck: bool = True  # false: presidio on every whole page (slow; for comparison)

    @model_validator(mode="after")
    def _known_entities(self) -> PiiParams:
        known = PATTERN_ENTITIES + (NER_ENTITIES if self.spacy_model else ())
        unknown = [e for e in [*self.entities, *self.score_thresholds, *self.context] if e not in known]
        if unknown:
            hint = "" if self.spacy_model else " (PERSON and LOCATION need spacy_model)"
            raise ValueError(f"unknown entities {unknown}; known: {list(known)}{hint}")
        if self.spacy_model is not None:
            import spacy

            if not spacy.util.is_package(self.spacy_model):
                raise ValueError(f"spacy_model: {self.spacy_model!r} is not installed "
                                 "(`pip install` it; Winnow never downloads)")
        return self


def _offline_tldextract() -> None:
    """presidio's e-mail check calls `tldextract.extract`, whose default extractor fetches the
    public suffix list; point it at the bundled snapshot instead."""
    import tldextract.tldextract as tld

    from filters.url import offline_tldextract

    tld.TLD_EXTRACTOR = offline_tldextract()


def _nlp_engine(language: str, model: str | None) -> Any:
    import spacy
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    if model is not None and not spacy.util.is_package(model):
        raise ValueError(f"pii.spacy_model: {model!r} is not installed (`pip install` it; Winnow never downloads)")

    class OfflineSpacyEngine(SpacyNlpEngine):
        def load(self) -> None:
            self.nlp = {language: spacy.load(model) if model else spacy.blank(language)}

        def _doc_to_nlp_artifact(self, doc: Any, lang: str) -> NlpArtifacts:
            artifacts = super()._doc_to_nlp_artifact(doc, lang)
            if model is None:  # a blank pipeline has no lemmatizer: match context words on lower case
                artifacts.lemmas = [token.lower_ for token in doc]
                artifacts.keywords = NlpArtifacts.set_keywords(self, artifacts.lemmas, lang)
            return artifacts

    engine = OfflineSpacyEngine(models=[{"lang_code": language, "model_name": model or "blank"}])
    engine.load()
    return engine


def phone_recognizer_class() -> type:
    import phonenumbers
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


@lru_cache(maxsize=4)
def build_analyzer(params_json: str, stock: bool = False) -> Any:
    """presidio AnalyzerEngine with only the configured recognizers; built once per process.
    `stock=True` uses presidio's own PhoneRecognizer (the reference the tests compare with)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        SpacyRecognizer,
        UsSsnRecognizer,
    )

    params = PiiParams.model_validate_json(params_json)
    _offline_tldextract()

    phone = PhoneRecognizer if stock else phone_recognizer_class()
    classes = {"EMAIL_ADDRESS": EmailRecognizer, "PHONE_NUMBER": phone, "IP_ADDRESS": IpRecognizer,
               "CREDIT_CARD": CreditCardRecognizer, "IBAN_CODE": IbanRecognizer, "US_SSN": UsSsnRecognizer,
               "CRYPTO": CryptoRecognizer}
    registry = RecognizerRegistry(supported_languages=[params.language])
    for entity in params.entities:
        if entity in classes:
            kwargs: dict[str, Any] = {"supported_language": params.language}
            if entity in params.context:
                kwargs["context"] = params.context[entity]
            if entity == "PHONE_NUMBER":
                kwargs["supported_regions"] = tuple(params.phone_regions)
            recognizer = classes[entity](**kwargs)
            if hasattr(recognizer, "global_regex_flags"):
                recognizer.global_regex_flags = REGISTRY_FLAGS
            registry.add_recognizer(recognizer)
    ner = [e for e in params.entities if e in NER_ENTITIES]
    if ner:
        registry.add_recognizer(SpacyRecognizer(supported_language=params.language, supported_entities=ner))
    return AnalyzerEngine(registry=registry, nlp_engine=_nlp_engine(params.language, params.spacy_model),
                          supported_languages=[params.language])


class Pii(Step):
    """Finds PII with presidio and replaces each span; adds `pii_count` and `pii_counts`."""

    type_name = "pii"
    Params = PiiParams
    output_columns: ClassVar[dict[str, pa.DataType]] = {
        "pii_count": pa.int32(), "pii_counts": pa.map_(pa.string(), pa.int32())}

    def __init__(self, params: PiiParams):
        super().__init__(params)
        self.params: PiiParams = params
        self.params_json = params.model_dump_json()
        prechecks = [(re.compile(pattern, re.IGNORECASE), tuple(e for e in entities if e in params.entities))
                          for pattern, entities in PRECHECK.values()]
        self.prechecks = [(rx, entities) for rx, entities in prechecks if entities]
        self.needs_whole_text = any(e in NER_ENTITIES for e in params.entities)

    @classmethod
    def versions(cls, params: PiiParams) -> dict[str, str]:
        out = {"presidio_analyzer": pkg_version("presidio_analyzer"), "phonenumbers": pkg_version("phonenumbers")}
        if params.spacy_model:
            out["spacy_model"] = f"{params.spacy_model}=={pkg_version(params.spacy_model)}"
        return out

    def process(self, docs: list[Doc]) -> None:
        # Find everything first, then change the documents: if a page makes presidio fail, the
        # batch is retried page by page, and no page may be anonymized twice.
        all_findings = [self.find(doc["text"] or "") for doc in docs]
        for doc, findings in zip(docs, all_findings, strict=True):
            counts = Counter(f[0] for f in findings)
            doc["pii_count"] = len(findings)
            doc["pii_counts"] = dict(counts)
            if findings:
                doc["text"] = self.replace(doc["text"], findings, doc.get("id") or "")
                self.stats["docs_with_pii"] += 1
                for entity, n in counts.items():
                    self.stats[f"found:{entity}"] += n

    def candidate_windows(self, text: str) -> list[tuple[int, int, tuple[str, ...]]]:
        """Merged [start, end) windows of whole words around every pre-check match, each with the
        entities its matches can lead to."""
        spans = []
        n = self.params.window_words
        for regex, entities in self.prechecks:
            for match in regex.finditer(text):
                spans.append((*word_window(text, match.start(), match.end(), n, n), entities))
        windows: list[tuple[int, int, tuple[str, ...]]] = []
        for start, end, entities in sorted(spans):
            if windows and start <= windows[-1][1]:
                last = windows[-1]
                merged = tuple(e for e in self.params.entities if e in last[2] or e in entities)
                windows[-1] = (last[0], max(last[1], end), merged)
            else:
                windows.append((start, end, entities))
        return windows

    def analyze(self, text: str, entities: tuple[str, ...] | None = None,
                stock: bool = False) -> list[tuple[str, int, int, float]]:
        """presidio's findings over `text`: (entity, start, end, score). `stock`: with presidio's
        own phone recognizer, the reference for tests and benchmarks.

        presidio tokenizes every text it analyses, for context words, before it runs a
        recognizer, and most windows hold no finding. Pattern recognizers never read the tokens,
        so they run first on their own; only a window where one finds something pays for the
        tokens and the full analysis (the same call, so scores include context as presidio's do)."""
        analyzer = build_analyzer(self.params_json, stock)
        wanted = list(entities or self.params.entities)
        if not stock and not self.needs_whole_text:
            recognizers = analyzer.registry.get_recognizers(language=self.params.language, entities=wanted)
            if not any(r.analyze(text=text, entities=wanted, nlp_artifacts=None) for r in recognizers):
                return []
        results = analyzer.analyze(text=text, language=self.params.language, entities=wanted)
        return [(r.entity_type, r.start, r.end, r.score) for r in results]

    def find(self, text: str) -> list[tuple[str, int, int, float]]:
        """Non-overlapping findings above their thresholds, in text order."""
        if not self.params.precheck or self.needs_whole_text:
            found = self.analyze(text) if text else []
        else:
            found = []
            windows = self.candidate_windows(text)
            if not windows:
                self.stats["skipped_by_precheck"] += 1
            for start, end, entities in windows:
                found += [(e, s + start, t + start, score)
                          for e, s, t, score in self.analyze(text[start:end], entities)]
        return resolve(found, self.params.min_score, self.params.score_thresholds)

    def replace(self, text: str, findings: list[tuple[str, int, int, float]], doc_id: str) -> str:
        """Each span becomes a typed placeholder, the same one for the same value within a page
        (`<EMAIL_1>`), or FineWeb's fixed replacements for e-mails and IPs."""
        rng = random.Random(doc_id)
        numbers: dict[tuple[str, str], int] = {}
        out, last = [], 0
        for entity, start, end, _ in findings:
            value = text[start:end]
            if self.params.replacement == "fineweb" and entity == "EMAIL_ADDRESS":
                new = rng.choice(FINEWEB_EMAILS)
            elif self.params.replacement == "fineweb" and entity == "IP_ADDRESS":
                new = rng.choice(FINEWEB_IPS)
            else:
                key = (entity, value)
                numbers.setdefault(key, 1 + sum(1 for e, _ in numbers if e == entity))
                new = f"<{PLACEHOLDER_NAMES.get(entity, entity)}_{numbers[key]}>"
            out += [text[last:start], new]
            last = end
        out.append(text[last:])
        return "".join(out)


def resolve(found: list[tuple[str, int, int, float]], min_score: float,
            thresholds: dict[str, float]) -> list[tuple[str, int, int, float]]:
    """Keep findings above their threshold; where spans overlap, the higher score (then the longer
    span) wins, so every character is replaced at most once."""
    kept: list[tuple[str, int, int, float]] = []
    candidates = [f for f in found if f[3] >= thresholds.get(f[0], min_score)]
    for finding in sorted(candidates, key=lambda f: (-f[3], -(f[2] - f[1]), f[1], f[0])):
        if all(finding[2] <= k[1] or finding[1] >= k[2] for k in kept):
            kept.append(finding)
    return sorted(kept, key=lambda f: f[1])
