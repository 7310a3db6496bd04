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

import random
import re
from collections import Counter
from functools import lru_cache
from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import Field, model_validator

from filters.base import Doc, Step, StepParams, pkg_version
from filters.light_imports import without_deep_learning
from filters.pii_ner import check_installed, entity_spans
from filters.pii_phone import (  # noqa: F401 - WORD, verified_number and word_window are used by tests and bench
    DIGIT_RUN_PATTERN,
    WORD,
    phone_recognizer_class,
    shaped_phones,
    verified_number,
    word_window,
)

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
PRECHECK: dict[str, tuple[str, tuple[str, ...]]] = {
    "at_sign": (r"\S@\S", ("EMAIL_ADDRESS",)),
    "digit_run": (DIGIT_RUN_PATTERN, ("PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE")),
    # Written to start at a rare character (a colon, a digit): a pattern that may start at any
    # letter is tried at every letter of the page.
    "ip": (r"\d{1,3}(?:\.\d{1,3}){3}|:[0-9a-f]{0,4}:", ("IP_ADDRESS",)),
    "iban": (r"(?<=[a-z][a-z])\d\d", ("IBAN_CODE",)),
    "wallet": (r"(?:bc1|[13])[a-z0-9]{25,}", ("CRYPTO",)),
}
# Phone-shaped numbers in context: over the default min_score, under what presidio gives a valid
# number in context (0.75) and an SSN (0.5), which win where spans overlap.
SHAPED_PHONE_SCORE = 0.45
# The flags of presidio's default registry: its recognizers match case-insensitively.
REGISTRY_FLAGS = re.DOTALL | re.MULTILINE | re.IGNORECASE


class PiiParams(StepParams):
    type: Literal["pii"] = "pii"
    entities: list[str] = Field(default_factory=lambda: list(PATTERN_ENTITIES))
    min_score: float = Field(0.4, ge=0, le=1)  # presidio score a finding needs to count
    score_thresholds: dict[str, float] = Field(default_factory=dict)  # per entity, overrides min_score
    context: dict[str, list[str]] = Field(default_factory=dict)  # context words per entity (presidio's if unset)
    replacement: Literal["placeholder", "fineweb"] = "placeholder"
    spacy_model: str | None = None  # an installed spaCy pipeline with NER: adds PERSON and LOCATION
    # "valid": numbers phonenumbers calls valid in one of `phone_regions` (presidio's rule).
    # "in_context": also phone-shaped numbers next to a phone word, valid or not (unassigned area
    # codes, odd separators): for removal, where a missed number costs more than a removed one.
    phone_numbers: Literal["valid", "in_context"] = "valid"
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
            check_installed(self.spacy_model)
        return self


def _offline_tldextract() -> None:
    """presidio's e-mail check calls `tldextract.extract`, whose default extractor fetches the
    public suffix list; point it at the bundled snapshot instead."""
    import tldextract.tldextract as tld

    from filters.url import offline_tldextract

    tld.TLD_EXTRACTOR = offline_tldextract()


def _nlp_engine(language: str, model: str | None) -> Any:
    with without_deep_learning():
        import spacy
        from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

    if model is not None:
        check_installed(model)

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


def degenerate_ipv6(text: str) -> bool:
    """True for what presidio's IPv6 patterns match in prose and code but no one writes as an
    address: `::` alone ("See the script :: output", "Chapter 3 :: Shipping"), a single group
    (`::1`, `a::`), groups of letters only (`a::b`, `dead::beef`), or two short groups (`1::2`)."""
    if "." in text:  # IPv4-mapped or embedded: the IPv4 part makes it an address
        return False
    core = text.split("/")[0].split("%")[0]
    groups = [g for g in core.split(":") if g]
    return (len(groups) < 2 or not any(c.isdigit() for c in core)
            or (len(groups) == 2 and max(len(g) for g in groups) < 3))


def ip_recognizer_class() -> type:
    from presidio_analyzer.predefined_recognizers import IpRecognizer

    class AddressIpRecognizer(IpRecognizer):
        """presidio's IP recognizer, minus the degenerate IPv6 matches."""

        def invalidate_result(self, pattern_text: str) -> bool:
            return bool(super().invalidate_result(pattern_text)) or degenerate_ipv6(pattern_text)

    return AddressIpRecognizer


