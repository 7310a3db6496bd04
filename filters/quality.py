"""Model-based quality scoring: any fastText classifier, Winnow's default one included.

Writes `quality_score` on every document: P(positive label) for a two-class model, or the
expected label for an ordinal one (FineWeb-Edu's 0-5). With `threshold`, documents below it are
dropped; with `top_fraction`, the threshold is the score of the best `top_fraction` of the
model's reference negatives (random web text, stored in the model's report), the way DCLM
picks its cut. Winnow's default model is built from real data by `winnow quality build-default`
(pipeline/quality_data.py); its report says what the score means and how well it separates.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, model_validator

from filters.base import Doc, Filter, StepParams, pkg_version

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
    top_fraction: float | None = Field(None, gt=0, le=1)  # keep the best fraction, measured on the reference pool
    max_words: int = Field(2000, ge=10)

    @model_validator(mode="after")
    def _one_cut(self) -> QualityParams:
        if self.threshold is not None and self.top_fraction is not None:
            raise ValueError("give threshold or top_fraction, not both")
        if not self.model_path().is_file():  # fail before any work starts, not in every shard
            raise ValueError(f"model: {self.model_path()} not found (train one with `winnow quality train`)")
        return self

    def model_path(self) -> Path:
        return Path(self.model) if self.model else DEFAULT_MODEL


@lru_cache(maxsize=4)
def load_model(path: str) -> Any:
    import fasttext

    if not Path(path).exists():
        raise FileNotFoundError(f"quality model {path} not found (train one with `winnow quality train`)")
    return fasttext.load_model(path)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Quality(Filter):
    type_name = "quality"
    Params = QualityParams
    output_columns: ClassVar[dict[str, pa.DataType]] = {"quality_score": pa.float32()}

    def __init__(self, params: QualityParams):
        super().__init__(params)
        self.params: QualityParams = params
        self.model = load_model(str(params.model_path()))
        self.labels = [label.removeprefix("__label__") for label in self.model.get_labels()]
        self.cut = params.threshold
        if params.top_fraction is not None:
            self.cut = top_fraction_threshold(params.model_path(), params.top_fraction)

    @classmethod
    def versions(cls, params: QualityParams) -> dict[str, str]:
        path = params.model_path()
        return {"fasttext": pkg_version("fasttext-numpy2-wheel"),
                "model": file_digest(path) if path.exists() else "missing"}

    def filter_batch(self, docs: list[Doc]) -> list[str | None]:
        texts = [d["text"] or "" for d in docs]
        probs = class_scores(self.model, texts, self.labels, self.params.max_words)
        scores = score_from(probs, self.labels, self.params.positive_label)
        reasons = []
        for doc, score in zip(docs, scores.tolist(), strict=True):
            doc["quality_score"] = round(score, 6)
            below = self.cut is not None and score < self.cut
            reasons.append("below_threshold" if below else None)
        return reasons


def top_fraction_threshold(model: Path, fraction: float) -> float:
    """The score that only the best `fraction` of the model's reference negatives reach."""
    report_path = model.with_suffix(model.suffix + ".json")
    if not report_path.exists():
        raise ValueError(f"quality.top_fraction needs the model's report {report_path}; give a threshold instead")
    percentiles = json.loads(report_path.read_text()).get("negative_score_percentiles") or []
    if len(percentiles) != 101:
        raise ValueError(f"{report_path} has no negative_score_percentiles (a two-class model's report has)")
    return float(np.interp(100 * (1 - fraction), np.arange(101), percentiles))
