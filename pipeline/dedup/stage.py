"""The dedup stage: drives the phases in phases.py on Ray and writes the stage's shards.

The phases are barriers, each a fan-out of tasks whose tables Ray shuffles to the next; the
driver holds references and per-task stats only. The last phase writes one output shard per
input shard, each a shard task like a map stage's (`StageDir.run`: begin, write, finish), so
reruns, status and the manifest treat both kinds alike. Decisions are deterministic, so when a run dies while writing,
the rerun recomputes the phases and writes only the shards that are missing.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cputime import own_peak_rss_mb
from pipeline.dedup.components import connected_components
from pipeline.dedup.params import DedupParams
from pipeline.dedup.phases import (
    DECISIONS,
    KEPT,
    REASONS,
    bucket_task,
    decide_task,
    label_task,
    sign_task,
    verify_left_task,
    verify_right_task,
)
from pipeline.dedup.shuffle import concat, exchange
from pipeline.jsonfile import read_json, write_json
from pipeline.parquet_io import iter_parquet, writer_for
from pipeline.progress import StageProgress
from pipeline.stage import completion_record
from pipeline.stagedir import REJECTED, StageDir, merge_counts, run_shard
from pipeline.storage import write_bytes
from pipeline.writer_params import WriterConfig

if TYPE_CHECKING:
    from pipeline.config import StageConfig

log = logging.getLogger("winnow.dedup")

CLUSTER_COLUMNS = {"dup_cluster_id": pa.string(), "dup_cluster_size": pa.int32()}
SAVED = "_decisions"  # in the stage directory: decisions/part-<partition>.parquet and decided.json
SUMMARY = "_dedup.json"  # in the stage directory: the phases' stats (pipeline/kinds/dedup.py reads it)


@dataclass(frozen=True)
class WriteJob:
    stage_name: str
    stagedir: StageDir
    shard: str
    input_path: str
    fingerprint: str
    writer_json: str
    batch_size: int
    number: int  # the shard's place among the stage's shards: its documents are number << 32 | row
    decisions: str  # URL of the decisions of this shard's partition (save_decisions_task)
    input_id: str = ""


def save_decisions_task(url: str, *tables: pa.Table) -> int:
    """Write one partition's decisions, as one Parquet file, where every write task can read them."""
    fs, path = fsspec.core.url_to_fs(url)
    sink = pa.BufferOutputStream()
    pq.write_table(concat(tables, DECISIONS), sink)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    write_bytes(fs, path, sink.getvalue().to_pybytes())
    return 0


def write_task(job: WriteJob) -> dict[str, Any]:
    """Copy one input shard into kept and rejected shards, with its cluster columns set; return its record."""
    stagedir = job.stagedir
    with fsspec.open(job.decisions, "rb") as f:
        decisions = pq.read_table(f, schema=DECISIONS)
    doc = decisions.column("doc").to_numpy()
    mine = np.flatnonzero((doc >> 32) == job.number)
    rows = (doc[mine] & 0xFFFFFFFF).tolist()
    reason = decisions.column("reason").to_numpy()[mine].tolist()
    cluster_id = decisions.column("cluster_id").take(pa.array(mine)).to_pylist()
    size = decisions.column("cluster_size").to_numpy()[mine].tolist()
    by_row = {r: (reason[k], cluster_id[k], size[k]) for k, r in enumerate(rows)}

    with fsspec.open(job.input_path, "rb") as f:
        columns = {field.name: field.type for field in pq.read_schema(f)} | CLUSTER_COLUMNS
    writer_cfg = WriterConfig.model_validate_json(job.writer_json)
    kept_writer = writer_for(stagedir.fs, stagedir.part(job.shard), columns, False, writer_cfg)
    rejected_writer = writer_for(stagedir.fs, stagedir.part(job.shard, REJECTED),
                                 columns | {"duplicate_of": pa.string()}, True, writer_cfg)
    row = rows_out = 0
    drop_reasons: Counter[str] = Counter()
    for batch in iter_parquet(job.input_path, job.batch_size):
        kept, rejected = [], []
        for d in batch:
            why, cluster, members = by_row.get(row, (KEPT, d["id"], 1))
            row += 1
            d["dup_cluster_id"], d["dup_cluster_size"] = cluster, members
            if why == KEPT:
                kept.append(d)
                continue
            d.update(drop_reason=REASONS[why], drop_stage=job.stage_name, duplicate_of=cluster)
            drop_reasons[REASONS[why]] += 1
            rejected.append(d)
        rows_out += len(kept)
        kept_writer.write(kept)
        rejected_writer.write(rejected)
    outputs, rejected_outputs = kept_writer.close(), rejected_writer.close()
    in_clusters = sum(1 for _, _, members in by_row.values() if members > 1)
    step_stats = {"in": row, "out": rows_out, "chars_out": kept_writer.chars, "in_clusters": in_clusters,
                  **{f"dropped:{r.split(':', 1)[-1]}": n for r, n in drop_reasons.items()}}
    return completion_record(job.shard, job.fingerprint, job.input_path, outputs, rejected_outputs, row, rows_out,
                             drop_reasons, chars_out=kept_writer.chars, chars_rejected=rejected_writer.chars,
                             steps={"dedup": step_stats}, peak_rss_mb=own_peak_rss_mb(), input_id=job.input_id)


