"""Live progress for the driver: shards, documents, rate and time left, on one line."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("winnow.progress")


class ProgressCounter:
    """Run as a Ray actor: shard tasks add the documents they finish, the driver reads the sum."""

    def __init__(self) -> None:
        self.docs = 0

    def add(self, n: int) -> None:
        self.docs += n

    def total(self) -> int:
        return self.docs


class LiveCount:
    """The driver's handle on a ProgressCounter actor. Progress is best effort: if the actor cannot
    start or dies, the bar falls back to finished shards and the run goes on."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.last = 0

    @classmethod
    def start(cls) -> LiveCount:
        import ray

        try:
            return cls(ray.remote(ProgressCounter).options(num_cpus=0, max_restarts=0).remote())
        except Exception as exc:  # noqa: BLE001 - progress must never stop a run
            log.warning("live progress unavailable (%s); counting finished shards only", exc)
            return cls(None)

    def total(self) -> int:
        if self.actor is None:
            return self.last
        import ray

        try:
            self.last = ray.get(self.actor.total.remote(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - a lost actor only costs the live count
            log.warning("live progress lost (%s); counting finished shards only", type(exc).__name__)
            self.actor = None
        return self.last

    def stop(self) -> None:
        if self.actor is not None:
            import ray

            try:
                ray.kill(self.actor)
            except Exception:  # noqa: BLE001, S110 - already gone
                pass
            self.actor = None


class StageProgress:
    def __init__(self, name: str, total: int, position: int = 0):
        self.tty = sys.stderr.isatty()
        # Streaming stages show one bar each, one under the other (`position`).
        self.bar = tqdm(total=total, desc=name, unit="shard", dynamic_ncols=True, file=sys.stderr, position=position,
                        # In a log file (CI, a batch job) a line every half second would bury the log.
                        mininterval=0.5 if self.tty else 30,
                        bar_format="{desc}: {n_fmt}/{total_fmt} shards |{bar}|"
                        "[{elapsed}<{remaining}{postfix}]")
        self.docs = 0
        self.failed = 0
        self.start = time.perf_counter()

    def update(self, docs: int, shards_done: int = 0, failed: int = 0) -> None:
        """`docs` is the live total of documents processed; shards arrive as they finish."""
        self.docs = max(self.docs, docs)
        self.failed += failed
        rate = self.docs / max(time.perf_counter() - self.start, 1e-9)
        postfix = f"{self.docs:,} docs, {rate:,.0f} docs/s"
        if self.failed:
            postfix += f", {self.failed} failed"
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(shards_done + failed)
        if not shards_done and not failed and self.tty:
            self.bar.refresh()

    def grow(self, shards: int) -> None:
        """More shards for this stage: a streaming stage learns its shards as the stage before finishes them."""
        self.bar.total += shards

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StageProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
