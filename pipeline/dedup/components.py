"""Connected components across Ray workers: the large-star / small-star algorithm.

Kiveris et al., "Connected Components in MapReduce and Beyond" (SoCC 2014). Edges are
hash-partitioned by node, and each node sees its whole neighbourhood in one task:

- large-star: every neighbour larger than u is re-attached to the smallest node of u's
  neighbourhood (u included);
- small-star: u and its smaller neighbours are all attached to the smallest of them.

Both keep the components unchanged. Alternating them converges in O(log^2 n) rounds (a few, in
practice) to stars centred on the smallest node of each component. So a component's label is
its smallest document number, whatever the partitioning or the order tasks ran in: the result
is deterministic, and no process ever holds more than one partition of the edges.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.dedup.shuffle import concat, exchange, partition_of, split_by

log = logging.getLogger("winnow.dedup")

EDGES = pa.schema([("u", pa.int64()), ("v", pa.int64())])


def edge_table(u: np.ndarray, v: np.ndarray) -> pa.Table:
    return pa.table({"u": u.astype(np.int64), "v": v.astype(np.int64)}, schema=EDGES)


def route_undirected(u: np.ndarray, v: np.ndarray, parts: int) -> list[pa.Table]:
    """Both directions of each edge, each sent to the partition of its first node."""
    uu, vv = np.concatenate([u, v]), np.concatenate([v, u])
    return split_by(edge_table(uu, vv), partition_of(uu, parts), parts)


def neighbourhoods(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique directed edges sorted by (u, v), and the start index of each u's group."""
    u, v = table.column("u").to_numpy(), table.column("v").to_numpy()
    if len(u):
        pairs = np.unique(np.stack([u, v], axis=1), axis=0)
        u, v = pairs[:, 0], pairs[:, 1]
    starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.empty(0, np.int64)
    return u, v, starts


def large_star(u: np.ndarray, v: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes = np.diff(np.r_[starts, len(u)])
    smallest = np.minimum(u[starts], v[starts])  # v is sorted within each group
    m = np.repeat(smallest, sizes)
    larger = v > u
    return v[larger], m[larger]


def small_star(u: np.ndarray, v: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    smaller = v < u
    su, sv = u[smaller], v[smaller]
    if not len(su):
        return su, sv
    group = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])
    m = np.repeat(sv[group], np.diff(np.r_[group, len(su)]))  # smallest neighbour below u
    keep = sv != m
    # u joins the star of m, and so does every other smaller neighbour of u.
    return np.concatenate([su[group], sv[keep]]), np.concatenate([m[group], m[keep]])


def star_task(kind: str, parts: int, *tables: pa.Table) -> list[Any]:
    u, v, starts = neighbourhoods(concat(tables, EDGES))
    nu, nv = (large_star if kind == "large" else small_star)(u, v, starts)
    # Order-independent digest of the edge set, so the driver can tell when nothing changes.
    canon = np.stack([np.maximum(nu, nv), np.minimum(nu, nv)], axis=1)
    canon = np.unique(canon, axis=0) if len(canon) else canon
    digest = int((canon[:, 0].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                  ^ canon[:, 1].astype(np.uint64)).sum()) if len(canon) else 0
    return [*route_undirected(nu, nv, parts), {"edges": len(canon), "digest": digest}]


def connected_components(edges: list[list[Any]], parts: int, max_rounds: int = 64,
                         **options: Any) -> tuple[list[list[Any]], dict[str, Any]]:
    """Edge partitions in, converged star partitions out (each node's neighbours include its
    component's smallest node, or it is that node). Also returns the round count."""
    import ray

    previous = None
    for round_no in range(1, max_rounds + 1):
        for kind in ("large", "small"):
            (edges,), stats = exchange(star_task, [(kind, parts, *edges[p]) for p in range(parts)], [parts],
                                       **options)
            stats = ray.get(stats)
        state = (sum(s["edges"] for s in stats), sum(s["digest"] for s in stats) % (1 << 64))
        log.info("components round %d: %d edges", round_no, state[0])
        if state == previous:
            return edges, {"rounds": round_no, "edges": state[0]}
        previous = state
    raise RuntimeError(f"connected components did not converge in {max_rounds} rounds")


def labels(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(node, component label) for every node of a converged star partition."""
    u, v, starts = neighbourhoods(table)
    if not len(u):
        return u, u
    return u[starts], np.minimum(u[starts], v[starts])
