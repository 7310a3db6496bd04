"""`winnow status RUN_DIR`: a table of stages from the manifest and the completion records."""

from __future__ import annotations

from typing import Any

import fsspec
import yaml

from pipeline.jsonfile import read_json


def stage_rows(run_dir: str) -> list[dict[str, Any]]:
    fs, root = fsspec.core.url_to_fs(run_dir)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/run.yaml"):
        raise FileNotFoundError(f"{run_dir} is not a Winnow run directory (no run.yaml)")
    with fs.open(f"{root}/run.yaml") as f:
        config = yaml.safe_load(f)
    manifest: dict[str, Any] = read_json(fs, f"{root}/manifest.json") or {"stages": []}
    recorded = {s["name"]: s for s in manifest.get("stages", [])}
    rows = []
    for index, stage in enumerate(config["stages"]):
        entry = recorded.get(stage["name"])
        stage_dir = f"{root}/stages/{index:02d}_{stage['name']}"
        if entry is None:
            rows.append({"stage": f"{index:02d}_{stage['name']}", "status": "pending"})
            continue
        # Count completion records now: a run in progress or killed is ahead of its manifest.
        done_now = 0
        for path in fs.glob(f"{stage_dir}/_done/*.json"):
            done_now += (read_json(fs, path) or {}).get("fingerprint") == entry["fingerprint"]
        shards = entry["shards"]
        rows.append({
            "stage": f"{index:02d}_{stage['name']}",
            "status": entry["status"] if done_now == shards["done"] else "running",
            "shards": f"{done_now}/{shards['total']}",
            "reused": shards["reused"],
            "computed": shards["computed"],
            "failed": shards["failed"],
            "rows_in": entry["rows_in"],
            "rows_out": entry["rows_out"],
            "kept": f"{100 * entry['rows_out'] / entry['rows_in']:.1f}%" if entry["rows_in"] else "-",
            "wall_s": entry["wall_s"],
            "cpu_s": entry["cpu_s"],
            "fingerprint": entry["fingerprint"][:10],
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["stage", "status", "shards", "reused", "computed", "failed", "rows_in", "rows_out", "kept",
               "wall_s", "cpu_s", "fingerprint"]
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
