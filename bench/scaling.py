"""Throughput with 1 and 2 workers, and peak memory per worker as the input grows.

    python bench/scaling.py [--sizes 1000 10000 50000] [--workers 1 2] [--files 8]

The FineWeb-style run of bench/vs_datatrove.py (`bench/winnow_bench.yaml`: URL filter, extraction, language
ID, Gopher, C4 and FineWeb filters) over corpora built by bench/build_corpus.py, each size in `--files`
WARC files, so that a larger input means larger shards, not more of them. Every size runs with the most
workers; the largest size of at most 10,000 records runs with every `--workers` count too. From each
run's manifest: records per second of wall time (Ray's start-up included) and per CPU-second, and the
largest resident memory of any worker process and of any child process (the extract sandbox), which the
kernel keeps as high-water marks. Writes bench/results/scaling.json and scaling.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from paths import results_dir, work_dir

ROOT = Path(__file__).resolve().parents[1]


def corpus_for(records: int, files: int) -> Path:
    from build_corpus import build

    corpus = work_dir() / f"scaling-corpus-{records}"
    if not (corpus / "CORPUS.md").exists() or len(list(corpus.glob("*.warc.gz"))) != files:
        shutil.rmtree(corpus, ignore_errors=True)
        print(f"building {records} records in {corpus} ...", flush=True)
        build(records, files, corpus, udhr=min(100, records // 10))
    return corpus


def run(corpus: Path, workers: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "bench/winnow_bench.yaml", "--set", f"input={corpus}/*.warc.gz",
           "--set", f"output_dir={out}", "--set", f"ray.num_cpus={workers}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"winnow run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    records = stages[0]["rows_in"]
    task_cpu = sum(s["cpu_s"] for s in stages)
    return {"records": records, "workers": workers, "wall_s": round(wall, 2),
            "records_per_s": round(records / wall, 1), "records_per_s_per_worker": round(records / wall / workers, 1),
            "records_per_task_cpu_s": round(records / task_cpu, 1) if task_cpu else None,
            "worker_peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in stages),
            "child_peak_rss_mb": max(s.get("child_peak_rss_mb", 0.0) for s in stages),
            "kept": stages[-1]["rows_out"], "profile": manifest.get("profile", {})}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    most = max(r["workers"] for r in rows)
    by_size = sorted((r for r in rows if r["workers"] == most), key=lambda r: r["records"])
    fig, (mem, speed) = plt.subplots(1, 2, figsize=(9, 3.4))
    sizes = [r["records"] for r in by_size]
    mem.plot(sizes, [r["worker_peak_rss_mb"] for r in by_size], "o-", label="worker process")
    mem.plot(sizes, [r["child_peak_rss_mb"] for r in by_size], "s--", label="extract sandbox")
    mem.set(xscale="log", xlabel="input records", ylabel="peak RSS, MB", title=f"Peak memory ({most} workers)")
    mem.set_ylim(bottom=0)
    mem.legend()
    scaled = [r for r in rows if r["records"] == max(x["records"] for x in rows if x.get("scaling"))] \
        if any(r.get("scaling") for r in rows) else []
    scaled.sort(key=lambda r: r["workers"])
    speed.bar([str(r["workers"]) for r in scaled], [r["records_per_s"] for r in scaled], color="#3b6ea8")
    speed.set(xlabel="workers", ylabel="records / s (wall)",
              title=f"Throughput, {scaled[0]['records']:,} records" if scaled else "Throughput")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 50000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--files", type=int, default=8)
    args = ap.parse_args()
    most = max(args.workers)
    scaling_size = max([s for s in args.sizes if s <= 10000] or [min(args.sizes)])
    rows = []
    for size in args.sizes:
        corpus = corpus_for(size, args.files)
        for workers in (args.workers if size == scaling_size else [most]):
            row = run(corpus, workers, work_dir() / f"scaling-run-{size}-{workers}")
            row["scaling"] = size == scaling_size
            rows.append(row)
            print(f"{size:>7} records, {workers} workers: {row['wall_s']:.1f} s, {row['records_per_s']:.1f} records/s, "
                  f"{row['records_per_task_cpu_s']} per task CPU-s, worker peak {row['worker_peak_rss_mb']:.0f} MB, "
                  f"sandbox peak {row['child_peak_rss_mb']:.0f} MB", flush=True)
    scaled = {r["workers"]: r["records_per_s"] for r in rows if r["scaling"]}
    speedup = scaled[most] / scaled[min(scaled)] if len(scaled) > 1 else None
    if speedup:
        print(f"{most} workers vs {min(scaled)}: {speedup:.2f}x records/s at {scaling_size:,} records")
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"rows": rows, "speedup": speedup, "cpus": os.cpu_count()},
                                                 indent=2) + "\n")
    plot(rows, out / "scaling.svg")
    print(f"wrote {out / 'scaling.json'} and scaling.svg")


if __name__ == "__main__":
    main()
