"""The task bodies of the dedup stage, one function per phase, each run as Ray tasks.

    sign    per input shard: content hash, shingles, MinHash, band keys  -> by key / by doc
    bucket  per partition: documents sharing a key become candidate edges -> by node
    verify  (optional) two joins with shingle sets; edges below the true Jaccard go
    components  see components.py                                        -> stars by node
    label   per partition: each document's component label, joined with its keep-rule fields
    decide  per partition: one survivor per component, a reason per removed copy -> by shard

Document numbers are `shard << 32 | row`, so they are stable, sortable and name their shard.
"""

from __future__ import annotations

import time
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.cputime import own_peak_rss_mb
from pipeline.dedup import minhash
from pipeline.dedup.components import EDGES, edge_table, labels, route_undirected
from pipeline.dedup.params import DedupParams
from pipeline.dedup.shuffle import concat, partition_of, split_by

BANDS = pa.schema([("key", pa.uint64()), ("doc", pa.int64())])
DOCS = pa.schema([("doc", pa.int64()), ("id", pa.string()), ("hash", pa.uint64()), ("ts", pa.int64()),
                  ("length", pa.int64())])
SHINGLES = pa.schema([("doc", pa.int64()), ("shingles", pa.list_(pa.uint32()))])
CANDIDATES = pa.schema([("u", pa.int64()), ("v", pa.int64()), ("shingles", pa.list_(pa.uint32()))])
MEMBERS = pa.schema([("label", pa.int64()), *DOCS])
DECISIONS = pa.schema([("doc", pa.int64()), ("reason", pa.int8()), ("cluster_id", pa.string()),
                       ("cluster_size", pa.int32())])
KEPT, EXACT, MINHASH = 0, 1, 2
REASONS = {EXACT: "dedup:exact", MINHASH: "dedup:minhash"}
UNKNOWN_DATE = np.iinfo(np.int64).max  # a document without a crawl date counts as the newest
ALL_PAIRS_UP_TO = 8  # with verification, buckets this small check every pair, not a star


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _stats(started: tuple[float, float], **values: Any) -> dict[str, Any]:
    # Workers are long-lived: hand the Arrow pool's freed memory back before the next task.
    pa.default_memory_pool().release_unused()
    return {**values, "wall_s": round(time.perf_counter() - started[0], 3),
            "cpu_s": round(time.process_time() - started[1], 3), "peak_rss_mb": own_peak_rss_mb()}


# -- sign ----------------------------------------------------------------------------------------
def sign_task(shard_no: int, path: str, params_json: str, parts: int, batch_size: int) -> list[Any]:
    t0 = _clock()
    params = DedupParams.model_validate_json(params_json)
    docs, bands, shingles = [], [], []
    seen: set[int] = set()
    counts = {"docs": 0, "shard_copies": 0, "empty": 0, "shingles": 0}
    row = 0
    with fsspec.open(path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=["id", "text", "crawl_date"]):
            texts = batch.column("text").to_pylist()
            n = len(texts)
            doc = (np.int64(shard_no) << np.int64(32)) + np.arange(row, row + n, dtype=np.int64)
            row += n
            counts["docs"] += n
            hashes = np.fromiter((minhash.exact_hash(t or "") for t in texts), dtype=np.uint64, count=n)
            ts = batch.column("crawl_date").cast(pa.int64()).fill_null(UNKNOWN_DATE).to_numpy()
            lengths = np.fromiter((len(t or "") for t in texts), dtype=np.int64, count=n)
            docs.append(pa.table({"doc": doc, "id": batch.column("id"), "hash": hashes, "ts": ts,
                                  "length": lengths}, schema=DOCS))
            if params.exact:
                bands.append(pa.table({"key": minhash.exact_keys(hashes), "doc": doc}, schema=BANDS))
            if not params.minhash:
                continue
            # A copy already seen in this shard is found by its exact bucket: skip its MinHash.
            fresh = []
            for i, h in enumerate(hashes.tolist()):
                if params.exact and h in seen:
                    counts["shard_copies"] += 1
                    continue
                seen.add(h)
                fresh.append(i)
            sets = [minhash.shingle_hashes(texts[i] or "", params.shingle_size) for i in fresh]
            has_shingles = [k for k, s in enumerate(sets) if len(s)]
            counts["empty"] += len(sets) - len(has_shingles)
            sets = [sets[k] for k in has_shingles]
            fresh_docs = doc[[fresh[k] for k in has_shingles]]
            counts["shingles"] += sum(len(s) for s in sets)
            if not sets:
                continue
            keys = minhash.band_keys(minhash.signatures(sets, params.num_perm, params.seed), params.bands,
                                     params.rows)
            bands.append(pa.table({"key": keys.ravel(), "doc": np.repeat(fresh_docs, params.bands)}, schema=BANDS))
            if params.verify:
                shingles.append(pa.table({"doc": fresh_docs, "shingles": pa.array(sets, pa.list_(pa.uint32()))},
                                         schema=SHINGLES))
    band_table, doc_table = concat(bands, BANDS), concat(docs, DOCS)
    out = split_by(band_table, partition_of(band_table.column("key").to_numpy(), parts), parts)
    out += split_by(doc_table, partition_of(doc_table.column("doc").to_numpy(), parts), parts)
    if params.verify:
        sh = concat(shingles, SHINGLES)
        out += split_by(sh, partition_of(sh.column("doc").to_numpy(), parts), parts)
    return [*out, _stats(t0, **counts, band_records=band_table.num_rows)]