@lru_cache(maxsize=4)
def build_analyzer(params_json: str, stock: bool = False) -> Any:
    """presidio AnalyzerEngine with only the configured recognizers; built once per process.
    `stock=True` uses presidio's own PhoneRecognizer (the reference the tests compare with).

    Context words count only as whole words: presidio's default matches them inside longer
    words, so "script" holds "ip" and lifts a `::` over the threshold. Names and places come from
    `pii_ner`, not from here: pattern findings are the same with or without a spaCy model."""
    with without_deep_learning():
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        CryptoRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    params = PiiParams.model_validate_json(params_json)
    _offline_tldextract()

    phone = PhoneRecognizer if stock else phone_recognizer_class()
    classes = {"EMAIL_ADDRESS": EmailRecognizer, "PHONE_NUMBER": phone, "IP_ADDRESS": ip_recognizer_class(),
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
    return AnalyzerEngine(registry=registry, nlp_engine=_nlp_engine(params.language, None),
                          supported_languages=[params.language],
                          context_aware_enhancer=LemmaContextAwareEnhancer(context_matching_mode="whole_word"))


# `pii_counts` is a list of {entity, count}, one per entity found, sorted by entity. Not an Arrow map:
# 🤗 Datasets (and so the Hub's viewer) has no type for one. Not a column per entity: the schema would
# change with the entities a config names, and runs could no longer be read as one dataset.
PII_COUNTS_TYPE = pa.list_(pa.struct([("entity", pa.string()), ("count", pa.int32())]))


def pii_counts_list(counts: Counter[str]) -> list[dict[str, Any]]:
    return [{"entity": entity, "count": n} for entity, n in sorted(counts.items())]


def pii_counts_dict(value: Any) -> dict[str, int]:
    """A `pii_counts` cell as {entity: count}: the list of structs, or the map that older runs wrote
    (which Arrow gives as (key, value) pairs)."""
    out: dict[str, int] = {}
    for item in value or []:
        entity, n = (item["entity"], item["count"]) if isinstance(item, dict) else item
        out[entity] = out.get(entity, 0) + int(n)
    return out


class Pii(Step):
    """Finds PII with presidio and replaces each span; adds `pii_count` and `pii_counts`."""

    type_name = "pii"
    Params = PiiParams
    output_columns: ClassVar[dict[str, pa.DataType]] = {"pii_count": pa.int32(), "pii_counts": PII_COUNTS_TYPE}

    def __init__(self, params: PiiParams):
        super().__init__(params)
        self.params: PiiParams = params
        self.params_json = params.model_dump_json()
        prechecks = [(re.compile(pattern, re.IGNORECASE), tuple(e for e in entities if e in params.entities))
                          for pattern, entities in PRECHECK.values()]
        self.prechecks = [(rx, entities) for rx, entities in prechecks if entities]
        self.pattern_entities = tuple(e for e in params.entities if e in PATTERN_ENTITIES)
        self.ner_entities = tuple(e for e in params.entities if e in NER_ENTITIES)
        self.shaped_phones = params.phone_numbers == "in_context" and "PHONE_NUMBER" in params.entities

    @classmethod
    def versions(cls, params: PiiParams) -> dict[str, str]:
        out = {"presidio_analyzer": pkg_version("presidio_analyzer"), "phonenumbers": pkg_version("phonenumbers")}
        if params.spacy_model:
            out["spacy_model"] = f"{params.spacy_model}=={pkg_version(params.spacy_model)}"
        return out

    def process(self, docs: list[Doc]) -> None:
        # Find everything first, then change the documents: if a page makes presidio fail, the
        # batch is retried page by page, and no page may be anonymized twice.
        texts = [doc["text"] or "" for doc in docs]
        if self.ner_entities:  # one spaCy pass over the batch
            named = entity_spans(self.params.spacy_model, texts, self.ner_entities)
        else:
            named = [[] for _ in texts]
        all_findings = [self.find(text, extra) for text, extra in zip(texts, named, strict=True)]
        for doc, findings in zip(docs, all_findings, strict=True):
            counts = Counter(f[0] for f in findings)
            doc["pii_count"] = len(findings)
            doc["pii_counts"] = pii_counts_list(counts)
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
        wanted = list(entities or self.pattern_entities)
        if not wanted:
            return []
        if not stock:
            recognizers = analyzer.registry.get_recognizers(language=self.params.language, entities=wanted)
            if not any(r.analyze(text=text, entities=wanted, nlp_artifacts=None) for r in recognizers):
                return []
        results = analyzer.analyze(text=text, language=self.params.language, entities=wanted)
        return [(r.entity_type, r.start, r.end, r.score) for r in results]

    def find(self, text: str, extra: list[tuple[str, int, int, float]] = ()) -> list[tuple[str, int, int, float]]:
        """Non-overlapping findings above their thresholds, in text order, with `extra` findings
        (names and places) taken into the same resolution."""
        if not self.params.precheck:
            found = self.analyze(text) if text else []
        else:
            found = []
            windows = self.candidate_windows(text)
            if not windows:
                self.stats["skipped_by_precheck"] += 1
            for start, end, entities in windows:
                found += [(e, s + start, t + start, score)
                          for e, s, t, score in self.analyze(text[start:end], entities)]
        if self.shaped_phones:
            found += [("PHONE_NUMBER", start, end, SHAPED_PHONE_SCORE) for start, end in shaped_phones(text)]
        return resolve([*found, *extra], self.params.min_score, self.params.score_thresholds)

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
