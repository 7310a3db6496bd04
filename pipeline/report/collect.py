"""Everything a report or a dataset card shows about a run, read back from its run directory.

The counts come from `manifest.json` (which sums the shards' completion records); distributions
and samples come from the Parquet files themselves, read column by column and batch by batch,
so memory stays bounded on a large run. The result is plain JSON-ready data: the HTML report,
the comparison page and the dataset card render it, and tests compare it with what they read
back from the same files.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import yaml

from pipeline.jsonfile import read_json
from pipeline.report.budget import CHARS_PER_TOKEN, Assumptions, crawl_cost, training_budget

LENGTH_EDGES = [0, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]
SCORE_EDGES = [round(0.05 * k, 2) for k in range(21)]
SAMPLE_COLUMNS = ["id", "url", "domain", "language", "language_score", "quality_score", "dup_cluster_size",
                  "pii_count", "drop_reason", "drop_stage", "duplicate_of", "text"]
SNIPPET_CHARS = 1500


def parquet_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("part-*.parquet"))


def dataset(files: list[str]) -> ds.Dataset | None:
    """One dataset over files whose schemas may differ by a few columns (stages add some)."""
    if not files:
        return None
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive")
    return ds.dataset(files, format="parquet", schema=schema)


def sample_key(doc_id: str) -> str:
    """A stable pseudo-random order: the same documents are sampled on every rerun."""
    return hashlib.blake2b(doc_id.encode(), digest_size=8).hexdigest()


def estimated_tokens(chars: int) -> int:
    return round(chars / CHARS_PER_TOKEN)


def histogram(values: np.ndarray, edges: list[float], open_ended: bool) -> list[dict[str, Any]]:
    """Counts per bin [edge_k, edge_k+1); with `open_ended`, a last bin for everything above."""
    values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    bounds = [*edges, np.inf] if open_ended else edges
    counts, _ = np.histogram(values, bins=np.array(bounds, dtype=float))
    labels = [f"{_short(lo)}–{_short(hi)}" if np.isfinite(hi) else f"≥{_short(lo)}"
              for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return [{"label": label, "count": int(n)} for label, n in zip(labels, counts, strict=True)]


def _short(x: float) -> str:
    if x >= 1000 and x == int(x):
        return f"{x / 1000:g}k"
    return f"{x:g}"


def top(counter: Counter, k: int) -> list[dict[str, Any]]:
    items = counter.most_common(k)
    rest = sum(counter.values()) - sum(n for _, n in items)
    out = [{"label": str(key), "count": int(n)} for key, n in items]
    if rest:
        out.append({"label": f"({len(counter) - len(items)} others)", "count": int(rest)})
    return out


def document_view(row: dict[str, Any]) -> dict[str, Any]:
    """A sample document as the report shows it: scores, reason, and the start of the text."""
    text = row.get("text") or ""
    view = {k: row.get(k) for k in SAMPLE_COLUMNS if k != "text" and row.get(k) is not None}
    for key in ("language_score", "quality_score"):
        if key in view:
            view[key] = round(float(view[key]), 3)
    view["chars"] = len(text)
    view["text"] = text[:SNIPPET_CHARS]
    view["truncated"] = len(text) > SNIPPET_CHARS
    return view


def sample_rows(data: ds.Dataset, n: int, where: pc.Expression | None = None) -> list[dict[str, Any]]:
    """`n` documents in a stable pseudo-random order: ids are read first, then only those rows."""
    if n <= 0:
        return []
    ids = data.to_table(columns=["id"], filter=where)["id"].to_pylist()
    chosen = sorted(ids, key=sample_key)[:n]
    if not chosen:
        return []
    columns = [c for c in SAMPLE_COLUMNS if c in data.schema.names]
    rows = data.to_table(columns=columns, filter=ds.field("id").isin(chosen)).to_pylist()
    rank = {doc_id: sample_key(doc_id) for doc_id in chosen}
    return [document_view(r) for r in sorted(rows, key=lambda r: rank[r["id"]])]


def output_distributions(data: ds.Dataset | None, tld_of: Any) -> dict[str, Any]:
    """Distributions over the output documents, streamed batch by batch."""
    languages, domains, tlds, pii = Counter(), Counter(), Counter(), Counter()
    lengths, scores = [], {"quality_score": [], "language_score": []}
    cluster_sizes: Counter[int] = Counter()
    docs = chars = pii_total = 0
    if data is not None:
        names = data.schema.names
        columns = [c for c in ("text", "language", "domain", "quality_score", "language_score",
                               "dup_cluster_size", "pii_count", "pii_counts") if c in names]
        for batch in data.to_batches(columns=columns, batch_size=4096):
            docs += batch.num_rows
            length = pc.utf8_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
            lengths.append(length)
            chars += int(length.sum())
            if "language" in columns:
                languages.update(batch.column("language").fill_null("unknown").to_pylist())
            if "domain" in columns:
                batch_domains = batch.column("domain").fill_null("").to_pylist()
                domains.update(d or "(none)" for d in batch_domains)
                tlds.update(tld_of(d) for d in batch_domains)
            for key, values in scores.items():
                if key in columns:
                    values.append(batch.column(key).to_numpy(zero_copy_only=False).astype(float))
            if "dup_cluster_size" in columns:
                cluster_sizes.update(batch.column("dup_cluster_size").fill_null(1).to_pylist())
            if "pii_count" in columns:
                pii_total += int(pc.sum(batch.column("pii_count")).as_py() or 0)
            if "pii_counts" in columns:
                for counts in batch.column("pii_counts").to_pylist():
                    pii.update(dict(counts or []))
    all_lengths = np.concatenate(lengths) if lengths else np.array([], dtype=np.int64)
    out: dict[str, Any] = {
        "docs": docs,
        "chars": chars,
        "language": top(languages, 15),
        "domain": top(domains, 20),
        "tld": top(tlds, 15),
        "length": histogram(all_lengths, LENGTH_EDGES, open_ended=True),
        "length_median": int(np.median(all_lengths)) if len(all_lengths) else 0,
        "pii": [{"label": k, "count": int(n)} for k, n in pii.most_common()],
        "pii_total": pii_total,
        # Output documents by the size of the duplicate cluster they were kept from.
        "kept_from_cluster_size": [{"label": str(size), "count": int(n)} for size, n in sorted(cluster_sizes.items())],
    }
    for key, values in scores.items():
        arr = np.concatenate(values) if values else np.array([])
        out[key] = histogram(arr, SCORE_EDGES, open_ended=False) if len(arr) else []
        out[f"{key}_mean"] = round(float(np.nanmean(arr)), 4) if len(arr) and not np.isnan(arr).all() else None
    return out


def cluster_sizes(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Duplicate clusters by size, as the dedup stage found them (size 1: no duplicate)."""
    for stage in manifest.get("stages", []):
        phases = stage.get("dedup", {}).get("phases", {})
        if "decide" in phases:
            sizes = Counter({int(k): v for k, v in phases["decide"].get("cluster_sizes", {}).items()})
            sizes[1] = phases.get("sign", {}).get("docs", 0) - phases.get("label", {}).get("members", 0)
            return [{"label": str(k), "count": int(n)} for k, n in sorted(sizes.items()) if n]
    return []


