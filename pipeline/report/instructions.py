"""The report's instructions section: what the synth stages made, how, and what they dropped."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import pyarrow.parquet as pq

LENGTH_EDGES = [0, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000]


def _first_word(text: str) -> str:
    words = (text or "").strip().split()
    return words[0].strip("?:.,!\"'").lower() if words else ""


def _bins(values: list[int]) -> list[dict[str, Any]]:
    counts = Counter()
    for v in values:
        edge = max(e for e in LENGTH_EDGES if e <= v)
        counts[edge] += 1
    return [{"label": f"{e}+", "count": counts[e]} for e in LENGTH_EDGES if counts[e]]


def _sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The same rows on every rerun: the n smallest hashes of the instruction text."""
    def key(r: dict[str, Any]) -> str:
        return hashlib.sha256(f"{r.get('source_id')}|{r.get('instruction')}".encode()).hexdigest()
    return sorted(rows, key=key)[:n]


def collect_instructions(root: str | Path, manifest: dict[str, Any], samples: int = 6,
                         fs: fsspec.AbstractFileSystem | None = None) -> dict[str, Any] | None:
    """Counts from the manifest's synth stages, distributions and samples from instructions/ (on `fs`, local
    disk by default)."""
    from pipeline.report.collect import parquet_files
    from pipeline.storage import is_local

    stages = [s for s in manifest.get("stages", []) if s.get("synth")]
    if not stages:
        return None
    filesystem = None if fs is None or is_local(fs) else fs
    files = parquet_files(f"{root}/instructions", fs)
    rows = [r for f in files for r in pq.read_table(f, filesystem=filesystem).to_pylist()]
    by = Counter((r.get("recipe"), r.get("generator")) for r in rows)
    rejected = []
    for stage in stages:
        for f in parquet_files(f"{root}/{stage['dir']}/instructions/rejected", fs):
            rejected += pq.read_table(f, columns=["instruction", "output", "drop_reason", "source_id"],
                                      filesystem=filesystem).to_pylist()
    accounting = {key: sum(s["synth"].get(key, 0) for s in stages)
                  for key in ("requests", "cache_hits", "retries", "prompt_tokens", "completion_tokens",
                              "bad_requests", "failed_requests")}
    accounting["cost_usd"] = round(sum(s["synth"].get("cost_usd", 0) for s in stages), 4)
    reasons = Counter()
    for s in stages:
        reasons.update(s["synth"].get("drop_reasons", {}))
    return {
        "count": len(rows),
        "stages": [{"name": s["name"], "generator": s["synth"].get("generator"), "model": s["synth"].get("model"),
                    "instructions": s["synth"].get("instructions", 0)} for s in stages],
        "by_recipe": [{"recipe": recipe, "generator": gen, "count": n} for (recipe, gen), n in by.most_common()],
        "drop_reasons": [{"reason": r, "count": n, "samples": _sample([x for x in rejected if x["drop_reason"] == r],
                                                                       2)}
                         for r, n in reasons.most_common()],
        "verbs": [{"label": w, "count": n} for w, n in
                  Counter(_first_word(r.get("instruction", "")) for r in rows).most_common(12) if w],
        "instruction_lengths": _bins([len(r.get("instruction") or "") for r in rows]),
        "output_lengths": _bins([len(r.get("output") or "") for r in rows]),
        "accounting": accounting,
        "samples": _sample(rows, samples),
    }
