"""The feature combiner of a quality scorer: fastText's log-odds plus document form, in one logistic model.

The combiner must learn how far to trust fastText on documents fastText has not seen, so its
fastText feature comes out of fold: the documents are split by group into `folds`, fastText is
trained on the passages of all folds but one and scores the documents of that one. The shipped
fastText model is then trained on everything and the combiner on the out-of-fold features of the
documents shaped like web pages (quality_data.PAGE_SOURCES): by default with unit weights, each
feature counting +1 or -1 by the sign the heuristics give it, and only the calibration fitted
(filters/quality_features.fit_combiner says why). Sources
are weighted so that each counts the same within its label (697 web pages do not outvote 20 CCNet
documents), and the two labels weigh the same.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from filters.quality import class_scores, combiner_path, load_model
from filters.quality_features import FEATURES, Combiner, feature_matrix, fit_combiner
from pipeline.quality_train import fit, roc_auc
from tools.quality_data import PAGE_SOURCES, passage_rows


def fold_of(group: str, folds: int) -> int:
    return xxhash.xxh32_intdigest(group.encode(), seed=7) % folds


def source_weights(docs: list[dict[str, Any]]) -> np.ndarray:
    """Each source's documents share one unit of weight; each label's sources share the same total."""
    per_source = Counter(d["source"] for d in docs)
    sources_per_label = Counter(label for _, label in {(d["source"], d["label"]) for d in docs})
    return np.array([1 / (per_source[d["source"]] * sources_per_label[d["label"]]) for d in docs])


def fasttext_probs(model_path: Path, texts: list[str], positive: str = "hq") -> np.ndarray:
    model = load_model(str(model_path))
    labels = [label.removeprefix("__label__") for label in model.get_labels()]
    return class_scores(model, texts, labels)[:, labels.index(positive)]


def out_of_fold_probs(docs: list[dict[str, Any]], folds: int, workdir: Path, **fit_params: Any) -> np.ndarray:
    """fastText's P(hq) for each document from a model that never saw its group."""
    probs = np.zeros(len(docs))
    for k in range(folds):
        inside = [fold_of(d["group"], folds) == k for d in docs]
        rows, _ = passage_rows([d for d, i in zip(docs, inside, strict=True) if not i])
        path = workdir / f"fold{k}.bin"
        fit(rows, path, quantize=False, **fit_params)
        index = np.flatnonzero(inside)
        probs[index] = fasttext_probs(path, [docs[i]["text"] for i in index])
        load_model.cache_clear()
        path.unlink()
    return probs


def page_features(docs: list[dict[str, Any]], folds: int, workdir: Path,
                  **fit_params: Any) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    """The documents shaped like web pages, their features (fastText's out of fold) and labels."""
    oof = out_of_fold_probs(docs, folds, workdir, **fit_params)
    keep = np.array([d["source"] in PAGE_SOURCES for d in docs])
    pages = [d for d, k in zip(docs, keep, strict=True) if k]
    return pages, feature_matrix([d["text"] for d in pages], oof[keep]), np.array([d["label"] == "hq" for d in pages])


def build_combiner(docs: list[dict[str, Any]], model_path: Path, folds: int = 5, mode: str = "unit",
                   **fit_params: Any) -> dict[str, Any]:
    """Fit the combiner for the fastText model at `model_path` and save it beside it; return its spec."""
    with tempfile.TemporaryDirectory(dir=model_path.parent) as tmp:
        docs, x, y = page_features(docs, folds, Path(tmp), **fit_params)
    spec = fit_combiner(x, y, source_weights(docs), mode=mode)
    score = Combiner(spec).predict(x)
    spec["report"] = {
        "documents": dict(sorted(Counter(f"{d['label']}:{d['source']}" for d in docs).items())),
        "folds": folds,
        # Out-of-fold for fastText, in-sample for the combiner: the honest figures are
        # bench/quality.py's, on sources left out of training altogether.
        "auc_fasttext_out_of_fold": round(roc_auc(x[:, 0], y), 4),
        "auc_combined": round(roc_auc(score, y), 4),
        "weights_by_feature": dict(zip(FEATURES, spec["weights"], strict=True)),
        # Percentiles 0..100 of the web documents' scores, for `cut: reference`.
        "negative_score_percentiles": [round(float(v), 6) for v in np.percentile(score[~y], np.arange(101))],
    }
    combiner_path(model_path).write_text(json.dumps(spec, indent=1) + "\n")
    return spec
