"""`winnow inspect PATH`: sample documents, kept or dropped, in the terminal.

Issue 5 grows this into filters by language and score, highlighting and JSON output.
"""

from __future__ import annotations

import itertools
import shutil
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds


def _source(path: str, stage: str | None, rejected: bool) -> str:
    p = Path(path)
    if p.is_file():
        return str(p)
    if stage is None and not rejected:
        return str(p / "output")
    stages = sorted((p / "stages").glob(f"*_{stage}" if stage else "*"))
    if not stages:
        raise FileNotFoundError(f"no stage {stage!r} in {path}")
    if rejected and stage is None:
        return str(p / "stages")
    return str(stages[0] / "rejected") if rejected else str(stages[0])


def inspect_documents(path: str, stage: str | None = None, reason: str | None = None, n: int = 5) -> int:
    source = _source(path, stage, rejected=reason is not None)
    files = [str(f) for f in Path(source).rglob("part-*.parquet")] if Path(source).is_dir() else [source]
    if reason is not None:
        files = [f for f in files if "/rejected/" in f]
    if not files:
        print(f"no documents under {source}")
        return 1
    table = ds.dataset(files, format="parquet").to_table()
    rows = table.to_pylist()
    if reason:
        rows = [r for r in rows if (r.get("drop_reason") or "").startswith(reason)]
    print(f"{len(rows)} documents match in {source}\n")
    for row in rows[:n]:
        meta = {k: v for k, v in row.items() if k != "text" and v is not None}
        print("  ".join(f"{k}={v}" for k, v in meta.items()))
        text = (row.get("text") or "")[:800]
        print(textwrap.indent(textwrap.fill(text, 100, replace_whitespace=False), "    "))
        print("-" * 100)
    return 0


def _dedup_dirs(run_dir: str) -> list[Path]:
    return sorted(p.parent for p in Path(run_dir).glob("stages/*/_dedup.json"))


def cluster_members(run_dir: str, cluster: str) -> list[dict]:
    """Every member of a duplicate cluster, kept one first; `largest` picks the biggest cluster."""
    import pyarrow.compute as pc

    for stage_dir in _dedup_dirs(run_dir):
        files = [str(f) for f in stage_dir.rglob("part-*.parquet")]
        if not files:
            continue
        import pyarrow.parquet as pq

        schema = pa.unify_schemas([pq.read_schema(f) for f in files])  # rejected files add columns
        dataset = ds.dataset(files, format="parquet", schema=schema)
        if cluster == "largest":
            sizes = dataset.to_table(columns=["dup_cluster_id", "dup_cluster_size"])
            if not len(sizes):
                continue
            best = pc.index(sizes["dup_cluster_size"], pc.max(sizes["dup_cluster_size"]))
            target = sizes["dup_cluster_id"][best.as_py()].as_py()
        else:
            target = cluster
        rows = dataset.to_table(filter=ds.field("dup_cluster_id") == target).to_pylist()
        if rows:
            return sorted(rows, key=lambda r: (r.get("drop_reason") is not None, r["id"]))
    return []


def inspect_cluster(run_dir: str, cluster: str, width: int | None = None, columns: int = 3) -> int:
    members = cluster_members(run_dir, cluster)
    if not members:
        print(f"no cluster {cluster!r} in the dedup stages of {run_dir}")
        return 1
    width = width or shutil.get_terminal_size((150, 40)).columns
    print(f"cluster {members[0]['dup_cluster_id']}: {len(members)} documents, the first is the one kept\n")
    for start in range(0, len(members), columns):
        group = members[start: start + columns]
        col = max(20, (width - 3 * (len(group) - 1)) // len(group))
        blocks = []
        for row in group:
            status = row.get("drop_reason") or "kept"
            head = [status, row.get("url") or "", str(row.get("crawl_date") or ""), f"{len(row['text'] or '')} chars"]
            body = textwrap.wrap(row["text"] or "", col)[:30]
            blocks.append([h[:col] for h in head] + ["-" * col] + body)
        for line in itertools.zip_longest(*blocks, fillvalue=""):
            print(" | ".join(cell.ljust(col) for cell in line).rstrip())
        print()
    return 0
