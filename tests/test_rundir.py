"""The run directory: Winnow deletes only what it wrote, one run at a time, and every write failure
is a message naming the path, never a traceback or a half-written file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.rundir import RunDir, RunDirError
from pipeline.runner import Runner
from pipeline.status import run_status, stage_rows
from tests.conftest import OUTPUT_EXTRAS, ROOT, SAMPLE

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ONE_INPUT = str(SAMPLE / "wget-2024-dolma-0000.warc.gz")


def _config_file(tmp_path: Path, out: Path, inputs: list[str] | None = None, extra: dict | None = None) -> Path:
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(input=inputs or [ONE_INPUT], output_dir=str(out), **(extra or {}))
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _no_temporary_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_a_directory_that_is_not_a_run_is_refused_and_left_alone(tmp_path):
    d = tmp_path / "d"
    (d / "output").mkdir(parents=True)
    (d / "stages" / "notes").mkdir(parents=True)
    (d / "output" / "important.txt").write_text("x")
    cfg = load_config(QUICKSTART, [f"output_dir={d}", f"input={ONE_INPUT}"])
    with pytest.raises(RunDirError, match="not empty and not a Winnow run directory"):
        Runner(cfg).run()
    assert (d / "output" / "important.txt").read_text() == "x" and (d / "stages" / "notes").is_dir()
    assert sorted(p.name for p in d.iterdir()) == ["output", "stages"]


def test_in_a_run_directory_only_winnows_files_are_removed(ray_local, tmp_path):
    out = tmp_path / "run"
    Runner(load_config(QUICKSTART, [f"output_dir={out}", f"input={ONE_INPUT}"])).run()
    (out / "output" / "important.txt").write_text("mine")
    (out / "stages" / "notes").mkdir()
    (out / "stages" / "notes" / "n.txt").write_text("mine too")
    # Fewer stages and a changed one: stale stage directories and the old output go, the notes stay.
    manifest = Runner(load_config(QUICKSTART, [f"output_dir={out}", f"input={ONE_INPUT}",
                                               "stages.heuristics.steps.gopher_quality.min_doc_words=60"])).run()
    assert manifest["status"] == "done"
    assert (out / "output" / "important.txt").read_text() == "mine"
    assert (out / "stages" / "notes" / "n.txt").read_text() == "mine too"
    published = json.loads((out / "output" / "_source.json").read_text())["files"]
    assert sorted(p.name for p in (out / "output").glob("part-*.parquet")) == sorted(published)


def test_a_file_where_the_directory_should_be_and_an_unwritable_place(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for target, expected in ((afile, "is a file, not a directory"), (Path("/proc/winnow-run"), "cannot be used")):
        code = main(["run", str(_config_file(tmp_path, target if target != afile else tmp_path / "x")),
                     "--set", f"output_dir={target}"])
        err = capsys.readouterr().err
        assert code == 2 and expected in err and str(target) in err and "Traceback" not in err


def test_a_second_run_is_refused_while_the_first_holds_the_lock_and_a_dead_holder_frees_it(tmp_path):
    out = tmp_path / "run"
    RunDir(str(out)).claim()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pipeline.rundir import RunDir; "
                               f"run = RunDir({str(out)!r}); run.lock(); print('locked', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert RunDir(str(out)).in_use()
        with pytest.raises(RunDirError, match=f"another `winnow run` is using it \\(pid {holder.pid} "):
            RunDir(str(out)).lock()
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash, not a clean exit: the kernel drops the lock
        holder.wait()
    second = RunDir(str(out))
    second.lock()
    second.unlock()
    assert not RunDir(str(out)).in_use()


def test_a_runs_owner_ends_when_its_driver_dies_or_another_run_holds_the_directory(tmp_path):
    """What a task checks (pipeline/owner.py): the lock names its run's token and a live run holds it."""
    import threading

    from pipeline.owner import RunEnded, RunOwner

    out = tmp_path / "run"
    RunDir(str(out)).claim()
    driver = subprocess.Popen([sys.executable, "-c", "import time; from pipeline.rundir import RunDir; "
                               f"run = RunDir({str(out)!r}); run.lock(); print(run.owner().token, flush=True); "
                               "time.sleep(60)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        owner = RunOwner(str(out), driver.stdout.readline().strip())
        owner.check()  # the driver lives
        with pytest.raises(RunEnded, match="another `winnow run` holds the directory now"):
            RunOwner(str(out), "another-token").check()
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with pytest.raises(RunEnded, match="no live `winnow run` holds its lock any more: the run was killed"):
        owner.check()

    # A new run takes the directory, even while tasks check their owners a thousand times a second (a check
    # holds the lock shared for an instant); the killed run's tasks learn that another run holds it.
    stop, checks = threading.Event(), []

    def check_forever():
        while not stop.wait(0.001):
            try:
                owner.check()
            except RunEnded as exc:
                checks.append(str(exc))

    checkers = [threading.Thread(target=check_forever) for _ in range(2)]
    for t in checkers:
        t.start()
    try:
        for _ in range(300):
            new = RunDir(str(out))
            new.lock()
            RunOwner(str(out), new.owner().token).check()
            new.unlock()
    finally:
        stop.set()
        for t in checkers:
            t.join()
    assert checks and all("the run this task works for has ended" in c for c in checks)
    new = RunDir(str(out))
    new.lock()
    with pytest.raises(RunEnded, match="another `winnow run` holds the directory now"):
        owner.check()
    new.unlock()


def test_a_store_without_conditional_writes_is_refused_for_the_lock():
    url = "memory://winnow-unconditional/run"
    RunDir(url).claim()
    with pytest.raises(RunDirError, match=r"written only conditionally.*\(If-None-Match\).*not on memory://"):
        RunDir(url).lock()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: a real full disk (needs root, as in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_names_the_path_leaves_no_temporary_files_and_resumes(ray_local, tmp_path, small_disk, capsys):
    inputs = [str(SAMPLE / "wget-2024-dolma-000*.warc.gz"), str(SAMPLE / "archiveit-2008-aut.warc.gz")]
    out = small_disk / "run"
    code = main(["run", str(_config_file(tmp_path, out, inputs))])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert str(small_disk) in err
    assert _no_temporary_files(small_disk)

    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    assert main(["run", str(_config_file(tmp_path, out, inputs))]) == 0
    reference = tmp_path / "reference"
    assert main(["run", str(_config_file(tmp_path, reference, inputs))]) == 0
    table = pq.read_table(out / "output", ignore_prefixes=OUTPUT_EXTRAS)
    assert table.equals(pq.read_table(reference / "output", ignore_prefixes=OUTPUT_EXTRAS))
    assert _no_temporary_files(small_disk)


@pytest.mark.slow
def test_ctrl_c_records_the_interruption_and_status_shows_what_is_on_disk(tmp_path):
    out = tmp_path / "run"
    inputs = [str(SAMPLE / "*.warc*")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(_config_file(tmp_path, out, inputs)),
                             "--set", "ray.num_cpus=1"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    done_dir = out / "stages" / "00_extract" / "_done"
    deadline = time.time() + 180
    while time.time() < deadline and not list(done_dir.glob("*.json")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert run_status(str(out)) == "interrupted"
    extract = stage_rows(str(out))[0]
    assert extract["status"] in ("started", "done") and not extract["shards"].startswith("0/")
    assert main(["run", str(_config_file(tmp_path, out, inputs)), "--set", "ray.num_cpus=1"]) == 0


def test_status_of_a_killed_run_says_so(tmp_path):
    out = tmp_path / "run"
    RunDir(str(out)).claim()
    (out / "run.yaml").write_text(yaml.safe_dump({"stages": [{"name": "extract"}]}))
    (out / "manifest.json").write_text(json.dumps({"status": "running", "stages": []}))
    done = out / "stages" / "00_extract" / "_done"
    done.mkdir(parents=True)
    (out / "stages" / "00_extract" / "_stage.json").write_text(json.dumps({"fingerprint": "f1"}))
    (done / "00000.json").write_text(json.dumps({"fingerprint": "f1"}))
    assert run_status(str(out)).startswith("stopped")
    assert stage_rows(str(out))[0] == {"stage": "00_extract", "status": "started", "shards": "1/?",
                                       "fingerprint": "f1"}


def test_losing_the_progress_actor_does_not_stop_the_run(ray_local):
    import ray

    from pipeline.progress import LiveCount

    live = LiveCount.start()
    live.actor.add.remote(5)
    assert live.total() == 5
    ray.kill(live.actor)  # asynchronous: the actor may still answer once or twice
    deadline = time.time() + 30
    while live.actor is not None and time.time() < deadline:
        assert live.total() == 5
        time.sleep(0.05)
    assert live.total() == 5 and live.actor is None  # the last count stays; the bar goes on without it
    live.stop()


@pytest.mark.parametrize("entry", ["../../victim.txt", "sub/../../../victim.txt", "linked/victim.txt"])
def test_a_tampered_source_list_never_deletes_outside_the_run_directory(tmp_path, entry):
    """output/_source.json lives on shared storage: whatever it names, nothing outside the folder goes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("a user's file")
    run = RunDir(str(tmp_path / "run"))
    output = run.output
    source = tmp_path / "part-0.parquet"
    source.write_text("shard")
    assert run.replace_published(output, {"part-0.parquet": str(source)}, {"fingerprint": "a"})
    (Path(output) / "linked").symlink_to(tmp_path)  # a folder inside that is really outside
    marker = Path(output) / "_source.json"
    state = json.loads(marker.read_text())
    marker.write_text(json.dumps({**state, "files": [*state["files"], entry]}))
    with pytest.raises(RunDirError, match="outside") as error:
        run.replace_published(output, {"part-0.parquet": str(source)}, {"fingerprint": "b"})
    assert "_source.json" in str(error.value) and victim.read_text() == "a user's file"
    assert (Path(output) / "part-0.parquet").exists()  # nothing was deleted before the check


def test_a_run_directory_given_from_another_working_directory_is_the_run_it_resumes(ray_local, tmp_path, monkeypatch,
                                                                                    capsys):
    """A relative output_dir means the directory the run started in; run.yaml records it absolutely, and
    `winnow run RUN_DIR` from anywhere continues RUN_DIR itself."""
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir()
    elsewhere.mkdir()
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw.update(input=[ONE_INPUT], output_dir="runs/x")
    (first / "run.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(first)
    assert main(["run", "run.yaml"]) == 0
    run_dir = first / "runs" / "x"
    assert yaml.safe_load((run_dir / "run.yaml").read_text())["output_dir"] == str(run_dir)
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(run_dir)]) == 0
    assert main(["run", str(run_dir), "--retry-failed"]) == 0
    assert f"no failed shards in {run_dir}" in capsys.readouterr().out
    assert not list(elsewhere.iterdir())  # nothing was built here
    # An older run.yaml with a relative output_dir: the directory given still wins.
    (run_dir / "run.yaml").write_text((run_dir / "run.yaml").read_text().replace(str(run_dir), "runs/x"))
    assert main(["run", str(run_dir)]) == 0 and not list(elsewhere.iterdir())
