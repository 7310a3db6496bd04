"""A hash-partitioned exchange on Ray: the one primitive the dedup phases are built from.

Every phase is a set of Ray tasks. Each task returns `parts` Arrow tables, one per destination
partition, plus a small stats dict. Ray keeps the tables in its object store (spilling to disk
when it fills), and partition p's next task receives the p-th table of every task before it.
The driver only ever holds object references and the small stats dicts, never the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa


def split_by(table: pa.Table, dest: np.ndarray, parts: int) -> list[pa.Table]:
    """Rows of `table` grouped by destination partition. Each part is a compact copy (`take`),
    so shipping one part never drags along the buffers of the others."""
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(parts + 1))
    return [table.take(order[bounds[p]: bounds[p + 1]]) for p in range(parts)]


def partition_of(keys: np.ndarray, parts: int) -> np.ndarray:
    """Destination partition of unsigned or non-negative integer keys. Keys are mixed first, so
    that structured keys (document numbers are shard << 32 | row) still spread evenly."""
    h = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return ((h >> np.uint64(32)) % np.uint64(parts)).astype(np.int64)


def concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    """All the parts a task received, as one table (empty with `schema` when there are none)."""
    nonempty = [t for t in tables if t.num_rows]
    if not nonempty:
        return schema.empty_table()
    return pa.concat_tables(nonempty).combine_chunks()


def exchange(fn: Callable[..., list[Any]], calls: Sequence[tuple[Any, ...]], outputs: Sequence[int],
             **options: Any) -> tuple[list[list[list[Any]]], list[Any]]:
    """Run `fn(*args)` as one Ray task per call.

    `fn` returns, in order, the tables of each output (`outputs[i]` tables for output i) and
    last a stats dict. The result regroups the tables by output and destination:
    `routed[i][p]` is the list of references to every task's table for partition p of output i.
    The stats come back as references; `ray.get` them to wait for the phase.
    """
    import ray

    total = sum(outputs) + 1
    task = ray.remote(fn).options(num_returns=total, **options)
    refs = [task.remote(*args) for args in calls]
    refs = [r if isinstance(r, list) else [r] for r in refs]
    routed, offset = [], 0
    for width in outputs:
        routed.append([[r[offset + p] for r in refs] for p in range(width)])
        offset += width
    return routed, [r[-1] for r in refs]