def partitions_for(params: DedupParams, inputs: list[str]) -> int:
    """Enough partitions for every CPU, and one per `rows_per_partition` documents."""
    import ray

    if params.partitions:
        return params.partitions
    rows = 0
    for path in inputs:
        try:
            with fsspec.open(path, "rb") as f:
                rows += pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowException):
            pass  # its sign task fails, names the file, and the shard is recorded as failed
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(cpus, -(-rows // params.rows_per_partition), 1)


class PhaseLog:
    """Per-phase wall time, task count, largest task memory and summed counters."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, Any]] = {}

    def add(self, name: str, started: float, stats: list[dict[str, Any]]) -> None:
        merged: dict[str, Any] = {"tasks": len(stats), "wall_s": round(time.perf_counter() - started, 3),
                                  "max_task_peak_rss_mb": max((s["peak_rss_mb"] for s in stats), default=0.0)}
        # Sizes of the largest thing a task saw are a maximum; every other counter is a sum.
        merged |= merge_counts({k: v for k, v in s.items() if k not in ("wall_s", "peak_rss_mb")
                                and not k.startswith("largest")} for s in stats)
        for key in {k for s in stats for k in s if k.startswith("largest")}:
            merged[key] = max(s.get(key, 0) for s in stats)
        self.phases[name] = merged
        log.info("dedup %s: %s", name, {k: v for k, v in merged.items() if not isinstance(v, dict)})


def _gather(refs: list[Any], label: str, docs_of: Any) -> list[tuple[dict[str, Any] | None, Exception | None]]:
    """Results of per-shard tasks in order, as (result, None) or (None, error), with a progress bar."""
    import ray

    results: dict[Any, tuple[dict[str, Any] | None, Exception | None]] = {}
    remaining = list(refs)
    with StageProgress(label, total=len(refs)) as progress:
        while remaining:
            ready, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
            for ref in ready:
                try:
                    results[ref] = (ray.get(ref), None)
                    progress.update(progress.docs + docs_of(results[ref][0]), shards_done=1)
                except Exception as exc:  # noqa: BLE001 - a bad shard is recorded, the others go on
                    results[ref] = (None, exc)
                    progress.update(progress.docs, failed=1)
    return [results[ref] for ref in refs]


def shard_numbers(shards: dict[str, str]) -> dict[str, int]:
    """Each shard's number, its place in id order. Ids are strings (`00003`, or `00003.001` for a shard's
    second output file); the same set of shards numbers the same way on every run."""
    return {shard: k for k, shard in enumerate(sorted(shards))}


def decide(stage: StageConfig, stagedir: StageDir, shards: dict[str, str],
           options: dict[str, Any]) -> tuple[int, list[dict[str, str]], PhaseLog]:
    """Every phase up to the decisions, saved under `_decisions/`: (partitions, failed shards, phase stats)."""
    import ray

    params = stage.dedup or DedupParams()
    params_json = params.model_dump_json()
    parts = partitions_for(params, list(shards.values()))
    phases = PhaseLog()
    started = time.perf_counter()
    names = list(shards)
    widths = [parts, parts] + ([parts] if params.verify else [])
    number = shard_numbers(shards)
    routed, stat_refs = exchange(sign_task, [(number[s], shards[s], params_json, parts, stage.batch_size)
                                             for s in names], widths, **options)
    results = _gather(stat_refs, f"{stage.name} (signatures)", lambda r: r["docs"])
    failures = [stagedir.failure(s, shards[s], err) for s, (_, err) in zip(names, results, strict=True)
                if err is not None]
    ok = [i for i, (_, err) in enumerate(results) if err is None]
    bands, docs, *rest = [[[refs[i] for i in ok] for refs in output] for output in routed]
    phases.add("sign", started, [r for r, _ in results if r])

    t = time.perf_counter()
    (edges, candidates), stats = exchange(bucket_task, [(params_json, parts, *bands[p]) for p in range(parts)],
                                          [parts, parts], **options)
    phases.add("bucket", t, ray.get(stats))
    del bands
    if params.verify:
        (shingles,) = rest
        t = time.perf_counter()
        (candidates,), stats = exchange(verify_left_task, [(parts, len(candidates[p]), *candidates[p], *shingles[p])
                                                           for p in range(parts)], [parts], **options)
        phases.add("verify_join", t, ray.get(stats))
        t = time.perf_counter()
        (verified,), stats = exchange(verify_right_task, [(parts, params.verify_min_jaccard, len(candidates[p]),
                                                           *candidates[p], *shingles[p]) for p in range(parts)],
                                      [parts], **options)
        phases.add("verify", t, ray.get(stats))
        edges = [direct + checked for direct, checked in zip(edges, verified, strict=True)]
        del shingles, verified
    del candidates
    t = time.perf_counter()
    stars, cc = connected_components(edges, parts, **options)
    phases.add("components", t, [{"peak_rss_mb": 0.0, **cc}])
    t = time.perf_counter()
    (members,), stats = exchange(label_task, [(parts, len(stars[p]), *stars[p], *docs[p]) for p in range(parts)],
                                 [parts], **options)
    phases.add("label", t, ray.get(stats))
    t = time.perf_counter()
    (decisions,), stats = exchange(decide_task, [(params_json, parts, *members[p]) for p in range(parts)], [parts],
                                   **options)
    phases.add("decide", t, ray.get(stats))
    t = time.perf_counter()
    save = ray.remote(save_decisions_task).options(**options)
    ray.get([save.remote(stagedir.file_url(f"{SAVED}/part-{p:05d}.parquet"), *decisions[p]) for p in range(parts)])
    phases.add("save", t, [])
    return parts, failures, phases



def run_dedup(stage: StageConfig, stagedir: StageDir | str, fingerprint: str, shards: dict[str, str],
              pending: list[str], done: dict[str, dict[str, Any]],
              input_id: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Run every phase over all shards, write the pending ones; returns the shards that failed.

    `stagedir` is the stage's directory (or its URL). `input_id` names each shard's input; every
    record written names it, so a rerun can tell decisions made on another set of inputs."""
    import ray

    if isinstance(stagedir, str):
        stagedir = StageDir(stagedir, stage.name)

    params = stage.dedup or DedupParams()
    options: dict[str, Any] = {"num_cpus": stage.resources.num_cpus, "max_retries": stage.max_retries,
                               "retry_exceptions": False}
    if stage.resources.memory_mb:
        options["memory"] = stage.resources.memory_mb << 20
    fs = stagedir.fs
    saved = read_json(fs, stagedir.file(f"{SAVED}/decided.json"))
    reuse = bool(saved) and saved.get("fingerprint") == fingerprint
    started = time.perf_counter()
    if reuse:
        # A run of these inputs decided, then lost its driver while writing: its decisions hold.
        log.info("stage %s: decisions saved by an earlier run are reused; writing the missing shards", stage.name)
        parts, failures, phases = saved["parts"], [], PhaseLog()
        phases.phases = saved["phases"]
    else:
        if fs.exists(stagedir.file(SAVED)):
            fs.rm(stagedir.file(SAVED), recursive=True)
        parts, failures, phases = decide(stage, stagedir, shards, options)
        if not failures:  # a failed shard may do better next time: then nothing is saved
            write_json(fs, stagedir.file(f"{SAVED}/decided.json"),
                       {"fingerprint": fingerprint, "parts": parts, "phases": phases.phases})

    failed = {f["shard"] for f in failures}
    to_write = [s for s in pending if s not in failed]
    t = time.perf_counter()
    write = ray.remote(run_shard).options(**options)
    futures = {}
    number = shard_numbers(shards)
    for s in to_write:
        job = WriteJob(stage.name, stagedir, s, shards[s], fingerprint, stage.writer.model_dump_json(),
                       stage.batch_size, number[s], stagedir.file_url(f"{SAVED}/part-{number[s] % parts:05d}.parquet"),
                       (input_id or {}).get(s, ""))
        futures[write.remote(stagedir, s, write_task, job)] = s
    write_stats = []
    refs = list(futures)
    for ref, (record, err) in zip(refs, _gather(refs, f"{stage.name} (write)", lambda r: r["rows_in"]), strict=True):
        shard = futures[ref]
        if err is not None:
            failures.append(stagedir.failure(shard, shards[shard], err))
            continue
        done[shard] = record
        write_stats.append({"peak_rss_mb": record["peak_rss_mb"], "rows": record["rows_in"]})
    phases.add("write", t, write_stats)
    summary = {"params": params.model_dump(mode="json"), "partitions": parts, "decisions_reused": reuse,
               "phase_cpu_s": round(sum(p.get("cpu_s", 0) for n, p in phases.phases.items() if n != "write"), 3),
               "wall_s": round(time.perf_counter() - started, 3), "driver_peak_rss_mb": own_peak_rss_mb(),
               "phases": phases.phases}
    write_json(fs, stagedir.file(SUMMARY), summary)
    return failures
