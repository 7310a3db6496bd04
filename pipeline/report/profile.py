"""Where the run's CPU went, part by part: each step of each stage, reading and writing, the dedup phases,
and what no shard saw (Ray, the driver, process start-up), each per 1,000 documents in and per 1,000 kept.

The parts come from the manifest: every map shard measures its own (pipeline/cputime.Costs), the dedup
stage its phases, the run its whole process tree (pipeline/runcost.py). A stage's CPU that none of its
parts explains (a synth stage's requests, a task's own set-up) is its `other` row, so the rows add up to
the run's CPU.
"""

from __future__ import annotations

from typing import Any

# The dedup phase that writes the shards is already in the stage's shard records.
WRITE_PHASE = "write"


def _stage_parts(stage: dict[str, Any]) -> list[tuple[str, float]]:
    parts = [(name, spent.get("cpu_s", 0.0)) for name, spent in (stage.get("costs") or {}).items()]
    phases = (stage.get("dedup") or {}).get("phases") or {}
    parts += [(f"dedup {name}", p.get("cpu_s", 0.0)) for name, p in phases.items() if name != WRITE_PHASE]
    other = stage.get("cpu_s", 0.0) - sum(cpu for _, cpu in parts)
    if other > 0.0005 * max(stage.get("cpu_s", 0.0), 1.0) or not parts:
        label = ("dedup write" if phases else "other") if parts else stage.get("kind", "stage")
        parts.append((label, max(other, 0.0)))
    return parts


def cost_profile(manifest: dict[str, Any], docs_in: int, docs_kept: int) -> dict[str, Any]:
    """Rows of (stage, part, CPU seconds, per 1,000 in, per 1,000 kept, share), largest first, and the
    run-level figures. Stages reused from an earlier run count their costs from when they ran."""
    rows = []
    for stage in manifest.get("stages", []):
        reused = stage.get("shards", {}).get("computed", 0) == 0 and stage.get("shards", {}).get("done", 0) > 0
        for part, cpu in _stage_parts(stage):
            if cpu >= 0.0005:  # the rounding of a part that took nothing
                rows.append({"stage": stage["name"], "part": part, "cpu_s": cpu, "reused": reused})
    run = manifest.get("profile") or {}
    if run.get("ray_and_driver_cpu_s") is not None:
        rows.append({"stage": "(run)", "part": "Ray, driver and worker start-up",
                     "cpu_s": run["ray_and_driver_cpu_s"], "reused": False})
    elif run.get("driver_cpu_s") is not None:
        rows.append({"stage": "(run)", "part": "driver", "cpu_s": run["driver_cpu_s"], "reused": False})
    total = sum(r["cpu_s"] for r in rows)
    for r in rows:
        r["per_1k_in_s"] = 1000 * r["cpu_s"] / docs_in if docs_in else None
        r["per_1k_kept_s"] = 1000 * r["cpu_s"] / docs_kept if docs_kept else None
        r["share"] = r["cpu_s"] / total if total else 0.0
    rows.sort(key=lambda r: -r["cpu_s"])
    return {"rows": rows, "cpu_s": total, "docs_in": docs_in, "docs_kept": docs_kept,
            "wall_s": run.get("wall_s"), "cpus": run.get("cpus"), "idle_core_s": run.get("idle_core_s"),
            "sampling": run.get("sampling")}


def chart_items(profile: dict[str, Any], top: int = 16) -> list[dict[str, Any]]:
    """The largest parts for the bar chart, in CPU milliseconds per 1,000 documents in."""
    return [{"label": f"{r['stage']} · {r['part']}", "count": round(1000 * (r["per_1k_in_s"] or 0))}
            for r in profile["rows"][:top] if r["cpu_s"] > 0]
