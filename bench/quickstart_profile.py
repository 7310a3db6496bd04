"""The quickstart pipeline's costs, stage by stage and step by step, against an earlier commit's.

    python bench/quickstart_profile.py [--against COMMIT] [--repeats 2]

Runs `configs/quickstart.yaml` (every stage: extract, heuristics, dedup, line filters, quality, PII, synth)
on the bundled sample WARCs into fresh run directories, with this checkout and, with `--against`, with
COMMIT checked out in a temporary git worktree (same Python environment), alternating so that machine load
hits both alike. Prints each stage's CPU seconds (the median over repeats; child processes included) and
this checkout's per-step parts, names the slowest step, and writes bench/results/quickstart_profile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from paths import results_dir

ROOT = Path(__file__).resolve().parents[1]


def run_quickstart(code_root: Path, out: Path) -> dict:
    # `python -m` puts the working directory first on sys.path, and local Ray workers start there too:
    # running in `code_root` runs its code, not the editable install's.
    env = dict(os.environ, PYTHONPATH=str(code_root))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "configs/quickstart.yaml", "--set", f"output_dir={out}"]
    subprocess.run(cmd, cwd=code_root, env=env, check=True, capture_output=True, timeout=900)
    return json.loads((out / "manifest.json").read_text())


def stage_cpu(manifest: dict) -> dict[str, float]:
    return {s["name"]: s["cpu_s"] for s in manifest["stages"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", help="a commit to compare with (checked out in a temporary worktree)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="winnow-qs-") as tmp:
        base_root = None
        if args.against:
            base_root = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base_root), args.against], cwd=ROOT,
                           check=True, capture_output=True)
        try:
            now, before, last = [], [], None
            for k in range(args.repeats):
                last = run_quickstart(ROOT, Path(tmp) / f"now-{k}")
                now.append(stage_cpu(last))
                if base_root is not None:
                    before.append(stage_cpu(run_quickstart(base_root, Path(tmp) / f"before-{k}")))
        finally:
            if base_root is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(base_root)], cwd=ROOT, check=False)
    median_now = {s: statistics.median(r[s] for r in now) for s in now[0]}
    median_before = {s: statistics.median(r[s] for r in before) for s in before[0]} if before else {}
    parts = sorted(((s["name"], part, spent["cpu_s"]) for s in last["stages"] for part, spent in
                    (s.get("costs") or {}).items()), key=lambda x: -x[2])
    print(f"{'stage':<16}{'CPU s now':>11}{'CPU s before':>14}{'ratio':>8}")
    for stage, cpu in median_now.items():
        old = median_before.get(stage)
        ratio = f"{old / cpu:.2f}x" if old and cpu else ""
        print(f"{stage:<16}{cpu:>11.2f}{'' if old is None else f'{old:.2f}':>14}{ratio:>8}")
    before_total = f"{sum(median_before.values()):.2f}" if median_before else ""
    print(f"{'total':<16}{sum(median_now.values()):>11.2f}{before_total:>14}")
    print("largest parts now:", ", ".join(f"{s}/{p} {c:.2f}s" for s, p, c in parts[:6]))
    run_profile = last.get("profile", {})
    print("run:", {k: v for k, v in run_profile.items() if k != "sampling"})
    slowest_before = max(median_before, key=median_before.get) if median_before else None
    result = {"stages_cpu_s": median_now, "stages_cpu_s_before": median_before, "against": args.against,
              "repeats": args.repeats, "largest_parts": parts[:10], "run": run_profile,
              "slowest_stage_before": slowest_before,
              "slowest_stage_speedup": (median_before[slowest_before] / median_now[slowest_before]
                                        if slowest_before and median_now.get(slowest_before) else None)}
    if slowest_before:
        print(f"slowest stage before: {slowest_before}, now {result['slowest_stage_speedup']:.2f}x less CPU")
    results = results_dir() / "quickstart_profile.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    main()
