"""Run every benchmark at a tiny size, so a change that breaks one shows in CI, not months later.

Run: `.venv/bin/python bench/smoke.py [NAME ...]` (`make bench-smoke`; about 10 minutes on 2 cores).

Each benchmark in `TINY` runs as its own process, exactly as a person runs it (`python bench/NAME.py ARGS`),
with arguments that keep its whole code path (the same peers, the same steps) on little data. Figures
and scratch files go to a temporary directory (`WINNOW_BENCH_RESULTS`, `WINNOW_BENCH_WORK`, see
paths.py), so the committed figures in bench/results/ stay as they are and a full-size run never reuses
a tiny corpus or model. One line per benchmark: its name, seconds, ok or FAILED with the end of its
output. The exit status is 1 when any failed, and a benchmark that wrote no figures counts as failed.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from paths import RESULTS_ENV, WORK_ENV

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SAMPLE = ROOT / "data" / "sample"
# Small inputs for the benches that run `winnow run`: two of the quickstart's sample WARCs.
TWO_WARCS = [str(SAMPLE / "cc-2020-34-resiliparse.warc.gz"), str(SAMPLE / "wget-2024-dolma-0000.warc.gz")]
TINY_MODEL = ["--device", "cpu", "--layers", "1", "--heads", "2", "--width", "64", "--vocab", "512"]

# Arguments per benchmark; `{work}` is the temporary scratch directory. Every script in bench/ that
# is a benchmark is here; the others are helpers (see HELPERS), and a new script must be added to one.
TINY: dict[str, list[str]] = {
    "ablation": ["--tiny", "--seeds", "1"],
    "dedup_quality": ["--limit", "40"],
    "dedup_scaling": ["--sizes", "2000", "--cpus", "1"],
    "dedup_vs_datatrove": ["--docs", "2000", "--files", "2"],
    # 512 tokens: the agreement check needs 8 demo pairs that fit whole.
    "dpo_vs_trl": [*TINY_MODEL, "--seq-len", "512", "--pairs", "8", "--sft-steps", "2", "--dpo-steps", "2"],
    "floor": ["--records", "100", "--files", "2", "--corpus", "{work}/corpus"],
    "finetune_evidence": ["--steps", "2", "--train-pairs", "16", "--held-out", "4", "--eval-docs", "2"],
    "extraction": ["--udhr", "2", "--limit", "20"],
    "generate_vs_hf": ["--tiny", "--new-tokens", "16", "--batch", "4", "--single", "2"],
    "heuristics": ["--limit", "100"],
    "langid": [],
    "llm_client": ["--n", "40", "--concurrency", "8"],
    "pii": ["--limit", "30"],
    "quality": ["--limit", "100"],
    "quickstart_profile": ["--repeats", "1"],
    "report": ["--records", "200", "--files", "2"],
    "rerun": ["--inputs", *TWO_WARCS],
    "scaling": ["--sizes", "60", "--workers", "1", "--files", "2"],
    "s3_vs_local": ["--inputs", str(SAMPLE / "cc-2020-34-resiliparse.warc.gz")],
    "soak": ["--trials", "1", "--kills", "1", "--worker-kills", "1", "--inputs", *TWO_WARCS],
    "straggler": ["--tiny"],
    "train_vs_hf": [*TINY_MODEL, "--seq-len", "64", "--batch", "2", "--steps", "3", "--warmup", "1",
                    "--sft-examples", "16"],
    "vs_datatrove": ["--records", "100", "--files", "2", "--corpus", "{work}/corpus"],
    "warc_reader": ["--repeat", "1"],
    "webqa_precision": ["--limit", "100"],
}
# Scripts in bench/ that are not benchmarks: corpora (with their page variants and distinct-text check),
# paths, the extraction model's trainer, and this runner.
HELPERS = {"build_corpus", "corpus_check", "corpus_variants", "dedup_corpus", "paths", "smoke", "train_boundary"}
# Benchmarks that import SmolLM2 and run the quickstart first get longer than --timeout.
TIMEOUT_S = {"finetune_evidence": 720}
# straggler.py --tiny keeps its figures to itself: they would replace the full-size ones.
NO_FIGURES = {"straggler"}


def run_one(name: str, args: list[str], tmp: Path, timeout_s: float) -> tuple[bool, float, str]:
    """Run one benchmark; ok, wall seconds, and the end of its output when it failed."""
    results, work = tmp / "results" / name, tmp / "work" / name
    results.mkdir(parents=True)
    work.mkdir(parents=True)
    env = {**os.environ, RESULTS_ENV: str(results), WORK_ENV: str(work)}
    command = [sys.executable, str(BENCH / f"{name}.py"), *(a.replace("{work}", str(work)) for a in args)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace", timeout=timeout_s)
        output, failed = done.stdout, done.returncode != 0 and f"exit {done.returncode}"
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        failed = f"timed out after {timeout_s:.0f} s"
    seconds = time.perf_counter() - start
    if not failed and name not in NO_FIGURES and not any(results.iterdir()):
        failed = f"wrote nothing to {RESULTS_ENV}"
    tail = "" if not failed else f"{failed}\n" + "\n".join(output.rstrip().splitlines()[-15:])
    return not failed, seconds, tail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per benchmark")
    args = parser.parse_args()
    scripts = {p.stem for p in BENCH.glob("*.py")}
    unlisted = scripts - set(TINY) - HELPERS
    if unlisted:  # a new benchmark must get tiny arguments here, or it would never run in CI
        print(f"not in bench/smoke.py's TINY or HELPERS: {', '.join(sorted(unlisted))}")
        return 1
    names = args.names or sorted(TINY)
    failures = 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="winnow-bench-smoke-") as tmp:
        for name in names:
            ok, seconds, tail = run_one(name, TINY[name], Path(tmp), max(args.timeout, TIMEOUT_S.get(name, 0)))
            failures += not ok
            print(f"{name:20s} {seconds:6.1f} s  {'ok' if ok else 'FAILED'}", flush=True)
            if tail:
                print("    " + tail.replace("\n", "\n    "), flush=True)
    print(f"{len(names) - failures} of {len(names)} benchmarks ok in {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
