"""Model-based quality scoring: any fastText classifier, Winnow's default one included.

Writes `quality_score` on every document: P(positive label) for a two-class model, or the
expected label for an ordinal one (FineWeb-Edu's 0-5). When a combiner (`<model stem>.combiner.json`)
sits beside a two-class model, as it does beside Winnow's default, the score is instead P(good)
from a small logistic model over fastText's log-odds and the document's form: length, lines that
end like sentences, function words, repeated lines, symbols (filters/quality_features.py).

Cuts: `threshold` drops documents scoring below a fixed score. `top_fraction: 0.3` keeps the best
30% of the documents being scored: with `cut: shard` (the default) the step reads its shard once
before the real pass and cuts at the exact percentile of that shard's scores, so every shard keeps
its best 30% (the global best 30% when shards are alike, as they are when input files are
shuffled crawl segments); with `cut: reference` the threshold is the score that only the best
30% of the model's reference web documents reach, a global cut that keeps whatever share of your
data scores that well (DCLM's way).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from filters.base import Doc, Filter, StepParams, pkg_version
from filters.quality_features import Combiner, feature_matrix

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "quality-default.ftz"
_NON_WORD = re.compile(r"[^\w]+")


def normalize(text: str, max_words: int = 2000) -> str:
    """What fastText sees: lower-case words, punctuation dropped, at most `max_words` of them."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split()[:max_words])


def class_scores(model: Any, texts: list[str], labels: list[str], max_words: int = 2000) -> np.ndarray:
    """Probability of each label, one row per text (columns in `labels` order)."""
    predicted, probs = model.predict([normalize(t, max_words) for t in texts], k=len(labels))
    out = np.zeros((len(texts), len(labels)))
    index = {f"__label__{lab}": i for i, lab in enumerate(labels)}
    for row, (names, values) in enumerate(zip(predicted, probs, strict=True)):
        for name, value in zip(names, values, strict=True):
            out[row, index[name]] = value
    return out


def score_from(probs: np.ndarray, labels: list[str], positive: str) -> np.ndarray:
    """A quality score: P(positive) for two classes, else the expected value of numeric labels."""
    if len(labels) == 2:
        return probs[:, labels.index(positive)]
    return probs @ np.array([float(lab) for lab in labels])


class QualityParams(StepParams):
    type: Literal["quality"] = "quality"
    model: str | None = None  # a fastText .bin/.ftz; null: Winnow's default model
    positive_label: str = "hq"  # two-class models: the label whose probability is the score
    threshold: float | None = None  # drop documents scoring below this
    top_fraction: float | None = Field(None, gt=0, le=1)  # keep the best fraction of the documents scored
    cut: Literal["shard", "reference"] = "shard"  # top_fraction of each shard, or of the model's reference pool
    features: bool = True  # use the combiner beside the model when there is one; false: fastText's score alone
    max_words: int = Field(2000, ge=10)

    @model_validator(mode="after")
    def _one_cut(self) -> QualityParams:
        if self.threshold is not None and self.top_fraction is not None:
            raise ValueError("give threshold or top_fraction, not both")
        if not self.model_path().is_file():  # fail before any work starts, not in every shard
            raise ValueError(f"model: {self.model_path()} not found (train one with `winnow quality train`)")
        if self.top_fraction is not None and self.cut == "reference":
            top_fraction_threshold(self.model_path(), self.top_fraction, self.combiner())
        return self

    def combiner(self) -> Path | None:
        path = combiner_path(self.model_path())
        return path if self.features and path.is_file() else None

    def model_path(self) -> Path:
        return Path(self.model) if self.model else DEFAULT_MODEL


@lru_cache(maxsize=4)
def load_model(path: str) -> Any:
    import fasttext

    if not Path(path).exists():
        raise FileNotFoundError(f"quality model {path} not found (train one with `winnow quality train`)")
    return fasttext.load_model(path)


@lru_cache(maxsize=4)
def load_combiner(path: str) -> Combiner:
    return Combiner.load(Path(path))


