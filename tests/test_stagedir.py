"""The shard protocol (pipeline/stagedir.py) on local disk and in fsspec's memory filesystem, the CPU a shard's
child processes spend (pipeline/cputime.py), and both inside real runs."""

from __future__ import annotations

import json
import pickle
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import validate
from pipeline.cputime import ShardClock
from pipeline.rundir import RunDir
from pipeline.stagedir import StageDir, merge_counts, shard_failure
from tests.conftest import SAMPLE
from tests.warcs import PROSE, html_page, write_warc

SYNTH_FOLDERS = ("instructions", "instructions/rejected", "rephrased")


@pytest.fixture(params=["local", "memory"])
def run_url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "run")
        return
    import fsspec

    root = f"/stagedir-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    memory = fsspec.filesystem("memory")
    if memory.exists(root):
        memory.rm(root, recursive=True)


def _write_part(stagedir: StageDir, prefix: str, rows: int = 1) -> str:
    path = f"{prefix}-000.parquet"
    with stagedir.fs.open(path, "wb") as f:
        pq.write_table(pa.table({"id": [str(k) for k in range(rows)]}), f)
    return path


def _compute(stagedir: StageDir, shard: str, fail: bool = False) -> dict:
    """A shard compute as a kind's: writes its files (a synth shard's folders too) and returns its record."""
    name = lambda path: path.rsplit("/", 1)[-1]  # noqa: E731
    kept = _write_part(stagedir, stagedir.part(shard))
    rejected = _write_part(stagedir, stagedir.part(shard, "rejected"))
    files = [f"{folder}/{name(_write_part(stagedir, stagedir.part(shard, folder)))}" for folder in stagedir.folders]
    if fail:
        raise RuntimeError(f"shard {shard}: the compute failed\nafter writing its files")
    return {"shard": shard, "fingerprint": "fp1", "input": f"in/{shard}", "input_id": f"id-{shard}",
            "outputs": [name(kept)], "rejected": [name(rejected)], "rows_in": 2, "rows_out": 1, "files": files}


def _files_of(stagedir: StageDir, shard: str) -> list[str]:
    return sorted(p for p in stagedir.fs.find(stagedir.path) if f"part-{shard}-" in p or p.endswith(f"/{shard}.json"))


def test_prepare_keeps_the_records_of_its_fingerprint_and_resets_on_another(run_url):
    stagedir = RunDir(run_url).stage(2, "synth", SYNTH_FOLDERS)
    assert stagedir.prepare("fp1", {"name": "synth"}) == {}
    assert stagedir.fingerprint() == "fp1"
    record = stagedir.run("00000", _compute, stagedir, "00000")
    assert stagedir.prepare("fp1", {"name": "synth"}) == {"00000": record}
    # A record whose file went missing is not done.
    stagedir.fs.rm(stagedir.file(f"instructions/{record['files'][0].rsplit('/', 1)[-1]}"))
    assert stagedir.prepare("fp1", {"name": "synth"}) == {}

    stagedir.run("00001", _compute, stagedir, "00001")
    assert stagedir.prepare("fp2", {"name": "synth"}) == {}
    assert stagedir.fingerprint() == "fp2"
    assert [p for p in stagedir.fs.find(stagedir.path) if not p.endswith("_stage.json")] == []


def test_begin_clears_an_earlier_attempt_of_its_shard_only_kind_folders_included(run_url):
    stagedir = RunDir(run_url).stage(2, "synth", SYNTH_FOLDERS)
    stagedir.prepare("fp1", {})
    for shard in ("00001", "00002", "00001.001"):
        stagedir.run(shard, _compute, stagedir, shard)
    stagedir.fs.pipe_file(stagedir.part("00001", "rephrased") + "-001.parquet.tmp", b"half a file")
    others = _files_of(stagedir, "00002") + _files_of(stagedir, "00001.001")
    # The record, kept, rejected, one file in each kind folder and a killed attempt's temporary file.
    assert len(_files_of(stagedir, "00001")) == 7

    stagedir.begin("00001")
    assert _files_of(stagedir, "00001") == []
    assert _files_of(stagedir, "00002") + _files_of(stagedir, "00001.001") == others
    assert all(stagedir.fs.isdir(stagedir.file(folder)) for folder in ("rejected", *SYNTH_FOLDERS))