def funnel(root: Path, manifest: dict[str, Any], config: dict[str, Any],
           samples_per_reason: int) -> list[dict[str, Any]]:
    """Per stage and step: documents and characters in and out, and each drop reason with samples."""
    rows = []
    chars_before = None
    step_order = {s["name"]: [step["type"] for step in s.get("steps") or []]
                  for s in config.get("stages", [])}
    for stage in manifest.get("stages", []):
        steps = []
        for name, stats in stage.get("steps", {}).items():
            dropped = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("dropped:")}
            steps.append({"name": name, "docs_in": stats.get("in", 0), "docs_out": stats.get("out", 0),
                          "chars_out": stats.get("chars_out"), "dropped": dropped})
        order = step_order.get(stage["name"], [])
        steps.sort(key=lambda s: order.index(s["name"]) if s["name"] in order else len(order))
        rejected = dataset(parquet_files(root / stage["dir"] / "rejected"))
        reasons = []
        for reason, count in sorted(stage.get("drop_reasons", {}).items(), key=lambda kv: -kv[1]):
            samples = [] if rejected is None else sample_rows(rejected, samples_per_reason,
                                                              ds.field("drop_reason") == reason)
            reasons.append({"reason": reason, "count": count, "samples": samples})
        chars_out = stage.get("chars_out", 0)
        rows.append({
            "stage": stage["name"], "dir": stage["dir"], "status": stage["status"],
            "fingerprint": stage["fingerprint"],
            "docs_in": stage["rows_in"], "docs_out": stage["rows_out"], "docs_dropped": stage["rows_rejected"],
            "kept_pct": round(100 * stage["rows_out"] / stage["rows_in"], 1) if stage["rows_in"] else None,
            "chars_in": chars_before, "chars_out": chars_out, "chars_dropped": stage.get("chars_rejected", 0),
            "tokens_out": estimated_tokens(chars_out),
            "steps": steps, "reasons": reasons,
            "wall_s": stage["wall_s"], "cpu_s": stage["cpu_s"], "errors": stage.get("errors", []),
        })
        chars_before = chars_out
    return rows


