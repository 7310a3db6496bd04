"""`winnow inspect PATH`: sample documents, kept or dropped, in the terminal.

Issue 5 grows this into filters by language and score, highlighting and JSON output.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

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