# -- bucket --------------------------------------------------------------------------------------
def bucket_task(params_json: str, parts: int, *tables: pa.Table) -> list[Any]:
    t0 = _clock()
    params = DedupParams.model_validate_json(params_json)
    records = concat(tables, BANDS)
    key, doc = records.column("key").to_numpy(), records.column("doc").to_numpy()
    order = np.lexsort((doc, key))
    key, doc = key[order], doc[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.empty(0, np.int64)
    sizes = np.diff(np.r_[starts, len(key)])
    shared = sizes > 1
    # A star from each bucket's smallest document keeps the bucket connected with k-1 edges.
    first = np.repeat(doc[starts], sizes)
    member = np.ones(len(doc), dtype=bool)
    member[starts] = False
    u, v = first[member], doc[member]
    exact = (key[member] & minhash.EXACT_BIT) != 0
    if params.verify:
        # Exact copies need no check; LSH candidates go to verification, one direction each.
        lsh_u, lsh_v = _small_bucket_pairs(doc, starts, sizes, key, u[~exact], v[~exact])
        pairs = np.unique(np.stack([lsh_u, lsh_v], axis=1), axis=0) if len(lsh_u) else np.empty((0, 2), np.int64)
        candidates = split_by(edge_table(pairs[:, 0], pairs[:, 1]), partition_of(pairs[:, 0], parts), parts)
        direct = route_undirected(u[exact], v[exact], parts)
    else:
        candidates = split_by(edge_table(u[:0], v[:0]), np.empty(0, np.int64), parts)
        direct = route_undirected(u, v, parts)
    stats = _stats(t0, buckets=int(len(starts)), shared_buckets=int(shared.sum()),
                   largest_bucket=int(sizes.max()) if len(sizes) else 0, candidate_edges=int(len(u)),
                   exact_edges=int(exact.sum()))
    return [*direct, *candidates, stats]


def _small_bucket_pairs(doc: np.ndarray, starts: np.ndarray, sizes: np.ndarray, key: np.ndarray, u: np.ndarray,
                        v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of a small LSH bucket, so that one false positive cannot cut its bucket in two
    after verification; larger buckets keep their star."""
    extra_u, extra_v = [u], [v]
    small = (sizes > 2) & (sizes <= ALL_PAIRS_UP_TO) & ((key[starts] & minhash.EXACT_BIT) == 0)
    for start, size in zip(starts[small].tolist(), sizes[small].tolist(), strict=True):
        members = doc[start: start + size]
        i, j = np.triu_indices(size, k=1)
        keep = i > 0  # pairs with the smallest member are already in the star
        extra_u.append(members[i[keep]])
        extra_v.append(members[j[keep]])
    return np.concatenate(extra_u), np.concatenate(extra_v)


# -- verify --------------------------------------------------------------------------------------
def _lookup(table: pa.Table, docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each doc in `table` (sorted search), and whether it was found."""
    keys = table.column("doc").to_numpy()
    order = np.argsort(keys)
    pos = np.searchsorted(keys[order], docs)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    found = (keys[order][pos] == docs) if len(keys) else np.zeros(len(docs), bool)
    return order[pos], found


def verify_left_task(parts: int, n_edges: int, *tables: pa.Table) -> list[Any]:
    t0 = _clock()
    edges, sets = concat(tables[:n_edges], EDGES), concat(tables[n_edges:], SHINGLES)
    u, v = edges.column("u").to_numpy(), edges.column("v").to_numpy()
    rows, found = _lookup(sets, u)
    shingles = sets.column("shingles").take(pa.array(rows[found])) if len(u) else pa.array([], pa.list_(pa.uint32()))
    table = pa.table({"u": u[found], "v": v[found], "shingles": shingles}, schema=CANDIDATES)
    return [*split_by(table, partition_of(v[found], parts), parts), _stats(t0, edges=int(len(u)))]


def verify_right_task(parts: int, min_jaccard: float, n_candidates: int, *tables: pa.Table) -> list[Any]:
    t0 = _clock()
    candidates, sets = concat(tables[:n_candidates], CANDIDATES), concat(tables[n_candidates:], SHINGLES)
    u, v = candidates.column("u").to_numpy(), candidates.column("v").to_numpy()
    rows, found = _lookup(sets, v)
    left = candidates.column("shingles")
    right = sets.column("shingles")
    keep = np.zeros(len(u), dtype=bool)
    for k in np.flatnonzero(found).tolist():
        a = left[k].values.to_numpy(zero_copy_only=False)
        b = right[int(rows[k])].values.to_numpy(zero_copy_only=False)
        keep[k] = minhash.jaccard(a, b) >= min_jaccard
    stats = _stats(t0, checked=int(len(u)), passed=int(keep.sum()))
    return [*route_undirected(u[keep], v[keep], parts), stats]


# -- label and decide ----------------------------------------------------------------------------
def label_task(parts: int, n_edges: int, *tables: pa.Table) -> list[Any]:
    t0 = _clock()
    node, label = labels(concat(tables[:n_edges], EDGES))
    docs = concat(tables[n_edges:], DOCS)
    rows, found = _lookup(docs, node)
    members = docs.take(pa.array(rows[found])).add_column(0, "label", pa.array(label[found], pa.int64()))
    return [*split_by(members, partition_of(label[found], parts), parts), _stats(t0, members=int(found.sum()))]


def _rank_keys(members: pa.Table, keep: list[str]) -> list[np.ndarray]:
    """Sort keys, most significant first, for which member a cluster keeps (smallest wins)."""
    ts, length = members.column("ts").to_numpy(), members.column("length").to_numpy()
    by = {"oldest": ts, "newest": -ts, "longest": -length, "shortest": length}
    return [by[k] for k in keep]


def decide_task(params_json: str, shard_parts: int, *tables: pa.Table) -> list[Any]:
    t0 = _clock()
    params = DedupParams.model_validate_json(params_json)
    members = concat(tables, MEMBERS)
    label, doc = members.column("label").to_numpy(), members.column("doc").to_numpy()
    hashes = members.column("hash").to_numpy()
    ranks = _rank_keys(members, params.keep)
    # Best first within each cluster; np.lexsort's last key is the primary one.
    order = np.lexsort((doc, *reversed(ranks), label))
    label_sorted = label[order]
    starts = np.flatnonzero(np.r_[True, label_sorted[1:] != label_sorted[:-1]]) if len(order) else np.empty(0, int)
    sizes = np.diff(np.r_[starts, len(order)])
    winner_row = np.repeat(order[starts], sizes)  # aligned with `order`
    reason = np.full(len(order), MINHASH, dtype=np.int8)
    reason[order == winner_row] = KEPT
    # A removed copy whose text equals a better-ranked member's is an exact duplicate.
    by_hash = np.lexsort((doc, *reversed(ranks), hashes, label))
    lh = np.stack([label[by_hash], hashes[by_hash].view(np.int64)], axis=1)
    first_of_class = np.r_[True, (lh[1:] != lh[:-1]).any(axis=1)] if len(lh) else np.empty(0, bool)
    is_exact = np.zeros(len(doc), dtype=bool)
    is_exact[by_hash[~first_of_class]] = True
    reason_by_row = np.empty(len(doc), dtype=np.int8)
    reason_by_row[order] = reason
    reason_by_row[(reason_by_row == MINHASH) & is_exact] = EXACT
    cluster_id = members.column("id").take(pa.array(winner_row))
    cluster_size = np.repeat(sizes, sizes).astype(np.int32)
    decisions = pa.table({"doc": doc[order], "reason": reason_by_row[order], "cluster_id": cluster_id,
                          "cluster_size": cluster_size}, schema=DECISIONS)
    histogram: dict[str, int] = {}
    for size, count in zip(*np.unique(sizes, return_counts=True), strict=True):
        histogram[str(int(size))] = int(count)
    stats = _stats(t0, clusters=int(len(starts)), cluster_sizes=histogram,
                   removed_exact=int((reason_by_row == EXACT).sum()),
                   removed_minhash=int((reason_by_row == MINHASH).sum()))
    shard_of = (doc[order] >> 32) % shard_parts
    return [*split_by(decisions, shard_of, shard_parts), stats]