def collect(run_dir: str, assumptions: Assumptions | None = None, samples: int = 12,
            samples_per_reason: int = 3, tokenizer: str | None = None) -> dict[str, Any]:
    """The report's data for one run directory."""
    from filters.url import offline_tldextract

    root = Path(run_dir)
    manifest = read_json(fsspec.filesystem("file"), str(root / "manifest.json"))
    if manifest is None or not (root / "run.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a finished Winnow run directory (no manifest.json or run.yaml)")
    assumptions = assumptions or Assumptions()
    config_text = (root / "run.yaml").read_text()
    extractor = offline_tldextract()
    output = dataset(parquet_files(root / "output"))
    dist = output_distributions(output, lambda d: extractor(d).suffix or "(none)" if d else "(none)")
    dist["dup_cluster_sizes"] = cluster_sizes(manifest)
    tokens, token_source = estimated_tokens(dist["chars"]), f"estimated at {CHARS_PER_TOKEN} characters per token"
    if tokenizer:
        tokens, token_source = count_tokens(output, tokenizer), f"counted with {Path(tokenizer).name}"
    elif output is not None and "token_count" in output.schema.names:  # a tokenizing stage ran
        tokens = int(pc.sum(output.to_table(columns=["token_count"])["token_count"]).as_py() or 0)
        token_source = "counted by the pipeline (token_count)"
    config = yaml.safe_load(config_text)
    stages = funnel(root, manifest, config, samples_per_reason)
    all_rejected = [f for s in stages for f in parquet_files(root / s["dir"] / "rejected")]
    rejected = dataset(all_rejected)
    first_in = stages[0]["docs_in"] if stages else 0
    return {
        "run": {
            "dir": str(root), "name": root.name, "status": manifest.get("status"),
            "started_at": manifest.get("started_at"), "updated_at": manifest.get("updated_at"),
            "winnow_version": manifest.get("winnow_version"), "code_version": manifest.get("code_version"),
            "inputs": manifest.get("inputs", []), "config_yaml": config_text,
            "config": config,
        },
        "funnel": stages,
        "output": {"docs": dist["docs"], "chars": dist["chars"], "tokens": tokens, "token_source": token_source,
                   "files": (manifest.get("output") or {}).get("files", []),
                   "kept_pct": round(100 * dist["docs"] / first_in, 2) if first_in else None},
        "distributions": dist,
        "samples": {"kept": sample_rows(output, samples) if output else [],
                    "dropped": sample_rows(rejected, samples) if rejected else []},
        "cost": crawl_cost(stages, assumptions),
        "budget": training_budget(tokens, first_in, assumptions),
        "assumptions": assumptions.model_dump(),
    }


def count_tokens(data: ds.Dataset | None, tokenizer_path: str) -> int:
    """Tokens in the output with a Hugging Face `tokenizers` file (the project tokenizer)."""
    if data is None:
        return 0
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_path)
    total = 0
    for batch in data.to_batches(columns=["text"], batch_size=1024):
        encoded = tokenizer.encode_batch([t or "" for t in batch.column("text").to_pylist()])
        total += sum(len(e.ids) for e in encoded)
    return total
