"""End-to-end runs on real WARCs: the run directory, reruns, config changes, resume, bad input."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.config import load_config
from pipeline.runner import Runner
from pipeline.status import format_errors, format_table, stage_rows
from tests.conftest import OUTPUT_EXTRAS, ROOT, SAMPLE, WARC

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL_INPUT = [str(SAMPLE / "wget-2024-dolma-000*.warc.gz"), str(SAMPLE / "cc-2020-34-resiliparse.warc.gz"),
               str(SAMPLE / "cc-2014-35-npm.warc")]


def config(out: Path, inputs=None, extra=()):
    overrides = [f"output_dir={out}", f"input={json.dumps(inputs or SMALL_INPUT)}", *extra]
    return load_config(QUICKSTART, overrides)


def run(out: Path, inputs=None, extra=()):
    return Runner(config(out, inputs, extra)).run()


def file_digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.parquet"))}


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run(out)


def test_run_directory_manifest_columns_and_counts(first_run):
    out, manifest = first_run
    assert (out / "run.yaml").exists() and (out / "_winnow.json").exists()
    log_text = (out / "logs" / "run.log").read_text()
    assert "stage extract: 4 shards computed" in log_text and "stage pii:" in log_text
    assert yaml.safe_load((out / "run.yaml").read_text())["output_dir"] == str(out)
    assert manifest == json.loads((out / "manifest.json").read_text())
    # Every map shard task keeps its own log, written as it runs.
    task_logs = sorted((out / "logs" / "00_extract").glob("*.log"))
    assert [p.stem for p in task_logs] == [f"{k:05d}" for k in range(4)]
    assert "started on" in task_logs[0].read_text() and task_logs[0].read_text().rstrip().endswith("done")
    assert manifest["status"] == "done"
    extract, heuristics, dedup, lines, quality, pii, synth = manifest["stages"]
    assert [s["dir"] for s in manifest["stages"]] == ["stages/00_extract", "stages/01_heuristics", "stages/02_dedup",
                                                      "stages/03_line_filters", "stages/04_quality", "stages/05_pii",
                                                      "stages/06_synth"]
    # Every WARC record is accounted for: a document, or a counted skip.
    reader = extract["reader"]
    skipped = sum(v for k, v in reader.items() if k.startswith("skipped:"))
    assert reader["documents"] + skipped == reader["records"]
    assert extract["rows_in"] == reader["documents"] == 16 + 22 + 15 + 3
    for stage, previous in zip(manifest["stages"], [None, *manifest["stages"][:-1]], strict=True):
        assert stage["rows_out"] + stage["rows_rejected"] == stage["rows_in"]
        assert sum(stage["drop_reasons"].values()) == stage["rows_rejected"]
        # A shard per input file, then one per output file of the stage before.
        shards = 4 if previous is None else len(list((out / previous["dir"]).glob("part-*.parquet")))
        assert stage["shards"] == {"total": shards, "done": shards, "reused": 0, "computed": shards, "failed": 0}
        if previous:
            assert stage["rows_in"] == previous["rows_out"]

    # Parquet on disk matches the manifest, kept and rejected.
    for stage in manifest["stages"]:
        stage_dir = out / stage["dir"]
        kept = sum(pq.ParquetFile(p).metadata.num_rows for p in stage_dir.glob("part-*.parquet"))
        if "synth" in stage:  # documents pass through a synth stage: it writes instructions, not documents
            assert kept == 0 and not list(stage_dir.glob("rejected/*.parquet"))
            continue
        rejected = pq.read_table(stage_dir / "rejected").to_pylist() if list(
            (stage_dir / "rejected").glob("*.parquet")) else []
        assert kept == stage["rows_out"] and len(rejected) == stage["rows_rejected"]
        assert all(r["drop_stage"] == stage["name"] and ":" in r["drop_reason"] for r in rejected)
        assert len(list((stage_dir / "_done").glob("*.json"))) == stage["shards"]["total"]
    table = pq.read_table(out / "output", ignore_prefixes=OUTPUT_EXTRAS)
    assert table.num_rows == pii["rows_out"] == synth["rows_out"] > 0
    # The synth stage passes documents through and publishes what it mined beside them.
    instructions = pq.read_table(out / "instructions", ignore_prefixes=OUTPUT_EXTRAS)
    assert instructions.num_rows == synth["synth"]["instructions"] > 0
    assert set(instructions["source_id"].to_pylist()) <= set(table["id"].to_pylist())
    assert set(instructions["generator"].to_pylist()) == {"webqa"}
    assert dedup["dedup"]["phases"]["sign"]["docs"] == dedup["rows_in"]
    for column in ("id", "url", "domain", "crawl_date", "text", "language", "language_score", "dup_cluster_id",
                   "quality_score", "pii_count", "source_file", "source_offset"):
        assert column in table.column_names
    rows = table.to_pylist()
    assert len({r["id"] for r in rows}) == len(rows)
    assert all(r["text"] and r["language"] and r["url"].startswith("http") for r in rows)
    meta = pq.ParquetFile(next((out / "output").glob("*.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_rerun_reuses_everything_and_status_shows_it(first_run):
    out, manifest = first_run
    before = file_digests(out)
    runner = Runner(config(out))
    again = runner.run()
    assert [s["shards"]["reused"] for s in again["stages"]] == [s["shards"]["total"] for s in manifest["stages"]]
    assert [s["shards"]["computed"] for s in again["stages"]] == [0] * 7
    assert file_digests(out) == before
    assert not runner.ray.asked  # only completion records were read: Ray was not even joined
    rows = stage_rows(str(out))
    assert [r["status"] for r in rows] == ["done"] * 7 and rows[0]["shards"] == "4/4"
    assert "00_extract" in format_table(rows)


def test_a_dedup_summary_lost_with_the_driver_is_rebuilt_from_the_saved_decisions(first_run):
    # The phases' stats are written after the last shard: a driver lost in between leaves no summary, and the
    # rerun has no shard to write. The manifest still reports the phases, from the saved decisions.
    out, manifest = first_run
    summary = out / "stages" / "02_dedup" / "_dedup.json"
    kept = summary.read_bytes()
    summary.unlink()
    try:
        again = Runner(config(out)).run()
    finally:
        summary.write_bytes(kept)
    dedup, before = again["stages"][2]["dedup"], manifest["stages"][2]["dedup"]
    assert again["stages"][2]["shards"]["computed"] == 0
    assert dedup["decisions_reused"] and dedup["partitions"] == before["partitions"]
    assert dedup["phases"] == {name: p for name, p in before["phases"].items() if name != "write"}
    assert dedup["phase_cpu_s"] == before["phase_cpu_s"] > 0


def test_an_actor_pool_loads_steps_once_and_writes_the_same_bytes(first_run, tmp_path):
    out, manifest = first_run
    quality = next(s for s in manifest["stages"] if s["name"] == "quality")
    shutil.copytree(out, tmp_path / "run", ignore=shutil.ignore_patterns(".winnow.lock"))
    for stage in manifest["stages"][manifest["stages"].index(quality):]:
        shutil.rmtree(tmp_path / "run" / stage["dir"])
    pooled = Runner(config(tmp_path / "run", extra=["stages.quality.actors=1"])).run()
    entry = next(s for s in pooled["stages"] if s["name"] == "quality")
    assert entry["shards"]["computed"] == quality["shards"]["total"] > 1
    # One actor ran every shard and built the steps (and loaded the fastText model) once.
    assert [(a["shards"], a["steps_built"]) for a in entry["actors"]] == [(entry["shards"]["computed"], 1)]
    assert file_digests(tmp_path / "run" / quality["dir"]) == file_digests(out / quality["dir"])
    assert file_digests(tmp_path / "run" / "output") == file_digests(out / "output")


def test_changing_gopher_parameters_recomputes_only_that_stage(ray_local, tmp_path):
    run(tmp_path)
    extract_files = file_digests(tmp_path / "stages" / "00_extract")
    changed = run(tmp_path, extra=["stages.heuristics.steps.gopher_quality.min_doc_words=150"])
    extract, heuristics, *after = changed["stages"]
    assert extract["shards"]["reused"] == 4 and extract["shards"]["computed"] == 0
    assert heuristics["shards"]["reused"] == 0 and heuristics["shards"]["computed"] == 4
    assert all(s["shards"]["reused"] == 0 for s in after)
    assert file_digests(tmp_path / "stages" / "00_extract") == extract_files
    assert heuristics["drop_reasons"].get("gopher_quality:short_doc", 0) > 0
    # Changing a stage's resources is not a change of what it computes.
    same = run(tmp_path, extra=["stages.heuristics.steps.gopher_quality.min_doc_words=150",
                                "stages.heuristics.resources.num_cpus=2"])
    assert [s["shards"]["computed"] for s in same["stages"]] == [0] * 7


def session_processes(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:  # it ended while we looked
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry))
    return found


def kill_session(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGKILL a process started with start_new_session and everything it started, and return once none
    is left. Ray's workers leave the driver's process group but not its session, and one killed with
    its group alone can still finish the task it holds."""
    deadline = time.monotonic() + timeout_s
    while pids := session_processes(proc.pid):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()  # reap the driver, our own child
        assert time.monotonic() < deadline, f"processes {pids} of the killed run outlived SIGKILL"
        time.sleep(0.05)
    proc.wait()


