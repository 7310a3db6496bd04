"""WARC reader throughput on the shipped samples (data/sample): records, documents and MB per CPU second.

Reads every sample file `--repeat` times in this process (one core) and keeps the best pass by CPU
time, so a busy machine shows as noise rather than as a slower reader. `--against PATH` times another
copy of the reader (a warc.py file) in the same process, passes alternating, which is how a change is
compared with the version before it:

    git show 232322b:filters/warc.py > /tmp/warc_before.py
    .venv/bin/python bench/warc_reader.py --against /tmp/warc_before.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path

from paths import results_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = results_dir() / "warc_reader.json"


def load_reader(path: str):
    spec = importlib.util.spec_from_file_location("warc_under_test", path)
    warc = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = warc  # pydantic resolves the params' annotations through it
    spec.loader.exec_module(warc)
    return warc


def one_pass(warc, files: list[Path]) -> tuple[float, Counter[str]]:
    """CPU seconds of one pass over `files`, and the reader's counts."""
    stats: Counter[str] = Counter()
    cpu = time.process_time()
    for path in files:
        for _ in warc.read_warc(str(path), warc.WarcReaderParams(), stats):
            pass
    return time.process_time() - cpu, stats


def summary(name: str, best: float, stats: Counter[str], size_mb: float) -> dict:
    return {"reader": name, "records": stats["records"], "documents": stats["documents"],
            "best_cpu_seconds": round(best, 4), "records_per_cpu_s": round(stats["records"] / best),
            "documents_per_cpu_s": round(stats["documents"] / best),
            "compressed_mb_per_cpu_s": round(size_mb / best, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", help="another warc.py to time alongside filters/warc.py")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    import filters.warc

    readers = {"filters/warc.py": filters.warc}
    if args.against:
        readers[args.against] = load_reader(args.against)
    files = sorted(p for p in (ROOT / "data" / "sample").iterdir() if ".warc" in p.name)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    best = dict.fromkeys(readers, float("inf"))
    stats: dict[str, Counter[str]] = {}
    for _ in range(args.repeat):
        for name, warc in readers.items():
            seconds, stats[name] = one_pass(warc, files)
            best[name] = min(best[name], seconds)
    result = {"files": [p.name for p in files], "compressed_mb": round(size_mb, 2), "repeat": args.repeat,
              "readers": [summary(name, best[name], stats[name], size_mb) for name in readers]}
    if args.against:
        result["cpu_ratio"] = round(best["filters/warc.py"] / best[args.against], 3)
    print(json.dumps(result, indent=2))
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
