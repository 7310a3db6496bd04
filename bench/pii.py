"""PII: precision and recall per entity, and throughput on real pages, side by side.

Run: `.venv/bin/python bench/pii.py` (about a minute).

* Quality: the 1,500 samples of ../shared/data/pii/presidio-synth, on the pattern entities it
  labels (CREDIT_CARD, PHONE_NUMBER, EMAIL_ADDRESS, IBAN_CODE, US_SSN, IP_ADDRESS). A finding is
  a true positive when its type matches a labelled span it overlaps.
* Compared:
  - `presidio default`: `AnalyzerEngine` with presidio's whole default registry of English
    recognizers, every finding kept (score_threshold 0). Its default NLP engine loads
    `en_core_web_lg`, which no package registry here offers; it gets the same blank spaCy
    pipeline as Winnow, so its NER recognizer finds nothing and its speed is a lower bound of
    the real default's cost.
  - `FineWeb regexes`: datatrove's `PIIFormatter` e-mail and IP expressions (FineWeb masks only those).
  - `Winnow`: the `pii` step with its defaults (pre-check, 7 pattern recognizers, min_score 0.4).
* Throughput: every extracted document of 150+ words in cc-text (dolma CC-MAIN-2019-30, C4,
  CCNet), one core, documents per second for presidio default on whole pages, and Winnow.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_corpus import DATA, real_documents  # noqa: E402

from filters.pii import (  # noqa: E402
    PATTERN_ENTITIES,
    Pii,
    PiiParams,
    _nlp_engine,
    _offline_tldextract,
    verified_number,
)

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_ENTITIES = ("CREDIT_CARD", "PHONE_NUMBER", "EMAIL_ADDRESS", "IBAN_CODE", "US_SSN", "IP_ADDRESS")


def presidio_default():
    from presidio_analyzer import AnalyzerEngine

    _offline_tldextract()
    return AnalyzerEngine(nlp_engine=_nlp_engine("en", None), supported_languages=["en"])


def fineweb_regexes():
    from datatrove.pipeline.formatters.pii import PIIFormatter

    f = PIIFormatter()
    return {"EMAIL_ADDRESS": f.emails_replacer, "IP_ADDRESS": f.ip_replacer}


def score(samples: list[dict], predict) -> dict:
    tp, fp, fn = Counter(), Counter(), Counter()
    for sample in samples:
        gold = [(s["entity_type"], s["start_position"], s["end_position"]) for s in sample["spans"]
                if s["entity_type"] in EVAL_ENTITIES]
        found = [f for f in predict(sample["full_text"]) if f[0] in EVAL_ENTITIES]
        for entity, start, end in found:
            hit = any(g[0] == entity and g[1] < end and start < g[2] for g in gold)
            (tp if hit else fp)[entity] += 1
        for entity, start, end in gold:
            if not any(f[0] == entity and f[1] < end and start < f[2] for f in found):
                fn[entity] += 1
    out = {}
    for e in EVAL_ENTITIES:
        p = tp[e] / (tp[e] + fp[e]) if tp[e] + fp[e] else None
        r = tp[e] / (tp[e] + fn[e]) if tp[e] + fn[e] else None
        out[e] = {"precision": round(p, 3) if p is not None else None,
                  "recall": round(r, 3) if r is not None else None, "gold": tp[e] + fn[e]}
    return out


def main() -> None:
    samples = json.loads((DATA / "pii" / "presidio-synth" / "synth_dataset_v2.json").read_text())
    default = presidio_default()
    winnow = Pii(PiiParams())
    regexes = fineweb_regexes()
    systems = {
        "presidio_default": lambda t: [(r.entity_type, r.start, r.end) for r in default.analyze(t, language="en")],
        "fineweb_regexes": lambda t: [(e, m.start(), m.end()) for e, r in regexes.items() for m in r.regex.finditer(t)
                                      if r.validator is None or r.validator(m.group(0))],
        "winnow": lambda t: [(e, s, x) for e, s, x, _ in winnow.find(t)],
    }
    quality = {name: score(samples, fn) for name, fn in systems.items()}
    for name, q in quality.items():
        print(f"{name:18s}", "  ".join(f"{e}: P={v['precision']} R={v['recall']}" for e, v in q.items()))

    pages = real_documents()
    speed = {}
    for name in ("presidio_default", "winnow"):
        fn = systems[name]
        fn(pages[0])  # warm up
        verified_number.cache_clear()  # Winnow's phone parses start cold, as in a fresh worker
        t = time.perf_counter()
        found = sum(len(fn(p)) for p in pages)
        elapsed = time.perf_counter() - t
        speed[name] = {"docs_per_s": round(len(pages) / elapsed, 1), "findings": found}
    speed["speedup"] = round(speed["winnow"]["docs_per_s"] / speed["presidio_default"]["docs_per_s"], 1)
    winnow.stats.clear()
    winnow([{"id": str(i), "text": p} for i, p in enumerate(pages)])
    speed["winnow_pages_skipped_by_precheck"] = winnow.stats["skipped_by_precheck"]
    print(json.dumps(speed))
    result = {"samples": len(samples), "pages": len(pages), "entities": list(PATTERN_ENTITIES),
              "quality": quality, "throughput_one_core": speed,
              }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pii.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
