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
from pipeline.report.instructions import collect_instructions
from pipeline.report.profile import cost_profile
from pipeline.rundir import RunDir
from pipeline.stagedir import REJECTED, StageDir
from pipeline.status import run_status
from pipeline.storage import is_local

LENGTH_EDGES = [0, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]
SAMPLE_COLUMNS = ["id", "url", "domain", "language", "language_score", "quality_score", "dup_cluster_size",
                  "pii_count", "drop_reason", "drop_stage", "duplicate_of", "text"]
SNIPPET_CHARS = 1500
MEDIAN_CAP = 1_000_000  # lengths are counted exactly up to here for the median


def run_fs(run_dir: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem a run directory is on, and its root there (on local disk, the path as given)."""
    fs, root = fsspec.core.url_to_fs(run_dir)
    if is_local(fs) and "://" not in run_dir:
        return fs, str(Path(run_dir))
    return fs, root.rstrip("/")


def parquet_files(directory: str | Path, fs: fsspec.AbstractFileSystem | None = None) -> list[str]:
    if fs is None or is_local(fs):
        return sorted(str(p) for p in Path(directory).glob("part-*.parquet"))
    return sorted(fs.glob(f"{directory}/part-*.parquet"))


def dataset(files: list[str], fs: fsspec.AbstractFileSystem | None = None) -> ds.Dataset | None:
    """One dataset over files whose schemas may differ by a few columns (stages add some); `fs` for files
    on object storage (local paths are read by Arrow directly)."""
    if not files:
        return None
    filesystem = None if fs is None or is_local(fs) else fs
    schema = pa.unify_schemas([pq.read_schema(f, filesystem=filesystem) for f in files],
                              promote_options="permissive")
    return ds.dataset(files, format="parquet", schema=schema, filesystem=filesystem)


def sample_key(doc_id: str) -> int:
    """A stable pseudo-random order: the same documents are sampled on every rerun."""
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big")


def estimated_tokens(chars: int) -> int:
    return round(chars / CHARS_PER_TOKEN)


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


def smallest_keys(data: ds.Dataset, n: int, where: pc.Expression | None = None,
                  group: str | None = None) -> dict[Any, list[str]]:
    """The ids of the `n` documents with the smallest sample keys, per value of `group` (or all under
    None), in one streaming pass over the id column: memory holds n ids per group, whatever the run."""
    import heapq

    heaps: dict[Any, list[tuple[int, str]]] = {}  # per group, the n smallest keys as a max-heap (negated)
    columns = ["id"] + ([group] if group else [])
    for batch in data.to_batches(columns=columns, filter=where, batch_size=65536):
        groups = batch.column(group).to_pylist() if group else [None] * batch.num_rows
        for doc_id, key in zip(batch.column("id").to_pylist(), groups, strict=True):
            heap = heaps.setdefault(key, [])
            rank = -sample_key(doc_id)
            if len(heap) < n:
                heapq.heappush(heap, (rank, doc_id))
            elif rank > heap[0][0]:
                heapq.heapreplace(heap, (rank, doc_id))
    return {key: [doc_id for _, doc_id in sorted(heap, reverse=True)] for key, heap in heaps.items()}


def read_rows(data: ds.Dataset, ids: list[str], where: pc.Expression | None = None) -> list[dict[str, Any]]:
    """The rows of `ids`, in that order (under `where` too: an id that repeats keeps its match)."""
    if not ids:
        return []
    condition = ds.field("id").isin(ids) if where is None else ds.field("id").isin(ids) & where
    rows = data.to_table(filter=condition).to_pylist()
    for row in rows:
        readable_counts(row, data.schema)
    order = {doc_id: k for k, doc_id in enumerate(ids)}
    return sorted(rows, key=lambda r: order[r["id"]])


def readable_counts(row: dict[str, Any], schema: pa.Schema) -> None:
    """Per-key counts as a dict, for people: `pii_counts` (a list of {entity, count}), and any map
    column (which Arrow gives as (key, value) pairs)."""
    from filters.pii import pii_counts_dict

    for field in schema:
        if row.get(field.name) is None:
            continue
        if field.name == "pii_counts":
            row[field.name] = pii_counts_dict(row[field.name])
        elif pa.types.is_map(field.type):
            row[field.name] = dict(row[field.name])


def sample_rows(data: ds.Dataset, n: int, where: pc.Expression | None = None) -> list[dict[str, Any]]:
    """`n` documents in a stable pseudo-random order, as the report shows them."""
    if n <= 0:
        return []
    return [document_view(r) for r in read_rows(data, smallest_keys(data, n, where).get(None, []), where)]


class Histogram:
    """Counts over fixed bins, accumulated batch by batch (values above the last edge go to an
    open last bin when `open_ended`, else into the last bin)."""

    def __init__(self, edges: list[float], open_ended: bool):
        self.edges, self.open_ended = edges, open_ended
        self.bounds = np.array([*edges, np.inf] if open_ended else edges, dtype=float)
        self.counts = np.zeros(len(self.bounds) - 1, dtype=np.int64)
        self.total, self.n = 0.0, 0

    def add(self, values: np.ndarray) -> None:
        values = values[~np.isnan(values)]
        self.counts += np.histogram(np.clip(values, self.bounds[0], self.bounds[-1]), bins=self.bounds)[0]
        self.total += float(values.sum())
        self.n += len(values)

    def bins(self) -> list[dict[str, Any]]:
        b = self.bounds
        labels = [f"{_short(lo)}–{_short(hi)}" if np.isfinite(hi) else f"≥{_short(lo)}"
                  for lo, hi in zip(b[:-1], b[1:], strict=True)]
        return [{"label": label, "count": int(n)} for label, n in zip(labels, self.counts, strict=True)]

    def mean(self) -> float | None:
        return round(self.total / self.n, 4) if self.n else None


def score_edges(data: ds.Dataset, column: str) -> list[float]:
    """20 bins over [0, 1] for probabilities; over [0, ceil(max)] for ordinal ratings (FineWeb-Edu's 0-5)."""
    top_value = pc.max(data.to_table(columns=[column])[column]).as_py() or 0.0
    upper = 1.0 if top_value <= 1 else float(np.ceil(top_value))
    return [round(upper * k / 20, 4) for k in range(21)]


def output_distributions(data: ds.Dataset | None, tld_of: Any) -> dict[str, Any]:
    """Distributions over the output documents, streamed batch by batch with bounded memory:
    counters per distinct value, fixed-bin histograms, and length counts for an exact median."""
    from filters.pii import pii_counts_dict

    languages, domains, pii = Counter(), Counter(), Counter()
    lengths = Histogram(LENGTH_EDGES, open_ended=True)
    length_counts = np.zeros(MEDIAN_CAP + 1, dtype=np.int64)  # lengths at or over the cap share a slot
    scores: dict[str, Histogram] = {}
    cluster_sizes: Counter[int] = Counter()
    docs = chars = pii_total = 0
    if data is not None:
        names = data.schema.names
        columns = [c for c in ("text", "language", "domain", "quality_score", "language_score",
                               "dup_cluster_size", "pii_count", "pii_counts") if c in names]
        scores = {key: Histogram(score_edges(data, key), open_ended=False)
                  for key in ("quality_score", "language_score") if key in names}
        for batch in data.to_batches(columns=columns, batch_size=8192):
            docs += batch.num_rows
            length = pc.utf8_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
            chars += int(length.sum())
            lengths.add(length.astype(float))
            length_counts += np.bincount(np.minimum(length, MEDIAN_CAP), minlength=MEDIAN_CAP + 1)
            for key, column in (("language", "language"), ("domain", "domain")):
                if column in columns:
                    counts = pc.value_counts(batch.column(column).fill_null("(none)"))
                    target = languages if key == "language" else domains
                    target.update(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                           strict=True)))
            for key, histogram_ in scores.items():
                histogram_.add(batch.column(key).to_numpy(zero_copy_only=False).astype(float))
            if "dup_cluster_size" in columns:
                cluster_sizes.update(batch.column("dup_cluster_size").fill_null(1).to_pylist())
            if "pii_count" in columns:
                pii_total += int(pc.sum(batch.column("pii_count")).as_py() or 0)
            if "pii_counts" in columns:
                for counts in batch.column("pii_counts").to_pylist():
                    pii.update(pii_counts_dict(counts))
    tlds: Counter[str] = Counter()
    for domain, n in domains.items():  # one suffix lookup per distinct domain, not per document
        tlds[tld_of(domain) if domain != "(none)" else "(none)"] += n
    out: dict[str, Any] = {
        "docs": docs,
        "chars": chars,
        "language": top(languages, 15),
        "domain": top(domains, 20),
        "tld": top(tlds, 15),
        # Wider lists for comparing two runs: a label in one run's top list is looked up in the other's.
        "counts": {"language": dict(languages.most_common(200)), "domain": dict(domains.most_common(1000)),
                   "tld": dict(tlds.most_common(200)), "pii": dict(pii)},
        "length": lengths.bins(),
        "length_median": int(np.searchsorted(np.cumsum(length_counts), (docs + 1) // 2)) if docs else 0,
        "pii": [{"label": k, "count": int(n)} for k, n in pii.most_common()],
        "pii_total": pii_total,
    }
    for key in ("quality_score", "language_score"):
        out[key] = scores[key].bins() if key in scores else []
        out[f"{key}_mean"] = scores[key].mean() if key in scores else None
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


def stage_dirs(rundir: RunDir, manifest: dict[str, Any]) -> list[StageDir]:
    """The directory of each stage the manifest lists (it lists them in stage order)."""
    return [rundir.stage(index, stage["name"]) for index, stage in enumerate(manifest.get("stages", []))]


def funnel(rundir: RunDir, manifest: dict[str, Any], config: dict[str, Any],
           samples_per_reason: int) -> list[dict[str, Any]]:
    """Per stage and step: documents and characters in and out, and each drop reason with samples."""
    rows = []
    step_order = {s["name"]: [step["type"] for step in s.get("steps") or []]
                  for s in config.get("stages", [])}
    for stage, stagedir in zip(manifest.get("stages", []), stage_dirs(rundir, manifest), strict=True):
        steps = []
        for name, stats in stage.get("steps", {}).items():
            dropped = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("dropped:")}
            steps.append({"name": name, "docs_in": stats.get("in", 0), "docs_out": stats.get("out", 0),
                          "chars_out": stats.get("chars_out"), "dropped": dropped})
        order = step_order.get(stage["name"], [])
        steps.sort(key=lambda s: order.index(s["name"]) if s["name"] in order else len(order))
        rejected = dataset(stagedir.parts(REJECTED), rundir.fs)
        chosen = smallest_keys(rejected, samples_per_reason, group="drop_reason") \
            if rejected is not None and samples_per_reason > 0 else {}
        sampled = read_rows(rejected, [i for ids in chosen.values() for i in ids]) if chosen else []
        reasons = []
        for reason, count in sorted(stage.get("drop_reasons", {}).items(), key=lambda kv: -kv[1]):
            samples = [document_view(r) for r in sampled if r["drop_reason"] == reason]
            reasons.append({"reason": reason, "count": count, "samples": samples})
        chars_out = stage.get("chars_out", 0)
        rows.append({
            "stage": stage["name"], "dir": stage["dir"], "status": stage["status"],
            "fingerprint": stage["fingerprint"],
            "docs_in": stage["rows_in"], "docs_out": stage["rows_out"], "docs_dropped": stage["rows_rejected"],
            "kept_pct": round(100 * stage["rows_out"] / stage["rows_in"], 1) if stage["rows_in"] else None,
            "chars_out": chars_out, "chars_dropped": stage.get("chars_rejected", 0),
            "tokens_out": estimated_tokens(chars_out),
            "steps": steps, "reasons": reasons,
            # CPU seconds include the shards' child processes (the extract step's sandbox).
            "wall_s": stage["wall_s"], "cpu_s": stage["cpu_s"], "errors": stage.get("errors", []),
            # A stage reused from an earlier run took no time in this one; its CPU seconds are its shards'.
            "reused": stage["shards"]["computed"] == 0 and stage["shards"]["done"] > 0,
        })
    return rows


def contamination(stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents each eval set's decontamination dropped, per stage (the `decont:<set>` drop reasons)."""
    return [{"stage": s["stage"], "set": r["reason"].split(":", 1)[1], "count": r["count"],
             "pct": round(100 * r["count"] / s["docs_in"], 2) if s["docs_in"] else None}
            for s in stages for r in s["reasons"] if r["reason"].startswith("decont:")]


def collect(run_dir: str, assumptions: Assumptions | None = None, samples: int = 12,
            samples_per_reason: int = 3, tokenizer: str | None = None) -> dict[str, Any]:
    """The report's data for one run directory."""
    from filters.url import offline_tldextract

    fs, root = run_fs(run_dir)
    rundir = RunDir(run_dir)
    manifest = read_json(fs, rundir.manifest)
    if manifest is None or not fs.exists(rundir.run_yaml):
        raise FileNotFoundError(f"{run_dir} is not a finished Winnow run directory (no manifest.json or run.yaml)")
    assumptions = assumptions or Assumptions()
    config_text = fs.cat_file(rundir.run_yaml).decode()
    extractor = offline_tldextract()
    output = dataset(parquet_files(rundir.output, fs), fs)
    dist = output_distributions(output, lambda d: extractor(d).suffix or "(none)" if d else "(none)")
    dist["dup_cluster_sizes"] = cluster_sizes(manifest)
    tokens, token_source = estimated_tokens(dist["chars"]), f"estimated at {CHARS_PER_TOKEN} characters per token"
    if tokenizer:
        tokens, token_source = count_tokens(output, tokenizer), f"counted with {Path(tokenizer).name}"
    elif output is not None and "token_count" in output.schema.names:  # a tokenizing stage ran
        tokens = int(pc.sum(output.to_table(columns=["token_count"])["token_count"]).as_py() or 0)
        token_source = "counted by the pipeline (token_count)"
    config = yaml.safe_load(config_text)
    stages = funnel(rundir, manifest, config, samples_per_reason)
    all_rejected = [f for stagedir in stage_dirs(rundir, manifest) for f in stagedir.parts(REJECTED)]
    rejected = dataset(all_rejected, fs)
    first_in = stages[0]["docs_in"] if stages else 0
    return {
        "run": {
            "dir": root if is_local(fs) else run_dir.rstrip("/"), "name": root.rsplit("/", 1)[-1],
            "status": run_status(run_dir),
            "started_at": manifest.get("started_at"), "updated_at": manifest.get("updated_at"),
            "winnow_version": manifest.get("winnow_version"), "code_version": manifest.get("code_version"),
            "inputs": manifest.get("inputs", []), "config_yaml": config_text,
            "config": config,
        },
        "funnel": stages,
        "contamination": contamination(stages),
        "output": {"docs": dist["docs"], "chars": dist["chars"], "tokens": tokens, "token_source": token_source,
                   "files": (manifest.get("output") or {}).get("files", []),
                   "kept_pct": round(100 * dist["docs"] / first_in, 2) if first_in else None},
        "distributions": dist,
        "samples": {"kept": sample_rows(output, samples) if output else [],
                    "dropped": sample_rows(rejected, samples) if rejected else []},
        "instructions": collect_instructions(root, manifest, samples, fs),
        "cost": crawl_cost(stages, assumptions),
        "profile": cost_profile(manifest, first_in, dist["docs"]),
        "budget": training_budget(tokens, first_in, assumptions),
        "assumptions": assumptions.model_dump(),
    }


def count_tokens(data: ds.Dataset | None, tokenizer_path: str) -> int:
    """Tokens in the output with the project tokenizer (or any tokenizer.json), without special tokens."""
    if data is None:
        return 0
    from train.tokenizer import load_vocab

    vocab = load_vocab(tokenizer_path)
    return sum(len(ids) for batch in data.to_batches(columns=["text"], batch_size=1024)
               for ids in vocab.encode_batch([t or "" for t in batch.column("text").to_pylist()]))
