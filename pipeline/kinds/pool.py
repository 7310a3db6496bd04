"""How a stage's shards reach Ray: one task per shard, or a pool of long-lived actors.

Tasks are the default: Ray spreads them and reuses CPU workers, so a step's models load once per worker
process anyway. GPU tasks are different: Ray gives each its own process (`max_calls=1`), so every shard
would load its model again. An actor pool keeps the process, and what it loaded, for every shard it runs:
the default on GPUs, and `actors: N` anywhere.

Either way every shard call is `StageDir.run`: begin (clear what an earlier attempt left), the kind's
compute, finish (write the completion record it returned). A kind's compute never marks a shard done.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.stagedir import StageDir, node_id, run_shard

log = logging.getLogger("winnow.run")


@dataclass
class ShardCalls:
    """How a kind runs one stage's shards: the compute of one shard (it returns the shard's completion
    record), its arguments for a shard, a live count of the documents its running shards have done, and
    what to release once the stage is over."""

    fn: Callable[..., dict[str, Any]]
    args: Callable[[str], tuple]
    live_docs: Callable[[], int] = lambda: 0
    close: Callable[[], None] = lambda: None


def pool_size(stage: Any, shards: int) -> int:
    """How many actors run this stage's shards; 0: one Ray task per shard instead."""
    import ray

    size = stage.actors
    if size is None and stage.resources.num_gpus > 0:
        size = max(1, int(ray.cluster_resources().get("GPU", 0) // stage.resources.num_gpus))
    return min(size or 0, shards)


def shard_runner(stage: Any, stagedir: StageDir, fn: Callable[..., dict[str, Any]],
                 shards: int) -> TaskLauncher | ActorPool:
    size = pool_size(stage, shards)
    return ActorPool(stage, stagedir, fn, size) if size else TaskLauncher(stage, stagedir, fn)


def _options(stage: Any) -> dict[str, Any]:
    return {"num_cpus": stage.resources.num_cpus, "num_gpus": stage.resources.num_gpus,
            "memory": (stage.resources.memory_mb << 20) if stage.resources.memory_mb else None}


class TaskLauncher:
    """One Ray task per shard, all submitted at once; Ray's scheduler spreads them."""

    def __init__(self, stage: Any, stagedir: StageDir, fn: Callable[..., dict[str, Any]]) -> None:
        import ray

        self.stagedir, self.fn = stagedir, fn
        self.task = ray.remote(run_shard).options(**_options(stage), max_retries=stage.max_retries,
                                                  retry_exceptions=False)

    def submit(self, calls: dict[str, tuple]) -> dict[Any, str]:
        """Submit these shards' calls; return future -> shard."""
        return {self.task.remote(self.stagedir, shard, self.fn, *args): shard for shard, args in calls.items()}

    def next(self, ref: Any) -> dict[Any, str]:
        """`ref` finished: what to wait on next besides the rest (nothing: every call went out at submit)."""
        return {}

    def close(self) -> dict[str, Any]:
        return {}


class ShardWorker:
    """A long-lived process that runs shard after shard, keeping whatever its calls loaded."""

    def __init__(self) -> None:
        self.shards = 0

    def run(self, stagedir: StageDir, shard: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        self.shards += 1
        return run_shard(stagedir, shard, fn, *args)

    def stats(self) -> dict[str, Any]:
        from pipeline.stage import build_steps

        return {"pid": os.getpid(), "node": node_id(), "shards": self.shards,
                "steps_built": build_steps.cache_info().misses}


class ActorPool:
    """`size` ShardWorker actors, each given the next pending shard as soon as it is free. A dead actor
    is restarted by Ray and its shard retried (max_retries), as a dead task's would be."""

    def __init__(self, stage: Any, stagedir: StageDir, fn: Callable[..., dict[str, Any]], size: int) -> None:
        import ray

        worker = ray.remote(ShardWorker).options(**_options(stage), max_restarts=stage.max_retries,
                                                 max_task_retries=stage.max_retries)
        self.stagedir, self.fn = stagedir, fn
        self.actors = [worker.remote() for _ in range(size)]
        self.idle = list(self.actors)
        self.queue: deque[tuple[str, tuple]] = deque()
        self.busy: dict[Any, Any] = {}

    def _give(self) -> dict[Any, str]:
        given = {}
        while self.queue and self.idle:
            shard, args = self.queue.popleft()
            actor = self.idle.pop()
            ref = actor.run.remote(self.stagedir, shard, self.fn, *args)
            self.busy[ref] = actor
            given[ref] = shard
        return given

    def submit(self, calls: dict[str, tuple]) -> dict[Any, str]:
        """Queue these shards' calls; return the futures of those that went to an idle actor."""
        self.queue.extend(calls.items())
        return self._give()

    def next(self, ref: Any) -> dict[Any, str]:
        """`ref` finished: its actor takes the next queued shard."""
        self.idle.append(self.busy.pop(ref))
        return self._give()

    def close(self) -> dict[str, Any]:
        """Release the actors (and their GPUs); return what each did, as far as it can still say."""
        import ray

        stats = []
        for actor in self.actors:
            try:
                stats.append(ray.get(actor.stats.remote(), timeout=30))
            except Exception as exc:  # noqa: BLE001 - a lost actor has nothing to report; the run goes on
                log.warning("a shard actor could not report its stats: %s", exc)
            ray.kill(actor)
        return {"actors": stats}

