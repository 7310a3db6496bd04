"""Decontamination: drop documents that contain text from an evaluation set.

A model trained on pages that quote a benchmark scores well on it for the wrong reason. As GPT-3 and
datatrove's `NGramsDecontFilter` do, a document that shares an n-gram (13 words by default) with an eval set
is dropped; the sets are JSONL or Parquet files the config names (`sets: {name: path-or-glob}`).

Text is normalised by datatrove's `simplify_text` (lower case, digits to 0, punctuation to spaces, no
diacritics) and split on whitespace. Each string of each `fields` column (a list such as `choices`: each
element) is indexed on its own, so no n-gram spans two fields. A text shorter than n words but of at least
`min_words` is indexed whole and matches a page that holds all of it; shorter ones ("B", "yes") would match
nearly every page and are skipped. N-grams are 64-bit hashes in one sorted array, built once per digest of
the set files and parameters, and kept in the process and in `$WINNOW_CACHE/decont/<digest>.npz`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import regex
import xxhash
from datatrove.utils.text import TextNormConfig, simplify_text
from pydantic import Field, ValidationInfo, field_validator, model_validator

from filters.base import Doc, Filter, StepParams, pkg_version

FORMAT = 1  # bump when normalisation or hashing changes: it is part of the digest
SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
DEFAULT_FIELDS = ["text", "question", "context", "choices", "answer", "output", "instruction", "input"]
_PRIME = np.uint64(0x100000001B3)
BUILDS = {"count": 0}  # index builds in this process (tests check that a second step reuses the first)
_KEEP_MARKS = TextNormConfig(norm_unicode_diacritics=False)
_MARKS = regex.compile(r"\p{Mn}+")


def normalise(text: str) -> list[str]:
    """datatrove's simplify_text, split on whitespace; its per-character diacritics loop made one regex."""
    text = simplify_text(text, _KEEP_MARKS)
    if not text.isascii():
        text = _MARKS.sub("", unicodedata.normalize("NFD", text))
    return text.split()


def _word_hashes(words: list[str]) -> np.ndarray:
    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words), dtype=np.uint64, count=len(words))


def _gram_hashes(word_hashes: np.ndarray, k: int) -> np.ndarray:
    """Polynomial hash of every run of k word hashes, in order (wrapping 64-bit arithmetic)."""
    m = len(word_hashes) - k + 1
    if m <= 0:
        return np.array([], dtype=np.uint64)
    acc = np.zeros(m, dtype=np.uint64)
    for j in range(k):  # array arithmetic wraps silently
        acc = acc * _PRIME + word_hashes[j:j + m]
    return acc


def resolve(path: str) -> list[str]:
    """The files a set's path or glob names, sorted."""
    fs, root = fsspec.core.url_to_fs(path)
    found = sorted(fs.glob(root)) if glob.has_magic(root) else [root]
    return [fs.unstrip_protocol(f) for f in found if fs.isfile(f)]


class DecontParams(StepParams):
    type: Literal["decont"] = "decont"
    # Eval set name -> JSONL (optionally .gz) or Parquet file, or a glob of them. The name is the drop reason.
    sets: dict[str, str]
    n: int = Field(13, ge=1, le=64)
    min_words: int = Field(8, ge=1)  # texts shorter than this and than n are not indexed
    fields: list[str] = Field(default_factory=lambda: list(DEFAULT_FIELDS), min_length=1)

    @field_validator("sets")
    @classmethod
    def _sets_exist(cls, sets: dict[str, str]) -> dict[str, str]:
        if not sets:
            raise ValueError("give at least one eval set, as {name: path or glob of JSONL/Parquet files}")
        for name, path in sets.items():
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(f"set name {name!r}: use letters, digits, '_', '.' or '-'")
            if not (files := resolve(path)):
                raise ValueError(f"sets.{name}: no file at {path!r}; give an existing JSONL or Parquet file or glob")
            if bad := [f for f in files if not f.endswith(SUFFIXES)]:
                raise ValueError(f"sets.{name}: {bad[0]} is not {'/'.join(SUFFIXES)}")
        return sets

    @model_validator(mode="after")
    def _sets_yield_ngrams(self, info: ValidationInfo) -> DecontParams:
        # A set that indexes nothing would drop nothing, silently: build (or load) the index now, so that
        # is a config error. The build itself parses these params with `building` set, to not recurse.
        if not (info.context or {}).get("building"):
            index_for(self)
        return self


