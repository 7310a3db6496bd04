"""A synth task whose run has ended stops: it sends no more requests and writes nothing, and a shard's LLM
cache has one writer at a time. A real local Ray runs the tasks, a real loopback endpoint answers
(tests/fake_llm_server.py), and the run's lock is held by a real driver process that is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmclient.cache import CacheBusy, RequestCache
from pipeline.kinds.synth import SynthKind, synth_shard_task
from pipeline.owner import RunEnded, RunOwner
from pipeline.rundir import RunDir
from pipeline.stagedir import run_shard
from pipeline.synth.params import SynthParams
from pipeline.synth.recipes import RecipeConfig
from tests.conftest import ROOT
from tests.fake_llm_server import ServerThread
from tests.test_synth_qc import real_docs

LATENCY_S = 0.3  # 15 documents x 3 samples, 2 at a time: about 7 s of requests for a whole shard


def driver(out: Path) -> tuple[subprocess.Popen, RunOwner]:
    """A process that holds the run directory's lock, as `winnow run` does, and the owner its tasks get."""
    process = subprocess.Popen([sys.executable, "-c", "import time; from pipeline.rundir import RunDir; "
                                f"run = RunDir({str(out)!r}); run.claim(); run.lock(); "
                                "print(run.owner().token, flush=True); time.sleep(120)"],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    token = process.stdout.readline().strip()
    assert token, "the driver could not lock the run directory"
    return process, RunOwner(str(out), token)


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)  # a crash: the kernel frees the lock at once
    process.wait()


def claimed_stage(tmp_path: Path):
    run = RunDir(str(tmp_path / "run"))
    run.claim()
    stagedir = run.stage(1, "synth", SynthKind.folders)
    stagedir.prepare("fp", {"name": "synth"})
    return stagedir


def shard_args(tmp_path: Path, url: str, owner: RunOwner) -> tuple:
    params = SynthParams(generator="llm", endpoint=url, model="fake", concurrency=2, n=3, batch_docs=64,
                         recipes=[RecipeConfig(name="paragraph_qa")])
    return (params.model_dump_json(), "00000", str(tmp_path / "part-00000.parquet"), "in-id", "fp",
            str(tmp_path / "run" / "cache" / "llm" / "synth"), None, owner)


