"""Object storage for real: input and run directory on s3://, against moto's S3 server on loopback.

s3fs finds the server through botocore's own setting, AWS_ENDPOINT_URL (Winnow passes no storage
options of its own; FSSPEC_S3_ENDPOINT_URL works as well). The Ray workers must see the same
environment, so the fixture makes sure the session's Ray was started after it was set.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import ROOT, SAMPLE

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BUCKET = "winnow-test"
INPUTS = ["cc-2020-34-resiliparse.warc.gz", "cc-2014-35-npm.warc"]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), a bucket, and the environment s3fs and botocore read."""
    import fsspec

    from tests.loopback_s3 import loopback_s3

    with loopback_s3():
        fs = fsspec.filesystem("s3")
        fs.mkdir(BUCKET)
        for name in INPUTS:
            fs.put(str(SAMPLE / name), f"{BUCKET}/in/{name}")
        yield fs



@pytest.fixture(scope="module")
def ray_s3(s3, request):
    """The session's Ray, with workers that see the S3 environment (restarted if it was started before)."""
    ray = request.getfixturevalue("ray_local")

    @ray.remote
    def endpoint() -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL")

    if ray.get(endpoint.remote()) != os.environ["AWS_ENDPOINT_URL"]:
        ray.shutdown()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    return ray


def quickstart(tmp_path: Path, output_dir: str, inputs: list[str], stages: int | None = None):
    """The quickstart config with this input and output_dir (and only its first `stages` stages)."""
    from pipeline.config import load_config

    raw = yaml.safe_load(QUICKSTART.read_text())
    if stages is not None:
        raw["stages"] = raw["stages"][:stages]
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_config(path, [f"output_dir={output_dir}", f"input={json.dumps(inputs)}"])


def read_output(fs, directory: str) -> pa.Table:
    files = sorted(p for p in fs.glob(f"{directory}/part-*.parquet"))
    tables = []
    for f in files:
        with fs.open(f, "rb") as handle:
            tables.append(pq.read_table(handle))
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.sort_by("id")


# -- writes ------------------------------------------------------------------------------------------------
def test_shard_writer_puts_the_final_key_once_and_an_aborted_upload_never_appears(s3, monkeypatch):
    """No temporary key and no copy (an S3 rename is a copy and a delete); an abort, even in the middle of a
    multipart upload, leaves no object and no pending upload."""
    from pipeline.jsonfile import read_json, write_json
    from pipeline.parquet_io import ShardWriter

    def no_rename(*args, **kwargs):
        raise AssertionError(f"a rename or copy on object storage: {args}")

    for name in ("mv", "copy", "rename", "cp_file"):
        monkeypatch.setattr(s3, name, no_rename)
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    prefix = f"{BUCKET}/writer/part-00000"
    writer = ShardWriter(s3, prefix, schema, target_shard_mb=64, row_group_mb=1)
    writer.write([{"id": str(i), "text": f"document {i} " * 50} for i in range(3000)])
    paths = writer.close()
    assert paths == [f"{prefix}-000.parquet"]
    assert sorted(s3.find(f"{BUCKET}/writer")) == paths  # nothing else: no .tmp
    with s3.open(paths[0], "rb") as f:
        assert pq.read_table(f).num_rows == 3000

    write_json(s3, f"{BUCKET}/writer/_done/00000.json", {"shard": "00000"})
    assert read_json(s3, f"{BUCKET}/writer/_done/00000.json") == {"shard": "00000"}

    # 5 MiB parts: incompressible text past one part starts a multipart upload before the abort.
    monkeypatch.setattr(s3, "default_block_size", 5 << 20)
    aborted = ShardWriter(s3, f"{BUCKET}/writer/part-00001", schema, target_shard_mb=64, row_group_mb=1)
    for i in range(14):
        aborted.write([{"id": f"{i}-{k}", "text": os.urandom(50_000).hex()} for k in range(10)])
    assert aborted.handle is not None and aborted.handle.mpu is not None, "no multipart upload was begun"
    aborted.abort()
    assert not s3.exists(f"{BUCKET}/writer/part-00001-000.parquet")
    assert not s3.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads")
    del aborted  # the garbage collector must not complete the upload either
    assert not s3.exists(f"{BUCKET}/writer/part-00001-000.parquet")


