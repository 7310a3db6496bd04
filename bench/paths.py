"""Where benchmarks write their figures and their scratch files.

Figures go to bench/results/ (committed) and scratch files (corpora, pipeline runs, models) to
bench/work/ (git-ignored), unless `WINNOW_BENCH_RESULTS` or `WINNOW_BENCH_WORK` names another
directory: bench/smoke.py points both at a temporary directory, so a run at a tiny size neither
overwrites the committed figures nor leaves tiny runs behind that a full-size run would reuse.
"""
from __future__ import annotations

import os
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_ENV = "WINNOW_BENCH_RESULTS"
WORK_ENV = "WINNOW_BENCH_WORK"


def results_dir() -> Path:
    """The directory benchmark figures are written to (not created here)."""
    return Path(os.environ.get(RESULTS_ENV) or BENCH / "results")


def work_dir() -> Path:
    """The directory for a benchmark's scratch files (not created here)."""
    return Path(os.environ.get(WORK_ENV) or BENCH / "work")
