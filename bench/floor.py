"""The FineWeb-style run against its floor: plain resiliparse over the same pages, in the same sitting.

    python bench/floor.py [--records 20000] [--files 8] [--workers 2]

On one core a run cannot beat reading its WARC files and finding each page's main text. This script
measures that floor and the whole run one after the other, floor, run, floor, and divides by the mean of
the two floors: CPU time on a shared VM moves by a quarter from one hour to the next, and a ratio taken in
one sitting moves far less than two figures taken apart.

* floor: every response record of the corpus read with FastWARC, its body decoded as UTF-8 (the corpus is)
  and passed through resiliparse's main-content pass (`HTMLTree.parse`, `extract_plain_text(main_content=
  True)`); CPU seconds of this process.
* run: `winnow run bench/winnow_bench.yaml` with `ray.num_cpus=workers` over the same files (the corpus of
  bench/vs_datatrove.py, built the same way if missing); CPU seconds from its manifest: every task with its
  child processes, Ray's daemons and the driver. Without `--profile`: py-spy's sampling would slow the
  workers it samples, and the floor runs without it. The floor keeps one core busy and the run two; on this
  machine two plain passes at once cost the same CPU per record as one alone.

Writes bench/results/floor.json: records per CPU-second of each, the run's share of the floor, and the run's
CPU per 1,000 records, part by part (the parts of the report's profile, which add up to the run's CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from paths import results_dir, work_dir
from scaling import run
from vs_datatrove import ensure_corpus, warm_caches


def floor_pass(files: list[Path]) -> tuple[int, float]:
    """Records and CPU seconds of reading `files` and extracting each page's main text."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    records, start = 0, time.process_time()
    for path in files:
        with open(path, "rb") as raw:
            for record in ArchiveIterator(raw, record_types=WarcRecordType.response, parse_http=True):
                html = record.reader.read().decode("utf-8", "replace")
                extract_plain_text(HTMLTree.parse(html), main_content=True)
                records += 1
    return records, time.process_time() - start


def winnow_run(corpus: Path, workers: int) -> dict[str, Any]:
    """The run's records, its CPU (every task with its child processes, Ray's daemons and the driver: the
    manifest's run costs) and where that CPU went, part by part, as the report's profile gives it."""
    from pipeline.report.profile import cost_profile

    out = work_dir() / "floor-run"
    run(corpus, workers, out)  # bench/scaling.py's run of bench/winnow_bench.yaml, without py-spy
    manifest = json.loads((out / "manifest.json").read_text())
    records, kept = manifest["stages"][0]["rows_in"], manifest["stages"][-1]["rows_out"]
    profile = cost_profile(manifest, records, kept)
    return {"records": records, "kept": kept, "cpu_s": profile["cpu_s"], "wall_s": profile["wall_s"],
            "idle_core_s": profile["idle_core_s"],
            "parts": [{"stage": r["stage"], "part": r["part"], "cpu_s": round(r["cpu_s"], 3),
                       "per_1000_records_s": round(r["per_1k_in_s"], 3)} for r in profile["rows"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent / "corpus")
    args = parser.parse_args()
    corpus = args.corpus.resolve()
    ensure_corpus(corpus, args.records, args.files, rebuild=False)
    warm_caches()
    files = sorted(corpus.glob("*.warc.gz"))

    records, before = floor_pass(files)
    run = winnow_run(corpus, args.workers)
    _, after = floor_pass(files)
    floor_cpu = (before + after) / 2
    floor_speed, run_speed = records / floor_cpu, run["records"] / run["cpu_s"]
    result = {
        "records": records, "files": len(files), "workers": args.workers,
        "floor": {"cpu_s": [round(before, 2), round(after, 2)], "records_per_cpu_s": round(floor_speed, 1)},
        "run": {k: round(v, 2) if isinstance(v, float) else v for k, v in run.items()}
        | {"records_per_cpu_s": round(run_speed, 1)},
        "run_share_of_floor": round(run_speed / floor_speed, 3),
        "command": f"bench/floor.py --records {args.records} --files {args.files} --workers {args.workers}",
    }
    print(f"floor (FastWARC + resiliparse main content): {floor_speed:.1f} records/CPU-s "
          f"(passes of {before:.1f} and {after:.1f} CPU-s)")
    print(f"run ({run['records']} records, {run['wall_s']:.1f} s wall): {run_speed:.1f} records/CPU-s, "
          f"{run_speed / floor_speed:.1%} of the floor")
    for part in run["parts"]:
        print(f"  {part['stage'] + ' · ' + part['part']:44s} {part['per_1000_records_s']:8.3f} CPU-s per 1,000 records")
    path = results_dir() / "floor.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
