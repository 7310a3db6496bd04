"""Stages that stream into each other: a shard of the next stage can start as soon as its input shard is done.

Consecutive stages whose shards each read one input shard (map, synth) run as one segment. The
segment's first stage gets every shard at once; when a shard finishes, or an earlier run's record
of it still holds, the shards it feeds in the next stage are reused or submitted at once, without
waiting for the rest of its stage. So one slow shard holds up only what descends from it, not the
cluster. A stage that reads every shard at once (dedup) waits for all of its input and is never
part of a segment. With `streaming: false` each segment is one stage: stages are barriers.

Earlier stages come first on the CPUs. A CPU task of a later stage is held back while the earlier
stages' CPU tasks already fill the cluster (some wait in Ray's queue), and goes out when they no longer
do. Ray would otherwise share the CPUs fairly between the stages' queues (each stage's task is its own
scheduling class), and the run would end on a long shard of an early stage with the other CPUs idle;
this way the run's tail is made of the later stages' shards, which are shorter wherever the early
stages do the heavy work (extraction before filters). Actor pools and GPU stages are never held back.

Shard ids are stable (`StageKind.shard_next`), so the order in which shards finish changes no id,
no completion record and no byte of output.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.kinds import KINDS, StageContext, StageKind
from pipeline.kinds.pool import ActorPool, ShardCalls, TaskLauncher, shard_runner

if TYPE_CHECKING:
    from pipeline.progress import StageProgress
    from pipeline.raycluster import RayConnection

log = logging.getLogger("winnow.run")


@dataclass
class StreamedStage:
    """One stage of a segment, as far as it has got."""

    ctx: StageContext
    kind: StageKind
    found: dict[str, dict[str, Any]]  # records of this fingerprint whose files are there (StageDir.prepare)
    progress: StageProgress
    calls: ShardCalls | None = None
    launcher: TaskLauncher | ActorPool | None = None
    running: int = 0
    reused: int = 0
    docs_done: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    complete: bool = False
    wall_s: float = 0.0


class Segment:
    """Runs consecutive per-shard stages as one stream of shards. Each stage comes as its context (its
    StageDir and fingerprint, no shards yet); `ray` is the connection, joined only when a shard must run."""

    def __init__(self, stages: list[StageContext], ray: RayConnection, expected_shards: int,
                 check_lock: Callable[[], None]) -> None:
        from pipeline.progress import StageProgress

        self.ray = ray
        self.check_lock = check_lock  # raises once another run has taken the run directory over
        self.expected = expected_shards  # sizes actor pools, before later stages know their shard counts
        self.levels: list[StreamedStage] = []
        self.futures: dict[Any, tuple[int, str]] = {}
        self.held: list[tuple[int, str]] = []  # shards of later stages waiting for CPUs (see the module's text)
        for position, ctx in enumerate(stages):
            found = ctx.stagedir.prepare(ctx.fingerprint, ctx.stage.model_dump(mode="json"))
            progress = StageProgress(ctx.stagedir.dirname, total=0, position=position)
            self.levels.append(StreamedStage(ctx, KINDS[ctx.stage.kind], found, progress))

    def run(self, inputs: dict[str, str], input_ids: dict[str, str]) -> list[StreamedStage]:
        """Run every shard that descends from `inputs`; return each stage, its records in ctx.done."""
        import ray

        if len(self.levels) > 1:
            log.info("streaming stages %s", " -> ".join(s.ctx.stage.name for s in self.levels))
        self.started = time.perf_counter()
        try:
            for shard in inputs:
                self.feed(0, shard, inputs[shard], input_ids[shard])
            self.close_finished()
            while self.futures:
                self.check_lock()
                ready, _ = ray.wait(list(self.futures), num_returns=len(self.futures), timeout=0.5)
                for ref in ready:
                    self.collect(ref)
                self.release()
                if not ready:
                    for level in self.levels:
                        if level.calls is not None and not level.complete:
                            level.progress.update(max(level.calls.live_docs(), level.docs_done))
                self.close_finished()
        finally:
            for level in self.levels:
                level.progress.close()
        for level in self.levels:
            ctx = level.ctx
            ctx.shards, ctx.input_ids = dict(sorted(ctx.shards.items())), dict(sorted(ctx.input_ids.items()))
            ctx.stagedir.remove_stale(ctx.shards)
            log.info("stage %s: %d shards computed, %d reused, %d failed", ctx.stage.name,
                     len(ctx.done) - level.reused, level.reused, len(level.failures))
        return self.levels

    def feed(self, position: int, shard: str, url: str, identity: str) -> None:
        """A shard of stage `position` has its input: reuse its record if it still holds, else submit it."""
        level = self.levels[position]
        level.ctx.shards[shard], level.ctx.input_ids[shard] = url, identity
        level.progress.grow(1)
        record = level.found.get(shard)
        if record is not None and level.ctx.stagedir.reusable(record, url, identity):
            level.ctx.done[shard] = record
            level.reused += 1
            level.progress.update(level.docs_done, shards_done=1)
            self.passed_on(position, shard, record)
            return
        if level.launcher is None:
            self.ray.ensure()
            self.ray.check_schedulable(level.ctx.stage)
            level.calls = level.kind.shard_calls(level.ctx)
            level.launcher = shard_runner(level.ctx.stage, level.ctx.stagedir, level.calls.fn, self.expected)
        if self.held_back(position):
            self.held.append((position, shard))
        else:
            self.launch(position, shard)

    def launch(self, position: int, shard: str) -> None:
        level = self.levels[position]
        self.submitted(position, level.launcher.submit({shard: level.calls.args(shard)}))

    def on_cpu_tasks(self, level: StreamedStage) -> bool:
        return isinstance(level.launcher, TaskLauncher) and not level.ctx.stage.resources.num_gpus

    def held_back(self, position: int, cpus: float | None = None) -> bool:
        """Whether the CPU tasks of the stages before `position` ask for more CPUs than the cluster has
        (`cpus`, when the caller has just asked Ray)."""
        if not position or not self.on_cpu_tasks(self.levels[position]):
            return False
        asked = sum(level.running * level.ctx.stage.resources.num_cpus
                    for level in self.levels[:position] if self.on_cpu_tasks(level))
        return asked > (self.ray.cpus() if cpus is None else cpus)

    def release(self) -> None:
        """Submit the held shards whose earlier stages no longer fill the cluster, earliest stage first."""
        if not self.held:
            return
        waiting, self.held, cpus = sorted(self.held), [], self.ray.cpus()
        for position, shard in waiting:
            if self.held_back(position, cpus):
                self.held.append((position, shard))
            else:
                self.launch(position, shard)

    def submitted(self, position: int, futures: dict[Any, str]) -> None:
        self.futures |= {ref: (position, shard) for ref, shard in futures.items()}
        self.levels[position].running += len(futures)

    def passed_on(self, position: int, shard: str, record: dict[str, Any]) -> None:
        """`shard` is done: feed the shards it makes to the next stage of the segment."""
        if position + 1 < len(self.levels):
            level = self.levels[position]
            for next_id, (url, identity) in level.kind.shard_next(level.ctx, shard, record).items():
                self.feed(position + 1, next_id, url, identity)

    def collect(self, ref: Any) -> None:
        """A shard's task ended: keep its record (or its failure) and pass it on."""
        import ray

        position, shard = self.futures.pop(ref)
        level = self.levels[position]
        level.running -= 1
        self.submitted(position, level.launcher.next(ref))
        stage = level.ctx.stage
        try:
            record: dict[str, Any] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - one bad shard must not stop the run
            level.failures.append(level.ctx.stagedir.failure(shard, level.ctx.shards[shard], exc))
            level.progress.update(level.docs_done, failed=1)
            return
        level.ctx.done[shard] = record
        level.docs_done += record["rows_in"]
        for message in record.get("messages", []):
            log.warning("%s/%s: %s", stage.name, shard, message)
        level.progress.update(level.docs_done, shards_done=1)
        self.passed_on(position, shard, record)

    def close_finished(self) -> None:
        """A stage is over when the stages before it are and none of its shards runs: release its actors
        (and their GPUs) at once, for the stages still running."""
        for position, level in enumerate(self.levels):
            if level.complete:
                continue
            if level.running or (position and not self.levels[position - 1].complete):
                return
            level.complete = True
            level.wall_s = time.perf_counter() - self.started
            if level.launcher is not None:
                level.ctx.notes |= level.launcher.close()
                level.calls.close()
