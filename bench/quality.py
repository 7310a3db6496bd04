"""Quality scorers on documents from sources they were not trained on: AUC next to length and the heuristics.

Run: `.venv/bin/python bench/quality.py` (a few minutes on 2 cores: it trains 16 fastText models).

* Data: whole documents of ../shared/data (tools/quality_data.py). The split is by source: each
  fold holds out one good source and one web source (CCNet head or Wikipedia pages against raw
  CC-MAIN-2019-30 or C4), trains fastText and the combiner on everything else exactly as
  tools/build_quality_model.py does (3 inner folds instead of 5), and scores the held-out pair.
  No held-out document, nor any other document of its source, is seen in training.
* Scorers, each an AUC of "good source" against "web source":
  - `length`: words in the document.
  - `heuristics_passed`: how many of the quickstart's four heuristic filters (Gopher repetition, Gopher
    quality, C4 without its terminal-punctuation rule, FineWeb) keep the document, 0 to 4.
  - `c4_no_punct_keep`: 1 if C4's rules without the terminal-punctuation rule keep it.
  - `fasttext`: fastText's P(hq) alone (`features: false`).
  - `combined`: the default scorer (tools/build_quality_model.py's recipe): fastText's log-odds and
    the form features, each standardized and counted +1 or -1 by its sign, calibrated by a logistic fit.
  - `combined_fitted`: the same features with every weight fitted (sign-bounded logistic regression).
* Also the shipped default model on the group-split validation passages it reports (in-source).
* Results: bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.paths import results_dir  # noqa: E402
from filters import STEPS  # noqa: E402
from filters.quality import Quality, QualityParams, combiner_path  # noqa: E402
from filters.quality_features import Combiner, feature_matrix, fit_combiner  # noqa: E402
from pipeline.quality_train import roc_auc, train  # noqa: E402
from tools.quality_combine import fasttext_probs, page_features, source_weights  # noqa: E402
from tools.quality_data import default_documents, passage_rows  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = results_dir()
HEURISTICS = [{"type": "gopher_repetition"}, {"type": "gopher_quality"},
              {"type": "c4_quality", "filter_no_terminal_punct": False}, {"type": "fineweb_quality"}]
FOLDS = [("ccnet", "dolma_cc"), ("ccnet", "c4"), ("wiki", "dolma_cc"), ("wiki", "c4")]


def heuristic_keeps(texts: list[str]) -> dict[str, np.ndarray]:
    keeps = {}
    for spec in HEURISTICS:
        step = STEPS[spec["type"]](STEPS[spec["type"]].Params(**spec))
        docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
        step(docs)
        keeps[spec["type"]] = np.array([d.get("drop_reason") is None for d in docs])
    return keeps


def scores(model: Path, texts: list[str], features: bool) -> np.ndarray:
    docs = [{"text": t} for t in texts]
    Quality(QualityParams(model=str(model), features=features))(docs)
    return np.array([d["quality_score"] for d in docs])


def held_out_fold(docs: list[dict], good: str, web: str, workdir: Path) -> dict:
    train_docs = [d for d in docs if d["source"] not in (good, web)]
    test = [d for d in docs if d["source"] in (good, web)]
    texts = [d["text"] for d in test]
    y = np.array([d["source"] == good for d in test])
    rows, groups = passage_rows(train_docs)
    model = workdir / f"{good}-{web}.bin"
    train(rows, model, groups=groups, quantize=False)
    pages, x, labels = page_features(train_docs, 3, workdir)
    combiner_path(model).write_text(json.dumps(fit_combiner(x, labels, source_weights(pages))))
    fitted = Combiner(fit_combiner(x, labels, source_weights(pages), mode="fitted"))
    keeps = heuristic_keeps(texts)
    found = {
        "length": np.array([len(t.split()) for t in texts], dtype=float),
        "heuristics_passed": sum(k.astype(float) for k in keeps.values()),
        "c4_no_punct_keep": keeps["c4_quality"].astype(float),
        "fasttext": scores(model, texts, features=False),
        "combined": scores(model, texts, features=True),
        "combined_fitted": fitted.predict(feature_matrix(texts, fasttext_probs(model, texts))),
    }
    return {"held_out": f"{good} vs {web}", "documents": {good: int(y.sum()), web: int((~y).sum())},
            "auc": {name: round(roc_auc(s, y), 4) for name, s in found.items()}}


def first_per_source(docs: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` documents of each source, so every fold still has its good and web sources."""
    seen: dict[str, int] = {}
    kept = []
    for doc in docs:
        seen[doc["source"]] = seen.get(doc["source"], 0) + 1
        if limit is None or seen[doc["source"]] <= limit:
            kept.append(doc)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="only the first N documents of each source (a quick check)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    docs = first_per_source(default_documents(DATA), args.limit)
    with tempfile.TemporaryDirectory() as tmp:
        folds = [held_out_fold(docs, good, web, Path(tmp)) for good, web in FOLDS]
    names = list(folds[0]["auc"])
    mean = {name: round(float(np.mean([f["auc"][name] for f in folds])), 4) for name in names}
    shipped = json.loads((Path(__file__).resolve().parents[1] / "filters" / "models"
                          / "quality-default.combiner.json").read_text())["report"]
    result = {"folds": folds, "mean_auc": mean, "shipped_default": shipped | {"negative_score_percentiles": "..."},
              "wall_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result, indent=1))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quality.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
