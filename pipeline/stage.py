"""One shard of one map stage: read, run the step chain batch by batch, write, return the record.

This is the compute of a shard task (`StageDir.run`, which clears what an earlier attempt left
before it and writes the returned completion record after it). It streams: at most one batch of
documents plus one row group per writer is in memory, whatever the size of the shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import islice
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from filters import STEPS, Doc, Step
from filters.warc import READER_COLUMNS, WarcReaderParams, read_warc
from pipeline.cputime import Costs
from pipeline.parquet_io import ShardWriter, iter_parquet, writer_for
from pipeline.schema import DOC_COLUMNS
from pipeline.stagedir import REJECTED, StageDir, node_id
from pipeline.writer_params import WriterConfig

log = logging.getLogger("winnow.stage")


@dataclass(frozen=True)
class ShardJob:
    stage_name: str
    stage_json: str  # the stage's resolved config, as JSON (hashable, cheap to ship)
    stagedir: StageDir
    shard: str
    input_path: str
    first_stage: bool
    fingerprint: str
    input_id: str = ""  # the identity of the input (runner.input_identity); recorded for reruns
    progress: Any = None  # a ProgressCounter actor: live document counts for the driver's bar
    log_path: str = ""  # a local file for this shard's log lines (RUN_DIR/logs/<stage>/<shard>.log); "": none


class MessageCollector(logging.Handler):
    """Keeps a shard's warnings for its completion record (and so for the driver's run.log)."""

    def __init__(self, limit: int = 100):
        super().__init__(logging.WARNING)
        self.limit, self.count, self.messages = limit, 0, []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < self.limit:
            self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@lru_cache(maxsize=8)
def build_steps(stage_json: str) -> list[Step]:
    """Steps are built once per worker process and stage: models and lists load once."""
    stage = json.loads(stage_json)
    return [STEPS[s["type"]](STEPS[s["type"]].Params(**s)) for s in stage["steps"]]


def stage_columns(job: ShardJob, steps: list[Step]) -> dict[str, pa.DataType]:
    if job.first_stage:
        columns = dict(READER_COLUMNS) | {"text": DOC_COLUMNS["text"]}
    else:
        with fsspec.open(job.input_path, "rb") as f:
            columns = {field.name: field.type for field in pq.read_schema(f)}
    for step in steps:
        columns |= step.output_columns
    return columns


def _batched(docs: Iterator[Doc], size: int) -> Iterator[list[Doc]]:
    while batch := list(islice(docs, size)):
        yield batch


def _shard_pass(job: ShardJob, stage: dict[str, Any], steps: list[Step]) -> None:
    """A step that cuts at a share of its own shard (quality's `top_fraction`) sees the shard once before the
    real pass: the steps before it run on the way, and their counts start again afterwards."""
    for i, step in enumerate(steps):
        if not getattr(step, "needs_shard_pass", False):
            continue
        if job.first_stage:
            docs = read_warc(job.input_path, WarcReaderParams(**stage["reader"]), Counter())
            batches = _batched(docs, stage["batch_size"])
        else:
            batches = iter_parquet(job.input_path, stage["batch_size"])
        step.prepare_shard(_live_after(batches, steps[:i]))
        for before in steps[:i]:
            before.start_shard()


def _live_after(batches: Iterator[list[Doc]], steps: list[Step]) -> Iterator[list[Doc]]:
    for batch in batches:
        for step in steps:
            step(batch)
        yield [d for d in batch if d.get("drop_reason") is None]


class TaskLogHandler(logging.FileHandler):
    """A task's log file, best effort: when the disk cannot take a line (it is full, as the task is about to
    report), the handler falls silent instead of printing logging's own traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.setLevel(logging.CRITICAL + 1)


@contextmanager
def shard_log(path: str, shard: str, input_path: str) -> Iterator[None]:
    """Append the task's log lines to `path` as they happen: a task that dies leaves what it got to."""
    if not path:
        yield
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler: logging.Handler = TaskLogHandler(path)
    except OSError:  # a full or read-only disk: the shard's own error says so, the log is a convenience
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("winnow")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    log.info("shard %s: started on %s (pid %d), input %s", shard, node_id() or "this machine", os.getpid(),
             input_path)
    try:
        yield
        log.info("shard %s: done", shard)
    except BaseException as exc:
        log.error("shard %s: failed: %s: %s", shard, type(exc).__name__, exc)
        raise
    finally:
        logger.removeHandler(handler)
        handler.close()


