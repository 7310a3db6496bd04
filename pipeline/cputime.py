"""Wall and CPU seconds of one shard, its child processes' CPU included.

The extract step sends pages to a long-lived child process (filters/extract_sandbox.py) that outlives
any one shard. `time.process_time()` counts only the worker itself, and `RUSAGE_CHILDREN` only the
children that have exited and been waited for, so neither sees that child. A shard's CPU is therefore:

    the worker's own CPU
  + what each live descendant spent between the shard's start and its end (read from /proc)
  + what the children that exited during the shard spent (the growth of RUSAGE_CHILDREN), less what
    those of them that were already alive at the start had spent before it

Without /proc (not Linux) only the worker and its exited children are counted.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_END: Any = object()

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _exited_children_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _proc_stats() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of its own exited children), for every process."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = entry.read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (field 2) is in parentheses and may hold spaces: split after its last ')'.
        fields = text[text.rfind(")") + 2:].split()
        try:
            ppid = int(fields[1])
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # utime stime cutime cstime
        except (IndexError, ValueError):
            continue
        stats[int(entry.parent.name)] = (ppid, ticks / _TICKS)
    return stats


def _children(pid: int) -> list[int] | None:
    """The direct children of `pid`, from the kernel's per-thread lists; None where it keeps none."""
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # the process or a thread ended while we looked
        pass
    return kids


def _stat_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and of its own exited children; 0 when it has ended."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / _TICKS


def _descendants_fast(pid: int) -> dict[int, float] | None:
    """As `descendants_cpu_s`, reading only this process tree (cheap enough for every step of a batch)."""
    found: dict[int, float] = {}
    todo = _children(pid)
    if todo is None:
        return None
    while todo:
        child = todo.pop()
        if child not in found:
            found[child] = _stat_cpu_s(child)
            todo += _children(child) or []
    return found


def descendants_cpu_s(pid: int | None = None) -> dict[int, float]:
    """CPU seconds of every live descendant of `pid` (this process by default), by pid; {} without /proc."""
    if not Path("/proc/self/stat").exists():
        return {}
    fast = _descendants_fast(os.getpid() if pid is None else pid)
    if fast is not None:
        return fast
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    found: dict[int, float] = {}
    todo = list(children.get(os.getpid() if pid is None else pid, []))
    while todo:
        child = todo.pop()
        if child not in found:
            found[child] = stats[child][1]
            todo += children.get(child, [])
    return found


def own_peak_rss_mb() -> float:
    """The largest resident memory this process has had so far (the kernel's high-water mark), in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def children_peak_rss_mb() -> float:
    """The largest high-water mark of this process's live descendants (the extract sandbox), in MB."""
    peak = 0.0
    for pid in descendants_cpu_s():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (OSError, ValueError, IndexError):
            continue
    return round(peak, 1)


def tree_cpu_s() -> float:
    """CPU seconds this process and all its descendants have spent so far, live or exited."""
    now = TreeReading()
    return now.own + now.exited + sum(now.live.values())


class TreeReading:
    """This process's CPU, its reaped children's and its live descendants' at one moment; `since` gives what a
    piece of work cost between two readings, a child process's share included."""

    def __init__(self) -> None:
        self.own, self.exited, self.live = time.process_time(), _exited_children_s(), descendants_cpu_s()

    def since(self, before: TreeReading) -> tuple[float, float]:
        """(own CPU, children's CPU) from `before` to this reading. The children's share is each live
        descendant's growth, plus what was reaped, less what the descendants gone since had already spent; it
        is never negative, so that a descendant this process did not reap (one of an earlier piece of work,
        reaped by its own parent) takes nothing from the own share."""
        grown = sum(cpu - before.live.get(pid, 0.0) for pid, cpu in self.live.items())
        gone = sum(cpu for pid, cpu in before.live.items() if pid not in self.live)
        return self.own - before.own, max(0.0, grown + self.exited - before.exited - gone)


class ShardClock:
    """Started when a shard begins; `read()` gives its wall_s, cpu_s (children included), child_cpu_s, and
    the worker's and its children's peak memory so far."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.wall0, self.start = time.perf_counter(), TreeReading()

    def read(self) -> dict[str, float]:
        own, children = TreeReading().since(self.start)
        return {"started_at": round(self.started_at, 3),
                "wall_s": round(time.perf_counter() - self.wall0, 3), "cpu_s": round(own + children, 3),
                "child_cpu_s": round(children, 3), "peak_rss_mb": own_peak_rss_mb(),
                "child_peak_rss_mb": children_peak_rss_mb()}


class Costs:
    """Wall and CPU seconds (child processes included) per named part of a shard's work: reading, each step,
    writing. Kept in the completion record as {part: {"cpu_s", "wall_s"}}, so a stage's costs add up over
    its shards like its counts do."""

    def __init__(self) -> None:
        self.parts: dict[str, dict[str, float]] = {}

    def add(self, part: str, cpu_s: float, wall_s: float) -> None:
        spent = self.parts.setdefault(part, {"cpu_s": 0.0, "wall_s": 0.0})
        spent["cpu_s"] += cpu_s
        spent["wall_s"] += wall_s

    @contextmanager
    def measure(self, part: str) -> Iterator[None]:
        start, wall0 = TreeReading(), time.perf_counter()
        try:
            yield
        finally:
            self.add(part, sum(TreeReading().since(start)), time.perf_counter() - wall0)

    def iterate(self, part: str, items: Iterable[T]) -> Iterator[T]:
        """`items`, with the time spent producing each one (a lazy reader's parsing) counted to `part`."""
        it = iter(items)
        while True:
            with self.measure(part):
                item = next(it, _END)
            if item is _END:
                return
            yield item

    def record(self) -> dict[str, dict[str, float]]:
        return {part: {k: round(max(v, 0.0), 4) for k, v in spent.items()} for part, spent in self.parts.items()}