def combiner_path(model: Path) -> Path:
    """`quality-default.ftz` -> `quality-default.combiner.json`."""
    return model.with_name(model.stem + ".combiner.json")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def top_cut(scores: np.ndarray, fraction: float) -> float | None:
    """The score of the document ranked ceil(fraction * n): keeping scores >= it keeps the best `fraction`
    (a few more on exact ties)."""
    if not len(scores):
        return None
    keep = max(1, int(np.ceil(fraction * len(scores) - 1e-9)))
    return float(np.partition(scores, len(scores) - keep)[len(scores) - keep])


class Quality(Filter):
    type_name = "quality"
    Params = QualityParams
    output_columns: ClassVar[dict[str, pa.DataType]] = {"quality_score": pa.float32()}

    def __init__(self, params: QualityParams):
        super().__init__(params)
        self.params: QualityParams = params
        self.model = load_model(str(params.model_path()))
        self.labels = [label.removeprefix("__label__") for label in self.model.get_labels()]
        combiner = params.combiner() if len(self.labels) == 2 else None
        self.combiner = load_combiner(str(combiner)) if combiner else None
        self.cut = params.threshold
        if params.top_fraction is not None and params.cut == "reference":
            self.cut = top_fraction_threshold(params.model_path(), params.top_fraction, combiner)
        # The stage runner calls prepare_shard with the shard's documents before the real pass.
        self.needs_shard_pass = params.top_fraction is not None and params.cut == "shard"

    def start_shard(self) -> None:
        super().start_shard()
        self.shard_cut: float | None = None

    @classmethod
    def versions(cls, params: QualityParams) -> dict[str, str]:
        path, combiner = params.model_path(), params.combiner()
        found = {"fasttext": pkg_version("fasttext-numpy2-wheel"),
                 "model": file_digest(path) if path.exists() else "missing"}
        return found | ({"combiner": file_digest(combiner)} if combiner else {})

    def score(self, texts: list[str]) -> np.ndarray:
        probs = class_scores(self.model, texts, self.labels, self.params.max_words)
        scores = score_from(probs, self.labels, self.params.positive_label)
        if self.combiner is None:
            return scores
        return self.combiner.predict(feature_matrix(texts, scores))

    def prepare_shard(self, batches: Iterable[list[Doc]]) -> None:
        """See the whole shard once (only its live documents' scores are kept) and fix the shard's cut."""
        scores = [self.score([d["text"] or "" for d in batch]) for batch in batches if batch]
        self.shard_cut = top_cut(np.concatenate(scores) if scores else np.zeros(0), self.params.top_fraction)

    def filter_batch(self, docs: list[Doc]) -> list[str | None]:
        scores = self.score([d["text"] or "" for d in docs])
        cut = self.cut
        if self.needs_shard_pass:
            # Outside a stage runner there is no shard pass: the batch itself is the data being scored.
            cut = self.shard_cut if self.shard_cut is not None else top_cut(scores, self.params.top_fraction)
        reasons = []
        for doc, score in zip(docs, scores.tolist(), strict=True):
            doc["quality_score"] = round(score, 6)
            below = cut is not None and round(score, 6) < round(cut, 6)
            reasons.append("below_threshold" if below else None)
        return reasons


def top_fraction_threshold(model: Path, fraction: float, combiner: Path | None = None) -> float:
    """The score that only the best `fraction` of the model's reference web documents reach."""
    report_path = combiner or model.with_suffix(model.suffix + ".json")
    if not report_path.exists():
        raise ValueError(f"quality.cut: reference needs the model's report {report_path}; use cut: shard")
    report = json.loads(report_path.read_text())
    percentiles = (report.get("report", report) if combiner else report).get("negative_score_percentiles") or []
    if len(percentiles) != 101:
        raise ValueError(f"{report_path} has no negative_score_percentiles (a two-class model's report has)")
    return float(np.interp(100 * (1 - fraction), np.arange(101), percentiles))