def sets_digest(params: DecontParams) -> str:
    """Digest of everything the index depends on: set names and file contents, n, min_words, fields."""
    h = hashlib.sha256(json.dumps([FORMAT, pkg_version("datatrove"), params.n, params.min_words,
                                   params.fields]).encode())
    for name, path in params.sets.items():
        h.update(f"\0set {name}".encode())
        for file in resolve(path):
            with fsspec.open(file, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()[:16]


def _rows(path: str, fields: list[str]) -> Iterator[dict[str, Any]]:
    if path.endswith(".parquet"):
        with fsspec.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = [c for c in fields if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(columns=columns) if columns else ():
                yield from batch.to_pylist()
        return
    with fsspec.open(path, "rt", encoding="utf-8", compression="infer") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({exc})") from None
                if isinstance(row, dict):
                    yield row


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


@dataclass(frozen=True)
class Index:
    hashes: np.ndarray  # sorted, unique uint64 n-gram hashes
    owner: np.ndarray  # the set each hash came from (the first set that has it)
    lengths: tuple[int, ...]  # gram lengths present: n, then the lengths of short whole texts
    names: tuple[str, ...]

    def match(self, text: str) -> tuple[str, str] | None:
        """(set name, matched normalised words) for the first indexed gram in `text`, or None."""
        words = normalise(text)
        if not words or not len(self.hashes):
            return None
        word_hashes = _word_hashes(words)
        for k in self.lengths:
            grams = _gram_hashes(word_hashes, k)
            pos = np.searchsorted(self.hashes, grams).clip(max=len(self.hashes) - 1)
            hits = np.flatnonzero(self.hashes[pos] == grams)
            if len(hits):
                i = int(hits[0])
                return self.names[int(self.owner[pos[i]])], " ".join(words[i:i + k])
        return None


class EmptyEvalSet(ValueError):
    """An eval set whose files index no n-gram: it could never drop anything."""


def _build(params: DecontParams) -> Index:
    BUILDS["count"] += 1
    hashes: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    lengths = {params.n}
    for s, (name, path) in enumerate(params.sets.items()):
        rows = texts = short = indexed = 0
        for file in resolve(path):
            for row in _rows(file, params.fields):
                rows += 1
                for text in (t for field in params.fields for t in _strings(row.get(field))):
                    texts += 1
                    words = normalise(text)
                    if len(words) < min(params.n, params.min_words):
                        short += 1
                        continue
                    indexed += 1
                    k = min(len(words), params.n)
                    lengths.add(k)
                    hashes.append(_gram_hashes(_word_hashes(words), k))
                    owners.append(np.full(len(hashes[-1]), s, dtype=np.uint16))
        if not indexed:
            why = ("its files hold no rows" if not rows else
                   f"none of its {rows} rows has a string in fields {params.fields}" if not texts else
                   f"all {texts} of its texts are shorter than min_words={params.min_words} words")
            raise EmptyEvalSet(f"sets.{name}: {path} yields no n-gram to match ({why}), so it would drop nothing; "
                               "fix the file, list its text columns in `fields`, or lower `min_words`")
    flat = np.concatenate(hashes) if hashes else np.array([], dtype=np.uint64)
    unique, first = np.unique(flat, return_index=True)  # a gram in two sets counts for the first
    owner = np.concatenate(owners)[first] if owners else np.array([], dtype=np.uint16)
    ordered = (params.n, *sorted(lengths - {params.n}, reverse=True))
    return Index(unique, owner, ordered, tuple(params.sets))


def _cache_file(digest: str) -> Path:
    root = Path(os.environ.get("WINNOW_CACHE") or Path.home() / ".cache" / "winnow") / "decont"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{digest}.npz"


@lru_cache(maxsize=8)
def _index(digest: str, params_json: str) -> Index:
    path = _cache_file(digest)
    if path.exists():
        data = np.load(path)
        return Index(data["hashes"], data["owner"], tuple(data["lengths"].tolist()), tuple(data["names"].tolist()))
    index = _build(DecontParams.model_validate_json(params_json, context={"building": True}))
    tmp = path.with_name(f"{digest}.tmp{os.getpid()}.npz")
    np.savez(tmp, hashes=index.hashes, owner=index.owner, lengths=np.array(index.lengths), names=np.array(index.names))
    os.replace(tmp, path)
    return index


def index_for(params: DecontParams) -> Index:
    """The index for these sets: from this process, else the disk cache, else built (and cached)."""
    return _index(sets_digest(params), params.model_dump_json())


def contaminated(rows: Iterable[dict[str, Any]], index: Index | DecontParams | dict[str, Any],
                 columns: tuple[str, ...] = ("instruction", "input", "output")) -> list[str | None]:
    """For instruction rows: `decont:<set>` where the joined columns contain an indexed gram, else None.
    Give the Index itself when calling batch after batch: finding it from parameters re-reads the sets."""
    if not isinstance(index, Index):
        index = index_for(index if isinstance(index, DecontParams) else DecontParams(**index))
    found = (index.match(" ".join(t for c in columns for t in _strings(row.get(c)))) for row in rows)
    return [None if f is None else f"{Decont.type_name}:{f[0]}" for f in found]


class Decont(Filter):
    """Drops documents that share an n-gram with an eval set; `decont_match` holds the matched words."""

    type_name = "decont"
    Params = DecontParams
    output_columns = {"decont_match": pa.string()}

    def __init__(self, params: DecontParams):
        super().__init__(params)
        self.index = index_for(params)

    @classmethod
    def versions(cls, params: DecontParams) -> dict[str, str]:
        return {"eval_sets": sets_digest(params), "datatrove": pkg_version("datatrove")}

    def filter(self, doc: Doc) -> str | None:
        found = self.index.match(doc.get("text") or "")
        if found is None:
            return None
        doc["decont_match"] = found[1]
        return found[0]