def test_finish_writes_the_record_last_and_nothing_else_does(run_url):
    stagedir = RunDir(run_url).stage(0, "extract")
    stagedir.prepare("fp1", {})
    stagedir.run("00000", _compute, stagedir, "00000")

    def compute_sees_no_record() -> dict:
        # An earlier attempt's record is gone before the compute starts, and the compute's files are not
        # marked done until it has returned.
        assert not stagedir.fs.exists(stagedir.record_path("00000"))
        record = _compute(stagedir, "00000")
        assert not stagedir.fs.exists(stagedir.record_path("00000"))
        return record

    record = stagedir.run("00000", compute_sees_no_record)
    on_disk = json.loads(stagedir.fs.cat_file(stagedir.record_path("00000")))
    assert on_disk == record and record["wall_s"] >= 0 and record["cpu_s"] >= record["child_cpu_s"] >= 0
    assert "finished_at" in record

    with pytest.raises(RuntimeError, match="the compute failed"):
        stagedir.run("00000", _compute, stagedir, "00000", True)
    assert _files_of(stagedir, "00000") == []  # a failed compute leaves neither files nor a record

    with pytest.raises(ValueError, match="shard 00003: a completion record needs"):
        stagedir.finish("00003", {"shard": "00003", "outputs": []})
    with pytest.raises(ValueError, match="missing: none; shard 00004"):
        stagedir.finish("00003", _compute(stagedir, "00004"))
    assert not stagedir.fs.exists(stagedir.record_path("00003"))


def test_a_record_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    stagedir = StageDir(str(tmp_path / "stage"), "extract")
    stagedir.prepare("fp1", {})
    stagedir.begin("00000")
    record = _compute(stagedir, "00000")

    def no_rename(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stagedir.fs, "mv", no_rename)
    with pytest.raises(OSError):
        stagedir.finish("00000", record)
    assert not list((tmp_path / "stage" / "_done").iterdir())  # neither the record nor a temporary file
    monkeypatch.undo()
    stagedir.finish("00000", record)
    assert [p.name for p in (tmp_path / "stage" / "_done").iterdir()] == ["00000.json"]


def test_reusable_needs_the_same_input_and_identity():
    record = {"input": "s3://b/x.warc.gz", "input_id": "ETag:abc:10"}
    assert StageDir.reusable(record, "s3://b/x.warc.gz", "ETag:abc:10")
    assert not StageDir.reusable(record, "s3://b/x.warc.gz", "ETag:abd:10")
    assert not StageDir.reusable(record, "s3://b/y.warc.gz", "ETag:abc:10")
    assert not StageDir.reusable({"input": "s3://b/x.warc.gz"}, "s3://b/x.warc.gz", "ETag:abc:10")


def test_remove_stale_removes_every_file_of_a_shard_nothing_feeds(run_url):
    stagedir = RunDir(run_url).stage(3, "synth", SYNTH_FOLDERS)
    stagedir.prepare("fp1", {})
    for shard in ("00000", "00001"):
        stagedir.run(shard, _compute, stagedir, shard)
    _write_part(stagedir, stagedir.part("00002", "instructions"))  # a killed attempt's leftovers, no record
    kept = _files_of(stagedir, "00000")

    assert stagedir.remove_stale({"00000": "in/00000"}) == ["00001", "00002"]
    assert _files_of(stagedir, "00001") == [] and _files_of(stagedir, "00002") == []
    assert _files_of(stagedir, "00000") == kept
    assert list(stagedir.done("fp1")) == ["00000"]


def test_a_stage_dir_pickles_to_the_same_paths(run_url):
    stagedir = RunDir(run_url).stage(1, "synth", SYNTH_FOLDERS)
    copy = pickle.loads(pickle.dumps(stagedir))
    assert copy == stagedir and copy.path == stagedir.path and copy.part("00001", "rephrased").endswith(
        "/stages/01_synth/rephrased/part-00001")
    assert copy.dirname == "01_synth" and copy.fs is stagedir.fs


def test_one_failure_format():
    error = RuntimeError("Traceback (most recent call last):\n  ...\nOSError: cannot read " + "x" * 600)
    failure = shard_failure("extract", "00003", "data/a.warc.gz", error)
    last_line = "OSError: cannot read " + "x" * 600
    assert failure == {"shard": "00003", "input": "data/a.warc.gz", "error": last_line[:500]}
    assert shard_failure("dedup", "00001", "in", KeyError())["error"] == "KeyError"
    assert shard_failure("dedup", "00001", "in", "ray: task lost\n")["error"] == "ray: task lost"
    assert StageDir("/tmp/s", "dedup").failure("00001", "in", "")["error"] == "unknown error"


def test_one_counter_merge():
    merged = merge_counts([
        {"gopher": {"in": 3, "dropped:short": 1}, "rows": 3, "node": "a", "ok": True},
        {"gopher": {"in": 2}, "langid": {"in": 2}, "rows": 2, "cost_usd": 0.25},
        {},
    ])
    assert merged == {"cost_usd": 0.25, "gopher": {"dropped:short": 1, "in": 5}, "langid": {"in": 2}, "rows": 5}
    assert list(merged) == sorted(merged)