def wait_for(condition, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_synth_task_stops_calling_the_endpoint_within_seconds_of_its_driver_dying(ray_local, tmp_path):
    real_docs(tmp_path)
    stagedir = claimed_stage(tmp_path)
    process, owner = driver(tmp_path / "run")
    with ServerThread(latency_s=LATENCY_S) as server:
        params_json, shard, *rest = shard_args(tmp_path, server.url, owner)
        task = ray_local.remote(run_shard).remote(stagedir, shard, synth_shard_task, params_json, stagedir, shard,
                                                  *rest)
        wait_for(lambda: server.stats()["answered"] >= 4)
        kill(process)
        killed = time.monotonic()
        with pytest.raises(RunEnded, match="no live `winnow run` holds its lock any more"):
            ray_local.get(task, timeout=60)
        stopped_s = time.monotonic() - killed
        sent = server.stats()["requests"]
        time.sleep(1.0)
        assert server.stats()["requests"] == sent, "requests went on after the task ended"
    assert stopped_s < 5, f"the task went on for {stopped_s:.1f} s after its driver died"
    assert sent < 45  # it did not run the shard to its end
    assert stagedir.done("fp") == {} and not stagedir.parts("instructions")  # nothing written for the dead run


def test_a_task_of_a_killed_run_and_the_new_runs_task_never_write_one_shard_together(ray_local, tmp_path):
    """The new run starts the moment the old driver dies, while the old task still runs: the new task waits
    for the shard's cache (one writer at a time) until the old task has stopped, then reuses every answer it
    stored and completes the shard alone."""
    real_docs(tmp_path)
    stagedir = claimed_stage(tmp_path)
    old_driver, old_owner = driver(tmp_path / "run")

    @ray_local.remote
    def warm_up() -> None:
        import pipeline.synth.shard  # noqa: F401
        time.sleep(0.5)

    ray_local.get([warm_up.remote(), warm_up.remote()])  # two workers ready: the new task starts at once
    with ServerThread(latency_s=LATENCY_S) as server:
        params_json, shard, *rest = shard_args(tmp_path, server.url, old_owner)
        old = ray_local.remote(run_shard).remote(stagedir, shard, synth_shard_task, params_json, stagedir, shard,
                                                 *rest)
        wait_for(lambda: server.stats()["answered"] >= 4)
        kill(old_driver)
        new_driver, new_owner = driver(tmp_path / "run")
        try:
            params_json, shard, *rest = shard_args(tmp_path, server.url, new_owner)
            new = ray_local.remote(run_shard).remote(stagedir, shard, synth_shard_task, params_json, stagedir,
                                                     shard, *rest)
            with pytest.raises(RunEnded, match="another `winnow run` holds the directory now"):
                ray_local.get(old, timeout=60)
            record = ray_local.get(new, timeout=120)
        finally:
            kill(new_driver)
        twice = server.stats()["answered_twice"]
    cache = tmp_path / "run" / "cache" / "llm" / "synth" / shard
    writers = sorted(cache.glob("*.jsonl"))  # one file per writer, named by when it began writing
    assert len(writers) == 2
    old_file, new_file = writers
    old_answers = old_file.read_bytes().count(b"\n")
    # The new writer began only after the old one's last write, and loaded every answer the old one stored.
    assert old_file.stat().st_mtime_ns <= int(new_file.name.split("-", 1)[0])
    assert record["synth"]["cache_hits"] == old_answers > 0
    assert record["synth"]["completed"] + old_answers == 45 and RequestCache(str(cache.parent), shard).torn == 0
    assert twice <= 2  # at most the requests the old task had in flight when it stopped (concurrency 2)
    assert set(stagedir.done("fp")) == {shard} and stagedir.done("fp")[shard] == record


def test_the_synth_stage_hands_each_task_its_runs_owner(tmp_path):
    from pipeline.config import SynthStage
    from pipeline.kinds.base import StageContext

    run = RunDir(str(tmp_path / "run"))
    run.claim()
    run.lock()
    stage = SynthStage(name="synth", kind="synth", synth={
        "generator": "llm", "endpoint": "http://127.0.0.1:9/v1", "model": "fake", "rate_limiter": "local",
        "recipes": [{"name": "paragraph_qa"}]})
    ctx = StageContext(run, 1, stage, run.stage(1, "synth", SynthKind.folders), "fp", {"00000": "in.parquet"},
                       {"00000": "in-id"})
    owner = SynthKind().shard_calls(ctx).args("00000")[-1]
    assert owner == run.owner()
    owner.check()
    run.unlock()  # the run is over: a task of it still running stops
    with pytest.raises(RunEnded, match="no live `winnow run` holds its lock"):
        owner.check()


def test_one_writer_at_a_time_holds_a_shards_cache(tmp_path):
    """On local disk a cache with an owner takes the shard's writer lock; a second writer waits for it, then
    loads everything the first stored, or gives up naming the holder."""
    run = RunDir(str(tmp_path / "run"))
    run.claim()
    run.lock()
    owner = run.owner().check
    first = RequestCache(str(tmp_path / "cache"), "s0", owner=owner)
    first.put("k1", {"status": "ok", "text": "one"})
    with pytest.raises(CacheBusy, match=r"another writer holds it \(pid \d+ on .*\) after 0.2 s"):
        RequestCache(str(tmp_path / "cache"), "s0", owner=owner, lock_wait_s=0.2)
    opened = []
    second = threading.Thread(target=lambda: opened.append(RequestCache(str(tmp_path / "cache"), "s0", owner=owner)))
    second.start()
    time.sleep(0.3)
    first.put("k2", {"status": "ok", "text": "two"})  # still the only writer
    assert not opened
    first.close()
    second.join(10)
    assert opened and opened[0].get("k1")["text"] == "one" and opened[0].get("k2")["text"] == "two"
    opened[0].close()
    run.unlock()


@pytest.mark.slow
def test_killing_winnow_run_stops_its_synth_tasks_within_seconds(tmp_path):
    """The whole thing: `winnow run` on its own local Ray, killed while its synth shard asks the endpoint.
    Ray takes a while to kill the job's workers; the task stops by itself within seconds."""
    import json
    import os

    import yaml

    from tests.test_decont import WIKI, wiki_warc

    articles = [a[:2500] for a in WIKI.read_text().splitlines()[:6]]
    wiki_warc(tmp_path / "wiki.warc.gz", articles)
    with ServerThread(latency_s=LATENCY_S) as server:
        synth = {"generator": "llm", "endpoint": server.url, "model": "fake", "concurrency": 2, "n": 20,
                 "recipes": [{"name": "paragraph_qa"}]}  # 6 pages x 20 samples: 18 s of requests
        config = {"input": [str(tmp_path / "wiki.warc.gz")], "output_dir": str(tmp_path / "run"),
                  "ray": {"num_cpus": 2}, "stages": [{"name": "extract", "steps": [{"type": "extract"}]},
                                                     {"name": "synth", "kind": "synth", "synth": synth}]}
        (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
        run = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(tmp_path / "run.yaml")], cwd=ROOT,
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: server.stats()["answered"] >= 4, timeout_s=300)
            os.kill(run.pid, signal.SIGKILL)  # the driver only: its Ray and the task go on for now
            run.wait()
            killed = last_change = time.monotonic()
            sent = server.stats()["requests"]
            while time.monotonic() - last_change < 3 and time.monotonic() - killed < 60:
                time.sleep(0.05)
                if server.stats()["requests"] != sent:
                    sent, last_change = server.stats()["requests"], time.monotonic()
        finally:
            os.killpg(run.pid, signal.SIGKILL)  # whatever is left of the killed run's Ray
    assert last_change - killed < 5, f"requests went on for {last_change - killed:.1f} s after the driver died"
    assert sent < 120 and not RunDir(str(tmp_path / "run")).in_use()
    cache = tmp_path / "run" / "cache" / "llm" / "synth" / "00000"
    stored = [json.loads(line) for f in cache.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert len(stored) >= 4  # what came back before it stopped is kept for the next run
