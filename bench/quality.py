"""Quality scorers on held-out labelled data: AUC of each, and how the heuristics and the classifier agree.

Run: `.venv/bin/python bench/quality.py` (about 20 seconds).

* Data: the validation side of the default model's split (pipeline/quality_data.py), passages of
  Wikipedia, CCNet head and expert answers (`hq`) against raw CC-MAIN-2019-30 and C4 (`cc`). The
  split is by source document, so no held-out passage shares a document with a training one.
* Scorers:
  - `fasttext_default`: Winnow's default model, P(hq).
  - `heuristics_passed`: how many of the four heuristic filters of the quickstart (Gopher
    repetition, Gopher quality, C4, FineWeb) keep the passage, 0 to 4.
  - `heuristics_keep`: 1 if all four keep it (what the pipeline does), else 0.
  - `combined`: P(hq) where all four keep it, else 0.
  The LLM educational scorer needs an endpoint; none is reachable here, so it is not scored.
* Agreement: a 2 x 2 table of "heuristics keep" against "classifier >= 0.5", and Cohen's kappa.
* Results: bench/results/quality.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from filters import STEPS  # noqa: E402
from filters.quality import Quality, QualityParams  # noqa: E402
from pipeline.quality_data import default_rows  # noqa: E402
from pipeline.quality_train import roc_auc, split  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"
HEURISTICS = [{"type": "gopher_repetition"}, {"type": "gopher_quality"},
              {"type": "c4_quality", "filter_no_terminal_punct": False}, {"type": "fineweb_quality"}]


def heuristic_passes(texts: list[str]) -> np.ndarray:
    passed = np.zeros(len(texts), dtype=int)
    for spec in HEURISTICS:
        step = STEPS[spec["type"]](STEPS[spec["type"]].Params(**spec))
        docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
        step(docs)
        passed += np.array([d.get("drop_reason") is None for d in docs])
    return passed


def main() -> None:
    rows, groups = default_rows(DATA)
    _, valid = split(rows, 0.1, groups)
    texts = [t for t, _ in valid]
    is_hq = np.array([label == "hq" for _, label in valid])
    docs = [{"text": t} for t in texts]
    Quality(QualityParams())(docs)
    prob = np.array([d["quality_score"] for d in docs])
    passes = heuristic_passes(texts)
    keep = passes == 4
    scorers = {"fasttext_default": prob, "heuristics_passed": passes.astype(float),
               "heuristics_keep": keep.astype(float), "combined": np.where(keep, prob, 0.0)}
    auc = {name: round(roc_auc(s, is_hq), 4) for name, s in scorers.items()}
    clf = prob >= 0.5
    table = {"both_keep": int((keep & clf).sum()), "heuristics_only": int((keep & ~clf).sum()),
             "classifier_only": int((~keep & clf).sum()), "neither": int((~keep & ~clf).sum())}
    observed = (table["both_keep"] + table["neither"]) / len(texts)
    expected = keep.mean() * clf.mean() + (1 - keep.mean()) * (1 - clf.mean())
    kappa = (observed - expected) / (1 - expected)
    result = {"validation_rows": len(texts), "hq": int(is_hq.sum()), "cc": int((~is_hq).sum()), "auc": auc,
              "agreement": table, "cohen_kappa": round(float(kappa), 3),
              "heuristics_keep_rate": {"hq": round(float(keep[is_hq].mean()), 3),
                                       "cc": round(float(keep[~is_hq].mean()), 3)}}
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
