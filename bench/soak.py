"""Soak test: a multi-stage run killed again and again at random moments must still end byte-identical.

Runs `configs/quickstart.yaml` once undisturbed (the reference). Then, for each trial, starts the same
run in a fresh directory and kills it (SIGKILL to the driver and its local Ray: a lost machine) at a
random moment, `--kills` times in a row, each kill later than the last resume started; finally lets it
finish and compares every Parquet file of `output/` and `stages/` with the reference, byte for byte.
A second kind of fault, with `--worker-kills`, SIGKILLs a Ray worker process running a task (the task dies,
Ray retries it) during the trial's last run; if that run still ends with failed shards, one more rerun
is allowed, as a user would do, and counted.

Run: `.venv/bin/python bench/soak.py --trials 4 --kills 3 --worker-kills 2`
(about 4 minutes on 2 cores). Writes bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from paths import results_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = results_dir() / "soak.json"


def digests(run_dir: Path) -> dict[str, str]:
    files = sorted(run_dir.glob("output/part-*.parquet")) + sorted(run_dir.glob("stages/**/part-*.parquet"))
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def start(config: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def worker_pids(driver: int) -> list[int]:
    """Ray worker processes running a task or actor under this driver's local cluster (its descendants)."""
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-e"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if len(line.split(None, 2)) == 3]
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in rows:
        children.setdefault(int(ppid), []).append(int(pid))
    family, todo = set(), [driver]
    while todo:
        pid = todo.pop()
        family.add(pid)
        todo += children.get(pid, [])
    # Task and actor workers only: killing Ray's own agents takes the local raylet down (a lost machine,
    # which the driver kills above already stand for).
    return [int(pid) for pid, _, args in rows if int(pid) in family and args.startswith("ray::")
            and not any(word in args for word in ("IDLE", "Agent", "ProgressCounter"))]


def config_for(base: Path, out: Path, inputs: list[str] | None = None) -> Path:
    """The base config writing to `out`, reading `inputs` instead of its own input when given."""
    cfg = yaml.safe_load(base.read_text())
    cfg["output_dir"] = str(out)
    if inputs:
        cfg["input"] = inputs
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def trial(base: Path, work: Path, name: str, kills: int, worker_kills: int, rng: random.Random,
          full_s: float, inputs: list[str] | None = None) -> dict:
    out = work / name
    config = config_for(base, out, inputs)
    events = []
    for _ in range(kills):
        proc = start(config)
        delay = rng.uniform(0.1, 0.8) * full_s
        time.sleep(delay)
        finished = proc.poll() is not None
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it finished first (a resumed run is quicker): nothing to kill
            pass
        proc.wait()
        events.append({"kind": "driver", "after_s": round(delay, 2), "finished_before_kill": finished})
    proc = start(config)
    for _ in range(worker_kills):
        time.sleep(rng.uniform(0.1, 0.4) * full_s)
        pids = worker_pids(proc.pid)
        if pids and proc.poll() is None:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
            except ProcessLookupError:
                continue
            events.append({"kind": "worker", "busy_workers": len(pids)})
    code = proc.wait()
    reruns = 0
    if code != 0:  # a shard whose retries ran out is recorded as failed: the user reruns, as here
        reruns, code = 1, subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config)], cwd=ROOT,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return {"trial": name, "events": events, "exit": code, "extra_reruns": reruns, "files": len(digests(out))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--kills", type=int, default=3, help="driver kills per trial")
    parser.add_argument("--worker-kills", type=int, default=2, help="worker kills in each trial's last run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", nargs="+", help="WARC files to read instead of the config's input")
    parser.add_argument("--results", default=str(RESULTS))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="winnow-soak-"))
    try:
        t0 = time.perf_counter()
        reference_cfg = config_for(Path(args.config), work / "reference", args.inputs)
        subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(reference_cfg)], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        full_s = time.perf_counter() - t0
        reference = digests(work / "reference")
        trials = []
        for k in range(args.trials):
            result = trial(Path(args.config), work, f"trial{k}", args.kills, args.worker_kills, rng, full_s,
                           args.inputs)
            result["identical"] = result["exit"] == 0 and digests(work / f"trial{k}") == reference
            trials.append(result)
            print(f"trial {k}: {len(result['events'])} kills, exit {result['exit']}, "
                  f"{'identical' if result['identical'] else 'DIFFERENT'}")
        summary = {"command": " ".join(["bench/soak.py", *sys.argv[1:]]), "config": args.config,
                   "reference_run_s": round(full_s, 1), "reference_files": len(reference), "trials": trials,
                   "identical": sum(t["identical"] for t in trials), "of": len(trials)}
        print(f"{summary['identical']} of {summary['of']} killed runs ended byte-identical to the reference")
        Path(args.results).write_text(json.dumps(summary, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
