"""Corpora for the dedup benchmarks, built from the real extracted text in ../shared/data.

* `real_documents()`: every document of 150 words or more from cc-text (dolma CC-MAIN-2019-30,
  C4, CCNet head) and the 30 Wikipedia articles (pretrain-text), in a fixed order.
* `near_copy(text, kind, strength, rng)`: a copy with a measured edit. Kinds: `insert_lines`
  (lines from other documents inserted), `delete_lines`, `boilerplate` (a navigation header and a
  cookie/copyright footer), `substitute_words`. Strength is the fraction of lines or words touched.
* `synthetic_corpus(n_docs, ...)`: for the scaling runs. Each document is 6 to 14 sentences drawn
  at random from the sentence pool of the real documents, so most documents are distinct; a
  `dup_rate` share are near copies (one of the edits above) or exact copies of earlier ones.
  Same arguments give the same documents.
* `write_shards(docs, dir, n_files)`: Parquet shards in Winnow's document schema, and with
  `jsonl=True` the same documents as JSONL for datatrove's readers.
* `run_winnow_dedup(files, out, params, num_cpus)`: Winnow's dedup stage on those shards, on a
  private local Ray with `num_cpus` CPUs: the code path of `winnow run`, without extraction.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MIN_WORDS = 150
HEADER = "Home | News | Sports | Business | Opinion | Contact us | Subscribe | Log in\nMenu Search"
FOOTER = ("We use cookies to improve your experience. By continuing you accept our cookie policy.\n"
          "Copyright 2019 All rights reserved. Privacy Policy | Terms of Use | Sitemap | Advertise with us")
EDIT_KINDS = ("insert_lines", "delete_lines", "boilerplate", "substitute_words")


def shared_texts() -> list[str]:
    """Every cc-text document and every Wikipedia demo article of the shared data, in a fixed order."""
    texts: list[str] = []
    for path in sorted((DATA / "cc-text").rglob("*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    texts += (DATA / "pretrain-text" / "wiki-demo" / "wiki_demo.txt").read_text().splitlines()
    return texts


def real_documents() -> list[str]:
    return [t for t in shared_texts() if len(t.split()) >= MIN_WORDS]


def _lines(text: str) -> list[str]:
    """Lines, or sentences for a one-line text, so that line edits have something to move."""
    lines = [x for x in text.split("\n") if x.strip()]
    if len(lines) < 8:
        lines = [x for x in re.split(r"(?<=[.!?])\s+", text) if x.strip()]
    return lines


def near_copy(text: str, kind: str, strength: float, rng: random.Random, pool: list[str]) -> str:
    if kind == "boilerplate":
        header = " ".join([HEADER] * max(1, round(strength * 10)))
        return f"{header}\n{text}\n{FOOTER}"
    if kind == "substitute_words":
        words = text.split(" ")
        for i in rng.sample(range(len(words)), max(1, int(len(words) * strength))):
            words[i] = rng.choice(pool).split(" ")[0] or "word"
        return " ".join(words)
    lines = _lines(text)
    k = max(1, int(len(lines) * strength))
    if kind == "delete_lines":
        gone = set(rng.sample(range(len(lines)), min(k, len(lines) - 1)))
        return "\n".join(x for i, x in enumerate(lines) if i not in gone)
    if kind == "insert_lines":
        for _ in range(k):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(pool))
        return "\n".join(lines)
    raise ValueError(f"unknown edit kind {kind!r}")


def sentence_pool(texts: list[str]) -> list[str]:
    pool = [s.strip() for t in texts for s in re.split(r"(?<=[.!?])\s+|\n", t)]
    return sorted({s for s in pool if 6 <= len(s.split()) <= 60})


def synthetic_corpus(n_docs: int, dup_rate: float = 0.1, seed: int = 0) -> Iterator[dict[str, Any]]:
    """`n_docs` documents: fresh sentence mixes, and `dup_rate` near or exact copies of earlier ones."""
    rng = random.Random(seed)
    pool = sentence_pool(real_documents())
    recent: list[str] = []
    base = datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(n_docs):
        if recent and rng.random() < dup_rate:
            source = rng.choice(recent)
            kind = rng.choice(("exact",) + EDIT_KINDS)
            text = source if kind == "exact" else near_copy(source, kind, rng.choice((0.02, 0.05)), rng, pool)
        else:
            text = " ".join(rng.choice(pool) for _ in range(rng.randint(6, 14)))
            recent.append(text)
            if len(recent) > 5000:
                recent.pop(rng.randrange(len(recent)))
        yield {"id": f"doc-{i:08d}", "url": f"https://example{i % 997}.com/p/{i}", "domain": f"example{i % 997}.com",
               "crawl_date": base + timedelta(seconds=i), "text": text}


SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("domain", pa.string()),
                    ("crawl_date", pa.timestamp("us", tz="UTC")), ("text", pa.string())])


def write_shards(docs: Iterator[dict[str, Any]] | list[dict[str, Any]], out: Path, n_files: int,
                 jsonl: bool = False, rows_per_group: int = 20000) -> list[Path]:
    """Round-robin the documents over `n_files` Parquet files (and JSONL twins for datatrove)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"part-{k:05d}.parquet" for k in range(n_files)]
    writers = [pq.ParquetWriter(p, SCHEMA, compression="zstd") for p in paths]
    json_files = [gzip.open(out / f"part-{k:05d}.jsonl.gz", "wt", compresslevel=1) for k in range(n_files)] \
        if jsonl else []
    buffers: list[list[dict[str, Any]]] = [[] for _ in range(n_files)]
    for i, doc in enumerate(docs):
        k = i % n_files
        buffers[k].append(doc)
        if json_files:
            json_files[k].write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
        if len(buffers[k]) >= rows_per_group:
            writers[k].write_table(pa.Table.from_pylist(buffers[k], schema=SCHEMA))
            buffers[k] = []
    for k, writer in enumerate(writers):
        if buffers[k]:
            writer.write_table(pa.Table.from_pylist(buffers[k], schema=SCHEMA))
        writer.close()
    for f in json_files:
        f.close()
    return paths


def run_winnow_dedup(files: list[Path], out: Path, params: dict[str, Any], num_cpus: int) -> dict[str, Any]:
    """Winnow's dedup stage over `files` on a fresh local Ray; returns its `_dedup.json` summary."""
    import logging

    import fsspec
    import ray

    from pipeline.config import DedupStage
    from pipeline.dedup.stage import run_dedup
    from pipeline.jsonfile import read_json

    stage = DedupStage(name="dedup", kind="dedup", dedup=params, batch_size=1024)
    out.mkdir(parents=True, exist_ok=True)
    shards = {f"{k:05d}": str(p) for k, p in enumerate(files)}
    from pipeline.raycluster import WORKER_ENV

    for key, value in WORKER_ENV.items():  # inherited by the local Ray's workers, as in `winnow run`
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        failures = run_dedup(stage, str(out), "bench", shards, list(shards), {})
    finally:
        ray.shutdown()
    assert not failures, failures
    return read_json(fsspec.filesystem("file"), f"{out}/_dedup.json")
