"""WARC reader throughput on the shipped samples (data/sample): records and MB per second.

Reads every sample file `--repeat` times in this process (one core) and reports the best pass, so a
busy machine shows as noise rather than as a slower reader. `--module` times another copy of the
reader (a file path), which is how a change is compared with the version before it.
Run: `.venv/bin/python bench/warc_reader.py [--module /tmp/warc_before.py] [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "warc_reader.json"


def load_reader(module: str | None):
    if module is None:
        import filters.warc as warc

        return warc
    spec = importlib.util.spec_from_file_location("warc_under_test", module)
    warc = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = warc  # pydantic resolves the params' annotations through it
    spec.loader.exec_module(warc)
    return warc


def one_pass(warc, files: list[Path]) -> tuple[float, Counter[str]]:
    stats: Counter[str] = Counter()
    start = time.perf_counter()
    for path in files:
        for _ in warc.read_warc(str(path), warc.WarcReaderParams(), stats):
            pass
    return time.perf_counter() - start, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", help="path of another warc.py to time instead of filters/warc.py")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    warc = load_reader(args.module)
    files = sorted(p for p in (ROOT / "data" / "sample").iterdir() if ".warc" in p.name)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    times, stats = [], Counter()
    for _ in range(args.repeat):
        seconds, stats = one_pass(warc, files)
        times.append(seconds)
    best = min(times)
    result = {
        "reader": args.module or "filters/warc.py",
        "files": [p.name for p in files],
        "compressed_mb": round(size_mb, 2),
        "records": stats["records"],
        "documents": stats["documents"],
        "best_seconds": round(best, 4),
        "records_per_s": round(stats["records"] / best),
        "documents_per_s": round(stats["documents"] / best),
        "compressed_mb_per_s": round(size_mb / best, 2),
        "passes": [round(t, 4) for t in times],
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