@pytest.mark.parametrize("kill_when", [
    pytest.param("stages/00_extract/_done/*.json", id="during-extraction", marks=pytest.mark.slow),
    pytest.param("stages/02_dedup/_stage.json", id="during-dedup", marks=pytest.mark.slow),
    # Once dedup has saved its decisions, while it writes its shards: the rerun reuses the decisions.
    pytest.param("stages/02_dedup/_decisions/decided.json", id="during-dedup-write"),
])
def test_killed_run_resumes_to_identical_bytes(ray_local, tmp_path, kill_when):
    inputs = SMALL_INPUT + [str(SAMPLE / "archiveit-2008-aut.warc.gz")]
    reference = tmp_path / "reference"
    run(reference, inputs)

    killed = tmp_path / "killed"
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(config(killed, inputs).model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_dir = killed / "stages" / "00_extract" / "_done"
    deadline = time.time() + 120
    while time.time() < deadline and not list(killed.glob(kill_when)) and proc.poll() is None:
        time.sleep(0.005)
    assert list(killed.glob(kill_when)), f"the run ended or stalled before {kill_when} appeared"
    kill_session(proc)  # the driver and every Ray process it started: a lost machine
    finished_before_resume = len(list(done_dir.glob("*.json")))  # final: nothing that could write is left
    assert finished_before_resume >= 1
    assert not (killed / "output").exists(), "the run must be killed before it finished"

    resumed = run(killed, inputs)
    assert resumed["stages"][0]["shards"]["reused"] == finished_before_resume
    # On this small input dedup's writes can all land between two polls, before the kill: then the rerun has no
    # shard of it to write, and nothing to decide or reuse.
    if resumed["stages"][2]["shards"]["computed"]:
        assert resumed["stages"][2]["dedup"]["decisions_reused"] == kill_when.endswith("decided.json")
    assert file_digests(killed / "output") == file_digests(reference / "output")
    assert file_digests(killed / "stages") == file_digests(reference / "stages")
    assert not list(killed.rglob("*.tmp"))


def test_bad_inputs_are_counted_and_the_run_goes_on(ray_local, tmp_path):
    garbage = tmp_path / "garbage.warc.gz"
    garbage.write_bytes(os.urandom(4096))
    inputs = [str(SAMPLE / "wget-2024-dolma-0000.warc.gz"), str(WARC / "resiliparse" / "clipped.warc.gz"),
              str(WARC / "resiliparse" / "clueweb-quirk.warc.gz"), str(garbage)]
    manifest = run(tmp_path / "run", inputs)
    reader = manifest["stages"][0]["reader"]
    assert reader["truncated"] == 1 and reader["not_warc"] == 1 and reader["bad_date"] == 29
    assert manifest["status"] == "done" and manifest["stages"][1]["rows_out"] > 0


def test_a_shard_that_fails_is_recorded_and_the_others_finish(ray_local, tmp_path):
    run(tmp_path)
    victim = sorted((tmp_path / "stages" / "00_extract").glob("part-*.parquet"))[1]
    victim.write_bytes(b"not parquet at all")
    manifest = run(tmp_path, extra=["stages.heuristics.steps.gopher_quality.min_doc_words=60"])
    heuristics = manifest["stages"][1]
    assert heuristics["shards"]["failed"] == 1 and heuristics["shards"]["done"] == 3
    assert heuristics["errors"][0]["input"].endswith(victim.name)
    assert heuristics["status"] == "failed" and manifest["status"] == "partial"
    output = pq.read_table(tmp_path / "output", ignore_prefixes=OUTPUT_EXTRAS)
    assert output.num_rows == manifest["stages"][-1]["rows_out"]
    # `winnow status` names the failed shard, its error and the task's own log, which ends with the failure.
    errors = format_errors(stage_rows(str(tmp_path)), str(tmp_path))
    task_log = tmp_path / "logs" / heuristics["dir"].rsplit("/", 1)[-1] / f"{heuristics['errors'][0]['shard']}.log"
    assert f"log: {task_log}" in errors and "failed" in task_log.read_text().splitlines()[-1]

    # Once the cause is fixed, --retry-failed on the run directory redoes that shard and what follows it.
    from pipeline.cli import main

    shard = heuristics["errors"][0]["shard"]
    victim.unlink()
    (tmp_path / "stages" / "00_extract" / "_done" / f"{victim.name.split('-')[1]}.json").unlink()
    assert main(["run", str(tmp_path), "--retry-failed"]) == 0
    retried = json.loads((tmp_path / "manifest.json").read_text())
    assert retried["status"] == "done" and retried["stages"][1]["shards"]["computed"] == 1
    assert retried["stages"][0]["shards"]["computed"] == 1 and shard
    assert main(["run", str(tmp_path), "--retry-failed"]) == 0  # nothing failed: nothing to do
