"""Rerun benchmark: a finished run, run again, must only read its completion records.

Runs `winnow run configs/quickstart.yaml` into a fresh directory, then the same command again,
then again with one heuristic parameter changed, each as a separate process timed end to end,
and reports the ratios. Run: `.venv/bin/python bench/rerun.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import results_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = results_dir() / "rerun.json"
WINNOW = str(Path(sys.executable).parent / "winnow")


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([WINNOW, "run", "configs/quickstart.yaml", *args], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", help="WARC files to read instead of the quickstart's samples")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="winnow-rerun-"))
    try:
        base = [f"--set=output_dir={out}", *([f"--set=input={json.dumps(args.inputs)}"] if args.inputs else [])]
        first = timed(base)
        rerun = timed(base)
        changed = timed([*base, "--set=stages.heuristics.steps.gopher_quality.min_doc_words=80"])
        manifest = json.loads((out / "manifest.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result = {
        "first_run_s": round(first, 2),
        "rerun_s": round(rerun, 2),
        "rerun_ratio": round(rerun / first, 3),
        "heuristics_change_s": round(changed, 2),
        "heuristics_change_ratio": round(changed / first, 3),
        "reused_after_change": [s["shards"]["reused"] for s in manifest["stages"]],
        "documents": manifest["stages"][0]["rows_in"],
    }
    for key, value in result.items():
        print(f"{key:26s} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
