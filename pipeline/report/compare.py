"""Two runs side by side: what the config change did to the funnel, the distributions and the documents.

Documents are matched by `id`, which depends only on where a record came from (file and
offset), so the same page has the same id in two runs over the same input. For every document
one run kept and the other did not, the other run's rejected shards say which stage and reason
dropped it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from pipeline.report.budget import Assumptions
from pipeline.report.collect import collect, dataset, parquet_files, run_fs, sample_rows
from pipeline.storage import is_local


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for a nested config; list items are addressed by their name or type, as `--set` does."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(config, list) and config and all(isinstance(x, dict) for x in config):
        out = {}
        for index, item in enumerate(config):
            label = item.get("name") or item.get("type") or str(index)
            out |= flatten(item, f"{prefix}.{label}")
        return out
    return {prefix: config}


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(set(flat_a) | set(flat_b))
    return [{"key": k, "a": flat_a.get(k, "(absent)"), "b": flat_b.get(k, "(absent)")}
            for k in keys if flat_a.get(k, "(absent)") != flat_b.get(k, "(absent)") and k != "output_dir"]


def output_ids(run_dir: str) -> set[str]:
    fs, root = run_fs(run_dir)
    data = dataset(parquet_files(f"{root}/output", fs), fs)
    return set(data.to_table(columns=["id"])["id"].to_pylist()) if data else set()


def fates(run_dir: str, ids: set[str]) -> dict[str, str]:
    """Where each of `ids` went in a run: its drop reason there, if a stage dropped it."""
    fs, root = run_fs(run_dir)
    if is_local(fs):
        files = sorted(str(p) for p in Path(root).glob("stages/*/rejected/part-*.parquet"))
    else:
        files = sorted(fs.glob(f"{root}/stages/*/rejected/part-*.parquet"))
    data = dataset(files, fs)
    if data is None or not ids:
        return {}
    table = data.to_table(columns=["id", "drop_reason"], filter=ds.field("id").isin(list(ids)))
    return dict(zip(table["id"].to_pylist(), table["drop_reason"].to_pylist(), strict=True))


def difference(kept_in: str, other: str, ids: set[str], n: int) -> dict[str, Any]:
    """Documents `kept_in` kept and `other` did not: counts by the other run's reason, and samples."""
    fate = fates(other, ids)
    reasons = Counter(fate.get(i, "(not in the other run's input)") for i in ids)
    fs, root = run_fs(kept_in)
    data = dataset(parquet_files(f"{root}/output", fs), fs)
    samples = sample_rows(data, n, ds.field("id").isin(list(ids))) if data and ids else []
    for doc in samples:
        doc["other_run"] = fate.get(doc["id"], "(not in the other run's input)")
    return {"count": len(ids), "by_reason": [{"label": r, "count": c} for r, c in reasons.most_common()],
            "samples": samples}


def compare(run_a: str, run_b: str, assumptions: Assumptions | None = None, samples: int = 6) -> dict[str, Any]:
    a = collect(run_a, assumptions, samples=0, samples_per_reason=0)
    b = collect(run_b, assumptions, samples=0, samples_per_reason=0)
    ids_a, ids_b = output_ids(run_a), output_ids(run_b)
    stages = list(dict.fromkeys([s["stage"] for s in a["funnel"]] + [s["stage"] for s in b["funnel"]]))
    by_name = [{s["stage"]: s for s in run["funnel"]} for run in (a, b)]
    return {
        "a": a, "b": b,
        "config_diff": config_diff(a["run"]["config"], b["run"]["config"]),
        "stages": [{"stage": name, "a": by_name[0].get(name), "b": by_name[1].get(name)} for name in stages],
        "kept_in_both": len(ids_a & ids_b),
        "only_a": difference(run_a, run_b, ids_a - ids_b, samples),
        "only_b": difference(run_b, run_a, ids_b - ids_a, samples),
    }