def map_shard(job: ShardJob) -> dict[str, Any]:
    """Compute one shard of a map stage; return its completion record."""
    collector = MessageCollector()
    logger = logging.getLogger("winnow")
    logger.addHandler(collector)
    try:
        with shard_log(job.log_path, job.shard, job.input_path):
            return _run_shard(job, collector)
    finally:
        logger.removeHandler(collector)


def _run_shard(job: ShardJob, collector: MessageCollector) -> dict[str, Any]:
    stage = json.loads(job.stage_json)
    stagedir = job.stagedir
    costs = Costs()
    with costs.measure("load steps"):  # once per worker process and stage: later shards find them built
        steps = build_steps(job.stage_json)
    for step in steps:
        step.start_shard()
    reader_stats: Counter[str] = Counter()
    if job.first_stage:
        docs = read_warc(job.input_path, WarcReaderParams(**stage["reader"]), reader_stats)
        batches = _batched(docs, stage["batch_size"])
    else:
        batches = iter_parquet(job.input_path, stage["batch_size"])
    batches = costs.iterate("read", batches)
    if any(getattr(step, "needs_shard_pass", False) for step in steps):
        with costs.measure("shard pass"):
            _shard_pass(job, stage, steps)

    columns = stage_columns(job, steps)
    writer_cfg = WriterConfig(**stage["writer"])
    kept_writer = writer_for(stagedir.fs, stagedir.part(job.shard), columns, False, writer_cfg)
    rejected_writer = writer_for(stagedir.fs, stagedir.part(job.shard, REJECTED), columns, True, writer_cfg)
    try:
        return _stream(job, batches, steps, (kept_writer, rejected_writer), reader_stats, collector, costs)
    except BaseException as exc:
        # Leave nothing half-written behind (a full disk, a killed task): the shard is simply not done.
        kept_writer.abort()
        rejected_writer.abort()
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"shard {job.shard} of stage {job.stage_name} (input {job.input_path}, "
                                     f"output {stagedir.path}): {exc.strerror or exc}", exc.filename) from exc
        raise


def _stream(job: ShardJob, batches: Iterator[list[Doc]], steps: list[Step],
            writers: tuple[ShardWriter, ShardWriter], reader_stats: Counter[str],
            collector: MessageCollector, costs: Costs) -> dict[str, Any]:
    """Every part's CPU (reading, each step, writing) is measured, so the stage's profile says where the
    shard's time went; the measuring costs a few hundred microseconds a step and batch."""
    kept_writer, rejected_writer = writers
    rows_in = rows_out = 0
    drop_reasons: Counter[str] = Counter()
    for batch in batches:
        rows_in += len(batch)
        for step in steps:
            with costs.measure(step.name):
                step(batch)
        kept = [d for d in batch if d.get("drop_reason") is None]
        rejected = [d for d in batch if d.get("drop_reason") is not None]
        for doc in rejected:
            doc["drop_stage"] = job.stage_name
            drop_reasons[doc["drop_reason"]] += 1
        rows_out += len(kept)
        with costs.measure("write"):
            kept_writer.write(kept)
            rejected_writer.write(rejected)
        if job.progress is not None:
            try:
                job.progress.add.remote(len(batch))
            except Exception:  # noqa: BLE001 - live progress is best effort
                job = replace(job, progress=None)
    with costs.measure("write"):
        outputs, rejected_outputs = kept_writer.close(), rejected_writer.close()

    return completion_record(job.shard, job.fingerprint, job.input_path, outputs, rejected_outputs, rows_in,
                             rows_out, drop_reasons, chars_out=kept_writer.chars,
                             chars_rejected=rejected_writer.chars, reader=dict(sorted(reader_stats.items())),
                             steps={s.name: dict(sorted(s.stats.items())) for s in steps},
                             warnings=collector.count, messages=collector.messages, input_id=job.input_id,
                             costs=costs.record())


def completion_record(shard: str, fingerprint: str, input_path: str, outputs: list[str], rejected: list[str],
                      rows_in: int, rows_out: int, drop_reasons: Counter[str], **extra: Any) -> dict[str, Any]:
    """The `_done/<shard>.json` record every stage kind's compute returns: what it read, wrote and dropped.
    `StageDir.run` adds where and when it ran, its wall and CPU seconds, and writes it."""
    return {
        "shard": shard,
        "fingerprint": fingerprint,
        "input": input_path,
        "outputs": [p.rsplit("/", 1)[-1] for p in outputs],
        "rejected": [p.rsplit("/", 1)[-1] for p in rejected],
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_in - rows_out,
        "chars_out": 0,
        "chars_rejected": 0,
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "reader": {},
        "steps": {},
        "warnings": 0,
        "messages": [],
        **extra,
    }