# -- the lock ----------------------------------------------------------------------------------------------
def test_lock_on_object_storage_refuses_a_second_run_and_takes_over_a_dead_one(s3, tmp_path, monkeypatch):
    from pipeline import runlock as runlock_module
    from pipeline.rundir import LOCK, RunDir, RunDirError
    from pipeline.runner import Runner
    from pipeline.status import run_status

    url = f"s3://{BUCKET}/locked"
    lock_key = f"{BUCKET}/locked/{LOCK}"
    monkeypatch.setattr(runlock_module, "HEARTBEAT_S", 0.2)
    first = RunDir(url)
    first.claim()
    first.lock()
    try:
        holder = json.loads(s3.cat_file(lock_key))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert first.in_use() and run_status(url) == "running"
        # A second claim, in this process or from a `winnow run`, is refused and names the holder.
        with pytest.raises(RunDirError, match=f"another `winnow run` is using it \\(pid {os.getpid()}"):
            RunDir(url).lock()
        cfg = quickstart(tmp_path, url, [f"s3://{BUCKET}/in/{INPUTS[0]}"])
        with pytest.raises(RunDirError, match="another `winnow run`"):
            Runner(cfg).run()
        # The heartbeat goes on while the run lasts.
        time.sleep(1.0)
        assert json.loads(s3.cat_file(lock_key))["heartbeat"] > holder["heartbeat"]
    finally:
        first.unlock()
    assert not s3.exists(lock_key) and not RunDir(url).in_use()

    def plant(**fields):
        record = {"pid": 1, "host": "elsewhere", "started_at": "then", "heartbeat": time.time(), "token": "x"}
        s3.pipe_file(lock_key, json.dumps(record | fields).encode())

    # Fresh, from another host: refused. Stale (no heartbeat for STALE_S): taken over.
    plant()
    with pytest.raises(RunDirError, match="pid 1 on elsewhere"):
        RunDir(url).lock()
    plant(heartbeat=time.time() - runlock_module.STALE_S - 1)
    taker = RunDir(url)
    taker.lock()
    assert json.loads(s3.cat_file(lock_key))["pid"] == os.getpid()
    taker.unlock()
    # Fresh, from a process of this host that has died: taken over at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    plant(pid=int(dead.stdout), host=socket.gethostname())
    taker = RunDir(url)
    taker.lock()
    taker.unlock()

    # Two runs that start together: the conditional PUT (If-None-Match) lets exactly one win.
    barrier, results = threading.Barrier(4), []

    def contend():
        rd = RunDir(url)
        barrier.wait()
        try:
            rd.lock()
            results.append(rd)
        except RunDirError:
            results.append(None)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [rd for rd in results if rd is not None]
    assert len(results) == 4 and len(winners) == 1
    winners[0].unlock()


def test_runs_that_take_over_a_stale_lock_together_have_exactly_one_winner(s3):
    """A crashed run left its lock record (heartbeat older than STALE_S), and several runs start at once. The
    takeover is one conditional PUT, If-Match on the ETag of the record judged stale: exactly one run wins,
    the others read its record and refuse, naming it. (Reading the holder, checking it again and then
    writing let two runs win in about one trial out of five.)"""
    from pipeline import runlock
    from pipeline.rundir import LOCK, RunDir, RunDirError

    url = f"s3://{BUCKET}/stale"
    key = f"{BUCKET}/stale/{LOCK}"
    RunDir(url).claim()
    crashed = {"pid": 1, "host": "elsewhere", "started_at": "then", "token": "crashed",
               "heartbeat": time.time() - runlock.STALE_S - 1}

    def contend(rd: RunDir, barrier: threading.Barrier, outcomes: list) -> None:
        barrier.wait()
        try:
            rd.lock()
            outcomes.append(rd)
        except RunDirError as exc:
            outcomes.append(str(exc))

    # Threads stand in for runs on several machines: switching between them every 0.1 ms rather than 5 ms
    # lets their requests interleave as those of separate processes do.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        for trial in range(24):
            s3.pipe_file(key, json.dumps(crashed).encode())
            barrier, outcomes = threading.Barrier(6), []
            threads = [threading.Thread(target=contend, args=(RunDir(url), barrier, outcomes)) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            winners = [o for o in outcomes if isinstance(o, RunDir)]
            for rd in winners[1:]:
                rd.unlock()
            assert len(outcomes) == 6 and len(winners) == 1, f"trial {trial}: {len(winners)} runs hold the lock"
            assert json.loads(s3.cat_file(key))["token"] == winners[0].owner().token
            refusals = [o for o in outcomes if isinstance(o, str)]
            assert all(f"another `winnow run` is using it (pid {os.getpid()}" in r for r in refusals), refusals
            winners[0].unlock()
            assert not s3.exists(key)
    finally:
        sys.setswitchinterval(switch)


def test_a_runs_owner_on_object_storage_ends_before_another_run_may_take_over(s3):
    """A task's check (pipeline/owner.py) on object storage: its token in the record, a heartbeat younger than
    half of STALE_S (another run may take over at STALE_S), and, on the driver's host, a live driver."""
    from pipeline import runlock
    from pipeline.owner import RunEnded, RunOwner
    from pipeline.rundir import LOCK, RunDir

    url = f"s3://{BUCKET}/owned"
    key = f"{BUCKET}/owned/{LOCK}"
    run = RunDir(url)
    run.claim()
    run.lock()
    owner = run.owner()
    owner.check()
    run.unlock()
    with pytest.raises(RunEnded, match="its lock is gone"):
        owner.check()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": "now", "token": "t",
              "heartbeat": time.time()}
    for fields, ended in [({}, None), ({"token": "other"}, "another `winnow run` holds the directory now"),
                          ({"pid": int(dead.stdout)}, "no live `winnow run` holds its lock"),
                          ({"host": "elsewhere", "heartbeat": time.time() - runlock.STALE_S / 2 - 1},
                           "no live `winnow run` holds its lock")]:
        s3.pipe_file(key, json.dumps(record | fields).encode())
        if ended is None:
            RunOwner(url, "t").check()
        else:
            with pytest.raises(RunEnded, match=ended):
                RunOwner(url, "t").check()
    s3.rm(key)


