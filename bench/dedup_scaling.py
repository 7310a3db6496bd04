"""How Winnow's dedup stage scales: 10k, 100k and 1M documents, on 1 and 2 Ray workers.

Run: `.venv/bin/python bench/dedup_scaling.py` (about 20 minutes on 2 cores; `--sizes 10000 100000`
for a quick look).

* Corpus: `synthetic_corpus(n)` from dedup_corpus.py (real sentences, 10% copies), in files of
  25,000 documents, so a shard is the same size at every scale, as in a real crawl.
* Each size runs on a fresh local Ray with `num_cpus` 1, then 2. FineWeb's parameters.
* Recorded per run: wall time and per-phase times, the shuffle partitions, the largest single
  process RSS and USS (sampled, all processes of the tree; see PeakMemory), and the largest
  task's own peak RSS.
* From the 2-worker run of the largest size, per-document costs per phase, and a projection to
  100M documents on a 64-core cluster (see `projection` in the result, and the README).
* Results: bench/results/dedup_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dedup_corpus import run_winnow_dedup, synthetic_corpus, write_shards  # noqa: E402
from dedup_vs_datatrove import PeakMemory  # noqa: E402
from paths import results_dir, work_dir  # noqa: E402

RESULTS = results_dir()
WORK = work_dir() / "dedup_scaling"
DOCS_PER_FILE = 25_000


def project(run: dict, docs: int, target_docs: int = 100_000_000, cores: int = 64) -> dict:
    """Linear extrapolation of the CPU-bound phases from measured CPU seconds per document."""
    phases = run["summary"]["phases"]
    per_doc = {name: p.get("cpu_s", 0) / docs for name, p in phases.items() if "cpu_s" in p}
    write_per_doc = run["summary"]["phases"]["write"]["wall_s"] * run["cpus"] / docs
    per_doc["write"] = write_per_doc
    cpu_hours = sum(per_doc.values()) * target_docs / 3600
    band_bytes = 16 * (run["summary"]["params"]["bands"] + 1)
    return {
        "target_docs": target_docs, "cores": cores,
        "cpu_us_per_doc": {k: round(v * 1e6, 1) for k, v in per_doc.items()},
        "cpu_hours": round(cpu_hours, 1),
        "wall_hours_at_cores": round(cpu_hours / cores, 2),
        "shuffle_gb": round(target_docs * band_bytes / 1e9, 1),
        "partitions": -(-target_docs // run["summary"]["params"]["rows_per_partition"]),
        "note": "components rounds grow with log^2 of the largest cluster, not with the corpus; "
                "task memory stays at the measured per-partition level because partitions grow with the corpus",
    }


def _build(docs: int) -> list[Path]:
    return write_shards(synthetic_corpus(docs), WORK / "input", max(1, docs // DOCS_PER_FILE), rows_per_group=5000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows-per-partition", type=int, default=None,
                        help="override the shuffle partition size (results go to a separate file)")
    args = parser.parse_args()
    runs = []
    for docs in args.sizes:
        shutil.rmtree(WORK, ignore_errors=True)
        t = time.perf_counter()
        # Built in a child process, so that its memory is not counted as the driver's.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            files = pool.apply(_build, (docs,))
        print(f"{docs:,} documents in {len(files)} files ({time.perf_counter() - t:.0f}s to build)")
        for cpus in args.cpus:
            out = WORK / f"run-{cpus}"
            with PeakMemory(interval=0.2) as mem:
                t = time.perf_counter()
                params = {"rows_per_partition": args.rows_per_partition} if args.rows_per_partition else {}
                summary = run_winnow_dedup(files, out, params, num_cpus=cpus)
                wall = time.perf_counter() - t
            run = {"docs": docs, "cpus": cpus, "files": len(files), "wall_s": round(wall, 2),
                   "docs_per_s": round(docs / wall), "partitions": summary["partitions"],
                   "peak_rss_mb_largest_process": mem.peak_mb, "largest_process": mem.peak_name,
                   "peak_uss_mb_largest_process": mem.peak_uss_mb, "largest_uss_process": mem.peak_uss_name,
                   "max_task_peak_rss_mb": max(p["max_task_peak_rss_mb"] for p in summary["phases"].values()),
                   "driver_peak_rss_mb": summary["driver_peak_rss_mb"],
                   "phases_s": {k: v["wall_s"] for k, v in summary["phases"].items()},
                   "removed": sum(summary["phases"]["decide"][k] for k in ("removed_exact", "removed_minhash")),
                   "components_rounds": summary["phases"]["components"]["rounds"], "summary": summary}
            runs.append(run)
            print({k: v for k, v in run.items() if k != "summary"})
            shutil.rmtree(out, ignore_errors=True)
    largest = max(r["docs"] for r in runs)
    best = max((r for r in runs if r["docs"] == largest), key=lambda r: r["cpus"])
    result = {"runs": [{k: v for k, v in r.items() if k != "summary"} for r in runs],
              "projection": project(best, largest)}
    RESULTS.mkdir(exist_ok=True)
    suffix = f"_rpp{args.rows_per_partition}" if args.rows_per_partition else ""
    (RESULTS / f"dedup_scaling{suffix}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["projection"], indent=1))
    shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
