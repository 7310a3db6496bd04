"""`winnow status RUN_DIR`: a table of stages from the manifest and the completion records."""

from __future__ import annotations

import os
from typing import Any

import yaml

from pipeline.jsonfile import read_json
from pipeline.rundir import RunDir


def stage_rows(run_dir: str) -> list[dict[str, Any]]:
    rundir = RunDir(run_dir)
    if not rundir.fs.exists(rundir.run_yaml):
        raise FileNotFoundError(f"{run_dir} is not a Winnow run directory (no run.yaml)")
    with rundir.fs.open(rundir.run_yaml) as f:
        config = yaml.safe_load(f)
    manifest: dict[str, Any] = read_json(rundir.fs, rundir.manifest) or {"stages": []}
    recorded = {s["name"]: s for s in manifest.get("stages", [])}
    rows = []
    for index, stage in enumerate(config["stages"]):
        stagedir = rundir.stage(index, stage["name"])
        name = stagedir.dirname
        # The stage's own marker says which fingerprint its shards on disk belong to; count the done ones
        # now, since a run in progress, killed or interrupted is ahead of its manifest.
        fingerprint = stagedir.fingerprint()
        done_now = len(stagedir.done(fingerprint)) if fingerprint else 0
        entry = recorded.get(stage["name"])
        if entry is None or entry["fingerprint"] != fingerprint:
            rows.append({"stage": name, "status": "pending" if not done_now else "started",
                         "shards": f"{done_now}/?" if done_now else "", "fingerprint": (fingerprint or "")[:10]})
            continue
        shards = entry["shards"]
        rows.append({
            "stage": name,
            "status": entry["status"] if done_now == shards["done"] else "started",
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
            "errors": entry.get("errors", []),
        })
    return rows


def run_status(run_dir: str) -> str:
    """The run's state: the manifest's, except that a run recorded as running whose process no longer
    holds the directory's lock was killed or crashed."""
    rundir = RunDir(run_dir)
    status = (read_json(rundir.fs, rundir.manifest) or {}).get("status", "not started")
    if rundir.in_use():
        return "running"
    if status == "running":
        return "stopped (the run was killed or crashed; run it again to resume)"
    return status


def synth_lines(run_dir: str) -> str:
    """What each synth stage made and what it cost, from the manifest."""
    rundir = RunDir(run_dir)
    manifest = read_json(rundir.fs, rundir.manifest) or {}
    lines = []
    for stage in manifest.get("stages", []):
        synth = stage.get("synth")
        if not synth:
            continue
        recipes = ", ".join(f"{k} {v}" for k, v in synth.get("by_recipe", {}).items()) or "none"
        lines.append(f"{stage['name']}: {synth['instructions']} instructions ({recipes}), {synth['rejected']} dropped, "
                     f"{synth['rephrased']} rephrased; {synth['requests']} requests, {synth['cache_hits']} from the "
                     f"cache, {synth['retries']} retries; {synth['prompt_tokens']} prompt + "
                     f"{synth['completion_tokens']} completion tokens, ${synth.get('cost_usd', 0):.4f}")
    return "\n".join(lines)


def format_errors(rows: list[dict[str, Any]], run_dir: str | None = None) -> str:
    """Failed shards with their errors, one line each, and the task's own log where one was kept."""
    lines = []
    for row in rows:
        for err in row.get("errors", []):
            line = f"{row['stage']} shard {err['shard']} ({err['input']}): {err['error']}"
            task_log = RunDir(run_dir).task_log(row["stage"], err["shard"]) if run_dir else ""
            if task_log and os.path.isfile(task_log):
                line += f"\n    log: {task_log}"
            lines.append(line)
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    columns = ["stage", "status", "shards", "reused", "computed", "failed", "rows_in", "rows_out", "kept",
               "wall_s", "cpu_s", "fingerprint"]
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