def _rewriting(s3, key: str, stop: threading.Event, token: str = "writer") -> threading.Thread:
    """A thread that rewrites the record at `key` as fast as it can (each version a different size) until
    `stop` is set, as a run's heartbeat does every HEARTBEAT_S."""
    from pipeline.jsonfile import write_json

    def rewrite():
        n = 0
        while not stop.is_set():
            n += 1
            write_json(s3, key, {"pid": 1, "host": "elsewhere", "started_at": "then", "heartbeat": time.time(),
                                 "token": token, "pad": "x" * (n % 40)})

    thread = threading.Thread(target=rewrite, daemon=True)
    thread.start()
    return thread


def test_a_record_rewritten_while_it_is_read_is_never_taken_for_missing(s3):
    """Three outcomes: the record, None for none, RecordError for something that is not a record. A rewrite
    during the read is none of them; s3fs's FileExpired (what a HEAD-then-GET read meets) is a retry."""
    from pipeline.jsonfile import RecordError, read_json, rewritten_while_read

    key = f"{BUCKET}/records/rewritten.json"
    stop = threading.Event()
    writer = _rewriting(s3, key, stop)
    try:
        while not s3.exists(key):
            time.sleep(0.01)
        outcomes = [read_json(s3, key) for _ in range(150)]
        # What a reader that opens the object first meets: its GET asks for the version its HEAD saw.
        expired = []
        for _ in range(50):
            try:
                with s3.open(key, "rb") as f:
                    time.sleep(0.02)
                    f.read()
            except OSError as exc:
                expired.append(exc)
    finally:
        stop.set()
        writer.join()
    assert all(isinstance(o, dict) and o["token"] == "writer" for o in outcomes), outcomes
    assert expired and all(rewritten_while_read(exc) for exc in expired), expired

    assert read_json(s3, f"{BUCKET}/records/none.json") is None
    s3.pipe_file(f"{BUCKET}/records/damaged.json", b'{"token": "wri')
    with pytest.raises(RecordError, match=f"{BUCKET}/records/damaged.json: not a JSON record"):
        read_json(s3, f"{BUCKET}/records/damaged.json")


def test_a_lock_whose_record_is_being_rewritten_or_cannot_be_read_is_held(s3):
    from pipeline.rundir import LOCK, RunDir, RunDirError

    url = f"s3://{BUCKET}/busy"
    key = f"{BUCKET}/busy/{LOCK}"
    RunDir(url).claim()
    stop = threading.Event()
    writer = _rewriting(s3, key, stop)  # a live run on another host, its heartbeat beating fast
    try:
        while not s3.exists(key):
            time.sleep(0.01)
        for _ in range(30):
            assert RunDir(url).in_use()
            with pytest.raises(RunDirError, match="pid 1 on elsewhere"):
                RunDir(url).lock()
    finally:
        stop.set()
        writer.join()
    assert json.loads(s3.cat_file(key))["token"] == "writer"  # never deleted, never taken over

    s3.pipe_file(key, b"\x00 not a lock")
    assert RunDir(url).in_use()
    with pytest.raises(RunDirError, match=f"{LOCK} is there but cannot be read.*delete s3://{key}"):
        RunDir(url).lock()
    assert s3.cat_file(key) == b"\x00 not a lock"
    s3.rm(key)


