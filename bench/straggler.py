"""Straggler benchmark: end-to-end time of a run with one slow shard, streaming between stages against barriers.

The input is the quickstart's sample WARCs: one of them (archiveit-2008, 2.5 MB) holds most of the pages
and is the straggler. The stages are the quickstart's map stages (extract, heuristics, line filters,
quality, PII) on a local Ray of `--cpus` CPUs. Each mode runs `winnow run` as its own process into a
fresh directory, alternating, `--repeats` times; the median wall time of each is compared, and the two
outputs must be byte-identical. Run: `.venv/bin/python bench/straggler.py` (`--tiny` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from paths import results_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = results_dir() / "straggler.json"
WINNOW = str(Path(sys.executable).parent / "winnow")
SAMPLE = ROOT / "data" / "sample"


def config(out: Path, inputs: list[str], cpus: int, streaming: bool) -> dict:
    quickstart = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    stages = [s for s in quickstart["stages"] if s.get("kind", "map") == "map"]
    return {"input": inputs, "output_dir": str(out), "ray": {"num_cpus": cpus}, "streaming": streaming,
            "stages": stages}


def output_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((out / "output").glob("part-*.parquet")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def run_once(work: Path, inputs: list[str], cpus: int, streaming: bool) -> tuple[float, str, dict]:
    out = work / ("streaming" if streaming else "barrier")
    shutil.rmtree(out, ignore_errors=True)
    cfg = work / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(config(out, inputs, cpus, streaming)))
    start = time.perf_counter()
    subprocess.run([WINNOW, "run", str(cfg)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    return wall, output_digest(out), manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="two small inputs, one repeat: checks the bench runs")
    args = parser.parse_args()
    inputs = sorted(str(p) for p in SAMPLE.glob("*.warc*"))
    if args.tiny:
        inputs = [str(SAMPLE / name) for name in ("cc-2020-34-resiliparse.warc.gz", "wget-2024-dolma-0000.warc.gz")]
        args.repeats = 1
    work = Path(tempfile.mkdtemp(prefix="winnow-straggler-"))
    walls: dict[str, list[float]] = {"barrier": [], "streaming": []}
    digests, shard_walls = set(), {}
    try:
        for _ in range(args.repeats):
            for streaming in (False, True):
                wall, digest, manifest = run_once(work, inputs, args.cpus, streaming)
                walls["streaming" if streaming else "barrier"].append(wall)
                digests.add(digest)
                shard_walls = {s["name"]: s["shard_wall_s"] for s in manifest["stages"]}
                documents = manifest["stages"][0]["rows_in"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    barrier, streaming = statistics.median(walls["barrier"]), statistics.median(walls["streaming"])
    result = {
        "command": "bench/straggler.py " + " ".join(sys.argv[1:]),
        "inputs": [Path(p).name for p in inputs],
        "documents": documents,
        "cpus": args.cpus,
        "stages": list(shard_walls),
        "stage_cpu_wall_s": shard_walls,
        "barrier_s": [round(w, 2) for w in walls["barrier"]],
        "streaming_s": [round(w, 2) for w in walls["streaming"]],
        "barrier_median_s": round(barrier, 2),
        "streaming_median_s": round(streaming, 2),
        "speedup": round(barrier / streaming, 3),
        "outputs_identical": len(digests) == 1,
    }
    for key, value in result.items():
        print(f"{key:20s} {value}")
    if not args.tiny:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if len(digests) != 1:
        sys.exit("streaming and barrier runs wrote different outputs")


if __name__ == "__main__":
    main()
