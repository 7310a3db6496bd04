"""The same run on local disk and on an S3-compatible server: what object storage costs Winnow.

Starts moto's S3 server on loopback (the one the tests use), uploads the input WARCs, and runs
`configs/quickstart.yaml` twice per side, each `winnow run` in its own process: once from scratch and
once as a rerun (which only reads completion records, so it shows the per-request overhead). Input and
run directory are both local, or both on `s3://`. moto keeps objects in memory and answers in
microseconds, so this measures Winnow's request pattern and s3fs's client cost, not a real network.

Run: `.venv/bin/python bench/s3_vs_local.py [--inputs 'data/sample/*.warc*']`. Writes
bench/results/s3_vs_local.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WINNOW = str(Path(sys.executable).parent / "winnow")

from bench.paths import results_dir  # noqa: E402
from tests.loopback_s3 import loopback_s3  # noqa: E402


def timed_run(inputs: str, output_dir: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([WINNOW, "run", "configs/quickstart.yaml", "--set", f"input={inputs}",
                    "--set", f"output_dir={output_dir}"], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", default=str(ROOT / "data" / "sample" / "*.warc*"))
    parser.add_argument("--results", default=str(results_dir() / "s3_vs_local.json"))
    args = parser.parse_args()
    files = sorted(glob.glob(args.inputs))
    work = Path(tempfile.mkdtemp(prefix="winnow-s3bench-"))

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with loopback_s3("bench") as s3_env:
        import fsspec

        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        for f in files:
            fs.put(f, f"bench/in/{Path(f).name}")
        local_inputs = json.dumps(files)
        s3_inputs = json.dumps([f"s3://bench/in/{Path(f).name}" for f in files])
        result = {"command": " ".join(["bench/s3_vs_local.py", *sys.argv[1:]]), "inputs": len(files),
                  "input_mb": round(sum(os.path.getsize(f) for f in files) / 2**20, 1)}
        result["local"] = {"first_s": timed_run(local_inputs, str(work / "local"), env),
                           "rerun_s": timed_run(local_inputs, str(work / "local"), env)}
        s3_run_env = {**env, **s3_env}
        result["s3"] = {"first_s": timed_run(s3_inputs, "s3://bench/run", s3_run_env),
                        "rerun_s": timed_run(s3_inputs, "s3://bench/run", s3_run_env)}
        result["s3_over_local"] = {k: round(result["s3"][k] / result["local"][k], 2) for k in ("first_s", "rerun_s")}
        print(json.dumps(result, indent=1))
        Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