# -- CPU of child processes -----------------------------------------------------------------------------
BURN = "import time\nwhile time.process_time() < {until}: pass\n"


def _burner(until_before: float, until_after: float) -> subprocess.Popen:
    """A child that spends `until_before` CPU seconds, says so, waits for a line, then spends up to
    `until_after`, says so, and stays alive (as the extract step's sandbox does between pages)."""
    code = (BURN.format(until=until_before) + "print('ready', flush=True)\ninput()\n" +
            BURN.format(until=until_after) + "print('done', flush=True)\ninput()\n")
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_the_clock_counts_live_and_exited_children_for_the_shard_only():
    older = _burner(0.4, 0.7)  # alive before the shard: only its 0.3 s during the shard count
    assert older.stdout.readline() == "ready\n"
    clock = ShardClock()
    older.stdin.write("go\n")
    older.stdin.flush()
    assert older.stdout.readline() == "done\n"
    subprocess.run([sys.executable, "-c", BURN.format(until=0.3)], check=True)  # exits (and is reaped) inside
    reading = clock.read()
    older.kill()
    older.wait()
    # 0.3 + 0.3 s, plus the short-lived child's interpreter start; not the older child's first 0.4 s.
    assert 0.55 <= reading["child_cpu_s"] <= 1.0, reading
    assert reading["cpu_s"] >= reading["child_cpu_s"]


def test_a_map_shard_counts_the_cpu_of_the_extract_child(tmp_path):
    """The extract step runs pages in a child process; the shard's cpu_s includes it. The child's CPU is
    measured independently: once it is killed and reaped, the kernel adds it to RUSAGE_CHILDREN."""
    from pipeline.stage import ShardJob, build_steps, map_shard

    warc = SAMPLE / "cc-2020-34-resiliparse.warc.gz"
    # A stage name of its own: build_steps caches steps (and their child) per stage config.
    cfg = validate({"input": [str(warc)], "output_dir": str(tmp_path / "run"), "stages": [
        {"name": f"extract_{uuid.uuid4().hex[:8]}", "steps": [{"type": "extract", "timeout_s": 30}]}]})
    stage = cfg.stages[0]
    stagedir = RunDir(cfg.output_dir).stage(0, stage.name)
    stagedir.prepare("fp", {})
    job = ShardJob(stage.name, stage.model_dump_json(), stagedir, "00000", str(warc), True, "fp", input_id="x")
    sandbox = build_steps(job.stage_json)[0].sandbox
    own0 = time.process_time()
    record = stagedir.run("00000", map_shard, job)
    own = time.process_time() - own0
    assert record["rows_in"] > 0 and sandbox.proc is not None

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sandbox.close()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert child > 0.1  # it imported trafilatura and extracted every page
    assert record["child_cpu_s"] >= 0.9 * child - 0.05, (record, child)
    assert record["cpu_s"] - own >= 0.9 * child - 0.05, (record, own, child)


def test_a_stale_synth_shard_leaves_nothing_behind_and_cpu_adds_up(ray_local, tmp_path):
    """An input that stops yielding documents stops feeding its synth shard: that shard's instructions,
    rejected instructions and rephrased files go with its record. The manifest's cpu_s counts the extract
    step's child process."""
    from pipeline.runner import Runner

    pages = {name: [(f"https://{name}.example/q", "2024-05-01T00:00:00Z",
                     html_page(f"What is the river valley known for?\n{PROSE}"))] for name in ("a", "b")}
    inputs = [str(write_warc(tmp_path / f"{name}.warc.gz", page)) for name, page in pages.items()]
    raw = {"input": inputs, "output_dir": str(tmp_path / "run"), "stages": [
        {"name": "extract", "steps": [{"type": "extract", "timeout_s": 30}]},
        {"name": "synth", "kind": "synth", "synth": {"generator": "webqa"}}]}
    first = Runner(validate(raw)).run()
    synth_dir = Path(raw["output_dir"]) / "stages" / "01_synth"
    made = sorted(str(p.relative_to(synth_dir)) for p in synth_dir.rglob("part-00001-*"))
    assert made == ["instructions/part-00001-000.parquet", "instructions/rejected/part-00001-000.parquet",
                    "rephrased/part-00001-000.parquet"]
    extract = first["stages"][0]
    assert extract["child_cpu_s"] > 0 and extract["cpu_s"] >= extract["child_cpu_s"]

    write_warc(Path(inputs[1]), [])  # the second input now holds no page
    second = Runner(validate(raw)).run()
    assert second["status"] == "done" and second["stages"][1]["shards"]["total"] == 1
    assert sorted(p.name for p in synth_dir.rglob("*.parquet")) == [
        "part-00000-000.parquet"] * 3
    assert not (synth_dir / "_done" / "00001.json").exists()
