"""Winnow's dedup stage side by side with datatrove's 4-stage MinHash, same corpus, same CPUs.

Run: `.venv/bin/python bench/dedup_vs_datatrove.py --docs 100000` (about 10 minutes on 2 cores).

* Corpus: `synthetic_corpus(docs)` from dedup_corpus.py (real sentences; 10% exact or near
  copies), written once as 8 Parquet files for Winnow and 8 gzipped JSONL twins for datatrove.
* Both use FineWeb's parameters: word 5-grams, 14 buckets x 8 hashes, and 2 CPUs: Winnow on a
  local Ray with `num_cpus=2`, datatrove's `LocalPipelineExecutor` with `workers=2` for each of
  its stages (signatures: 8 tasks, buckets: 14 tasks, cluster: 1 task, filter: 8 tasks).
* Winnow keeps the first document of a cluster by position (`keep: []`), like datatrove's
  union-find root, so the removed sets are comparable.
* Peak memory: a sampler reads the RSS and USS of this process and all its descendants (Ray's
  workers, datatrove's pool) every 50 ms and keeps the largest single process. RSS includes the
  pages of Ray's shared object store a worker touched; USS is what the process alone owns.
  Winnow also reports each task's own peak (`ru_maxrss`, which counts like RSS).
* Agreement: Jaccard of the removed sets, next to that of Winnow against itself with another
  seed (the disagreement any two LSH runs have on pairs near the threshold).
* Results: bench/results/dedup_vs_datatrove_<docs>.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_corpus import run_winnow_dedup, synthetic_corpus, write_shards  # noqa: E402
from paths import results_dir, work_dir  # noqa: E402

RESULTS = results_dir()
WORK = work_dir() / "dedup"


class PeakMemory:
    """Largest memory of any single process in this process tree, sampled in a thread.

    RSS counts the shared-memory pages a process has touched, and Ray's object store is shared
    memory mapped into every worker, so a worker's RSS includes the data it handed to the store.
    USS (unique set size) is the memory the process alone owns; both are reported.
    """

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self.peak_name, self.peak_uss, self.peak_uss_name = interval, 0, "", 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    info = proc.memory_full_info()
                    if info.rss > self.peak:
                        self.peak, self.peak_name = info.rss, proc.name()
                    if info.uss > self.peak_uss:
                        self.peak_uss, self.peak_uss_name = info.uss, proc.name()
                except psutil.Error:
                    pass
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)

    @property
    def peak_uss_mb(self) -> float:
        return round(self.peak_uss / 2**20, 1)


def _encode_for_xxhash4() -> None:
    """datatrove 0.10.1 hashes `str` shingles with xxhash, which xxhash 4 refuses; encoding them
    as UTF-8 first is what xxhash 3 did inside. Patched before datatrove builds its steps."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    dt_xxhash.xxhash64 = lambda data: xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data)
    dt_xxhash.xxhash32 = lambda data: xxhash.xxh32_intdigest(data.encode() if isinstance(data, str) else data)


def run_datatrove(inputs: Path, work: Path, n_files: int, workers: int) -> tuple[float, set[str], dict]:
    _encode_for_xxhash4()
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    reader = lambda: JsonlReader(str(inputs), glob_pattern="*.jsonl.gz")  # noqa: E731
    stages = {
        "signatures": ([reader(), MinhashDedupSignature(output_folder=str(work / "sigs"), config=config)], n_files),
        "buckets": ([MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"),
                                         config=config)], config.num_buckets),
        "cluster": ([MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"),
                                         config=config)], 1),
        "filter": ([reader(), MinhashDedupFilter(input_folder=str(work / "remove"),
                                                 exclusion_writer=JsonlWriter(str(work / "removed")))], n_files),
    }
    times = {}
    start = time.perf_counter()
    for name, (pipeline, tasks) in stages.items():
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks),
                              logging_dir=str(work / "logs" / name)).run()
        times[name] = round(time.perf_counter() - t, 2)
    wall = time.perf_counter() - start
    removed = set()
    for path in (work / "removed").glob("*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            removed |= {json.loads(line)["id"] for line in f}
    return wall, removed, times


def _build(docs: int, n_files: int) -> list[Path]:
    return write_shards(synthetic_corpus(docs), WORK / "input", n_files, jsonl=True, rows_per_group=5000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()

    shutil.rmtree(WORK, ignore_errors=True)
    t = time.perf_counter()
    # Built in a child process, so that its memory is not counted against either tool.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        files = pool.apply(_build, (args.docs, args.files))
    print(f"corpus: {args.docs:,} documents in {args.files} files ({time.perf_counter() - t:.1f}s)")

    with PeakMemory() as mem:
        t = time.perf_counter()
        summary = run_winnow_dedup(files, WORK / "winnow", {"keep": []}, num_cpus=args.cpus)
        winnow_wall = time.perf_counter() - t
    import pyarrow.parquet as pq

    winnow_removed = set(pq.read_table(WORK / "winnow" / "rejected", columns=["id"]).column("id").to_pylist())
    winnow = {"wall_s": round(winnow_wall, 2), "peak_rss_mb_largest_process": mem.peak_mb,
              "largest_process": mem.peak_name, "peak_uss_mb_largest_process": mem.peak_uss_mb,
              "largest_uss_process": mem.peak_uss_name,
              "max_task_peak_rss_mb": max(p["max_task_peak_rss_mb"] for p in summary["phases"].values()),
              "removed": len(winnow_removed), "phases_s": {k: v["wall_s"] for k, v in summary["phases"].items()}}
    print("winnow   ", winnow)
    # Two LSH runs with different random permutations disagree on pairs near the threshold: the
    # same job with another seed is the baseline for how far two correct implementations agree.
    run_winnow_dedup(files, WORK / "winnow_seed2", {"keep": [], "seed": 2}, num_cpus=args.cpus)
    seed2_removed = set(pq.read_table(WORK / "winnow_seed2" / "rejected", columns=["id"]).column("id").to_pylist())

    with PeakMemory() as mem:
        dt_wall, dt_removed, dt_times = run_datatrove(WORK / "input", WORK / "datatrove", args.files, args.cpus)
    datatrove = {"wall_s": round(dt_wall, 2), "peak_rss_mb_largest_process": mem.peak_mb,
                 "largest_process": mem.peak_name, "peak_uss_mb_largest_process": mem.peak_uss_mb,
                 "largest_uss_process": mem.peak_uss_name, "removed": len(dt_removed), "stages_s": dt_times}
    print("datatrove", datatrove)

    both = winnow_removed & dt_removed
    result = {
        "docs": args.docs, "files": args.files, "cpus": args.cpus,
        "params": "word 5-grams, 14 bands x 8 rows, keep first by position",
        "winnow": winnow, "datatrove": datatrove,
        "speedup": round(dt_wall / winnow_wall, 2),
        "docs_per_s": {"winnow": round(args.docs / winnow_wall), "datatrove": round(args.docs / dt_wall)},
        "removed_jaccard": round(len(both) / max(len(winnow_removed | dt_removed), 1), 4),
        "removed_jaccard_winnow_seed1_vs_seed2": round(len(winnow_removed & seed2_removed)
                                                       / max(len(winnow_removed | seed2_removed), 1), 4),
        "removed_only_winnow": len(winnow_removed - dt_removed),
        "removed_only_datatrove": len(dt_removed - winnow_removed),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dedup_vs_datatrove_{args.docs}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("speedup", "docs_per_s", "removed_jaccard",
                                             "removed_jaccard_winnow_seed1_vs_seed2", "removed_only_winnow",
                                             "removed_only_datatrove")}))


if __name__ == "__main__":
    main()