def test_a_run_whose_heartbeat_finds_another_owner_stops(s3, ray_s3, tmp_path, monkeypatch, capsys):
    from pipeline import runlock as runlock_module
    from pipeline.cli import main
    from pipeline.rundir import LOCK, RunDir, RunDirError

    monkeypatch.setattr(runlock_module, "HEARTBEAT_S", 0.05)
    url = f"s3://{BUCKET}/taken"
    key = f"{BUCKET}/taken/{LOCK}"
    other = {"pid": 1, "host": "elsewhere", "started_at": "now", "heartbeat": time.time(), "token": "other"}

    held = RunDir(url)
    held.claim()
    held.lock()
    s3.pipe_file(key, json.dumps(other).encode())  # another run took the directory (a racing takeover)
    deadline = time.time() + 10
    while held._lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(RunDirError, match="lost its lock to another `winnow run` \\(pid 1 on elsewhere"):
        held.check_lock()
    held.unlock()
    assert json.loads(s3.cat_file(key))["token"] == "other"  # the other run's record stays
    s3.rm(key)

    # A whole run: the takeover happens as soon as its lock appears; the run stops with an error.
    cfg = quickstart(tmp_path, url, [f"s3://{BUCKET}/in/{INPUTS[0]}"], stages=1)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    def take_over():
        while not s3.exists(key):
            time.sleep(0.01)
        s3.pipe_file(key, json.dumps(other).encode())

    thief = threading.Thread(target=take_over, daemon=True)
    thief.start()
    assert main(["run", str(config)]) == 2
    thief.join()
    assert "lost its lock to another `winnow run`" in capsys.readouterr().err
    assert json.loads(s3.cat_file(key))["token"] == "other"
    s3.rm(key)


# -- input identity ----------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_input_identity_on_s3_is_the_etag(s3, ray_s3, tmp_path):
    """The same bytes uploaded again (a new LastModified) reuse the shard; other bytes of the same size
    (a new ETag) recompute it."""
    from pipeline.runner import Runner

    key = f"{BUCKET}/etag/in.warc"
    original = (SAMPLE / "cc-2014-35-npm.warc").read_bytes()
    s3.pipe_file(key, original)
    cfg = quickstart(tmp_path, f"s3://{BUCKET}/etag/run", [f"s3://{key}"], stages=1)

    first = Runner(cfg).run()
    assert first["status"] == "done" and first["stages"][0]["shards"]["computed"] == 1
    record = json.loads(s3.cat_file(f"{BUCKET}/etag/run/stages/00_extract/_done/00000.json"))
    assert record["input_id"] == f"ETag:{s3.info(key)['ETag'].strip(chr(34))}:{len(original)}"

    time.sleep(1.1)  # a later LastModified
    s3.pipe_file(key, original)
    again = Runner(cfg).run()
    assert again["stages"][0]["shards"] == {"total": 1, "done": 1, "reused": 1, "computed": 0, "failed": 0}

    changed = original.replace(b" the ", b" THE ", 1)
    assert len(changed) == len(original) and changed != original
    s3.pipe_file(key, changed)
    third = Runner(cfg).run()
    assert third["status"] == "done"
    assert third["stages"][0]["shards"]["computed"] == 1

    # `winnow status` and the report read the s3:// run directory and write there (the slow test does the same
    # for the whole quickstart).
    from pipeline.cli import main
    from pipeline.report import write_report

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", f"s3://{BUCKET}/etag/run"]) == 0
    assert "00_extract" in out.getvalue() and "run: done" in out.getvalue()
    assert write_report(f"s3://{BUCKET}/etag/run") == f"s3://{BUCKET}/etag/run/report.html"
    assert s3.cat_file(f"{BUCKET}/etag/run/report.html").startswith(b"<!")
    assert s3.exists(f"{BUCKET}/etag/run/output/README.md")
    # The run directory alone is enough to rerun it: its run.yaml is read from the bucket.
    with redirect_stdout(io.StringIO()):
        assert main(["run", f"s3://{BUCKET}/etag/run", "--retry-failed"]) == 0  # nothing failed
        assert main(["run", f"s3://{BUCKET}/etag/run"]) == 0
    manifest = json.loads(s3.cat_file(f"{BUCKET}/etag/run/manifest.json"))
    assert manifest["stages"][0]["shards"]["reused"] == 1


