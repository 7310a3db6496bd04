"""How long `winnow report` takes, and how much memory, on a run of 20,000 real HTML records.

Run: `.venv/bin/python bench/report.py` (a few minutes: the pipeline runs come first, and are reused
on a second call).

The input is bench/corpus (built by bench/build_corpus.py: 468 real pages and copies of them with new
text, 8 WARC files, 20,000 records), run through bench/winnow_bench.yaml (extraction, language ID and the four
heuristic filters, no dedup, so thousands of documents reach the output), and again with a stricter
Gopher word count. Then the report and the comparison are each timed in a fresh process, with that
process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from paths import results_dir, work_dir

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = work_dir() / "report"
WINNOW = [sys.executable, "-m", "pipeline.cli"]
CONFIG = "bench/winnow_bench.yaml"


# Runs the command in-process and reports its own peak RSS (kB) last on stderr.
MEASURED = ("import resource, sys; from pipeline.cli import main; code = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")


def timed(args: list[str]) -> dict[str, float]:
    """Wall seconds (interpreter start included) and peak RSS of one `winnow` command."""
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, *args], cwd=ROOT, check=True, capture_output=True,
                          text=True)
    wall = time.perf_counter() - t
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(int(done.stderr.split()[-1]) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000, help="records of the corpus (build_corpus.py)")
    parser.add_argument("--files", type=int, default=8, help="WARC files of the corpus")
    args = parser.parse_args()
    # The full-size corpus is bench/corpus, shared with vs_datatrove.py; another size gets its own.
    full_size = (args.records, args.files) == (20000, 8)
    corpus = HERE / "corpus" if full_size else WORK / f"corpus-{args.records}x{args.files}"
    if not (corpus / "corpus_stats.json").exists():  # built before its text was varied: build it again
        subprocess.run([sys.executable, str(HERE / "build_corpus.py"), "--records", str(args.records),
                        "--files", str(args.files), "--out", str(corpus)], check=True)
    inputs = str(corpus / "corpus-*.warc.gz")
    runs = {"a": [], "b": ["--set", "stages.heuristics.steps.gopher_quality.min_doc_words=120"]}
    for name, extra in runs.items():
        subprocess.run([*WINNOW, "run", CONFIG, "--set", f"input={inputs}",
                        "--set", f"output_dir={WORK / name}", *extra], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = json.loads((WORK / "a" / "manifest.json").read_text())
    result = {
        "records_in": manifest["stages"][0]["rows_in"],
        "docs_out": manifest["stages"][-1]["rows_out"],
        "output_chars": sum(s.get("chars_out", 0) for s in manifest["stages"][-1:]),
        "report": timed(["report", str(WORK / "a")]),
        "compare": timed(["report", str(WORK / "a"), "--compare", str(WORK / "b")]),
        "status": timed(["status", str(WORK / "a")]),  # the floor: interpreter start and imports
        "report_html_mb": round((WORK / "a" / "report.html").stat().st_size / 2**20, 2),
        "compare_html_mb": round((WORK / "a" / "compare-b.html").stat().st_size / 2**20, 2),
    }
    print(json.dumps(result, indent=1))
    results_dir().mkdir(parents=True, exist_ok=True)
    (results_dir() / "report.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