# -- the whole quickstart ----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quickstart_on_s3_equals_the_local_run_and_reruns_reuse_everything(s3, ray_s3, tmp_path):
    from pipeline.cli import main
    from pipeline.report import write_report
    from pipeline.runner import Runner

    url = f"s3://{BUCKET}/quickstart"
    remote = Runner(quickstart(tmp_path, url, [f"s3://{BUCKET}/in/{n}" for n in INPUTS])).run()
    assert remote["status"] == "done", remote
    local_dir = tmp_path / "local"
    local = Runner(quickstart(tmp_path, str(local_dir), [str(SAMPLE / n) for n in INPUTS])).run()
    assert local["status"] == "done"

    # The same documents, kept and rejected, at every stage: only the input's address differs.
    assert [(s["name"], s["rows_in"], s["rows_out"], s["drop_reasons"]) for s in remote["stages"]] == \
        [(s["name"], s["rows_in"], s["rows_out"], s["drop_reasons"]) for s in local["stages"]]
    ours = read_output(s3, f"{BUCKET}/quickstart/output")
    theirs = read_output(fsspec_local(), str(local_dir / "output"))
    assert ours.num_rows == theirs.num_rows > 0
    assert ours["id"].to_pylist() == theirs["id"].to_pylist()
    same = [c for c in theirs.column_names if c != "source_file"]
    assert ours.select(same).equals(theirs.select(same))
    assert all(f.startswith(f"s3://{BUCKET}/in/") for f in ours["source_file"].to_pylist())
    assert not [k for k in s3.find(f"{BUCKET}/quickstart") if k.endswith(".tmp")]

    # The run directory on S3 has what a local one has: card, log, instructions. The card's funnel
    # (documents in and out of each stage) is the local run's, and it counts the rows written.
    card = s3.cat_file(f"{BUCKET}/quickstart/output/README.md").decode()
    local_card = (local_dir / "output" / "README.md").read_text()

    def funnel(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| ") and line.split(" | ")[3:4]
                and line.split(" | ")[3].endswith("%")]

    assert funnel(card) == funnel(local_card) and len(funnel(card)) >= 3
    assert f"{ours.num_rows:,} documents" in card
    log_text = s3.cat_file(f"{BUCKET}/quickstart/logs/run.log").decode()
    assert "stage extract: 2 shards computed" in log_text
    assert s3.glob(f"{BUCKET}/quickstart/instructions/part-*.parquet")

    # A rerun reuses every shard of every stage and recomputes nothing.
    started = time.perf_counter()
    rerun = Runner(quickstart(tmp_path, url, [f"s3://{BUCKET}/in/{n}" for n in INPUTS])).run()
    assert rerun["status"] == "done"
    for stage in rerun["stages"]:
        assert stage["shards"]["computed"] == 0 and stage["shards"]["reused"] == stage["shards"]["total"], stage
    assert time.perf_counter() - started < 60
    assert s3.cat_file(f"{BUCKET}/quickstart/logs/run.log").decode().startswith(log_text)

    # `winnow status` and `winnow report` on the s3:// run directory.
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["status", url]) == 0
    table = out.getvalue()
    assert "00_extract" in table and "06_synth" in table and "run: done" in table
    path = write_report(url)
    assert path == f"{url}/report.html"
    page = s3.cat_file(f"{BUCKET}/quickstart/report.html").decode()
    assert page.startswith("<!") and "extract" in page


def fsspec_local():
    import fsspec

    return fsspec.filesystem("file")


def test_a_versioned_read_that_breaks_off_is_an_oserror_naming_the_record():
    """A connection dropped mid-body is an OSError, as every caller of a record read expects (the owner
    check tries again later), not botocore's or aiohttp's own exception type."""
    import s3fs

    from pipeline.jsonfile import read_json_versioned

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer_short() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\nETag: "v1"\r\n\r\n{"tok')

    thread = threading.Thread(target=answer_short, daemon=True)
    thread.start()
    fs = s3fs.S3FileSystem(key="k", secret="s", endpoint_url=f"http://127.0.0.1:{server.getsockname()[1]}",
                           skip_instance_cache=True, config_kwargs={"retries": {"max_attempts": 1}})
    try:
        with pytest.raises(OSError, match="bucket/lock.json: the read broke off"):
            read_json_versioned(fs, "bucket/lock.json")
    finally:
        stop.set()
        thread.join()
        server.close()
