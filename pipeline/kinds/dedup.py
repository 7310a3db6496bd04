"""The dedup kind: near-duplicate removal across every shard (pipeline/dedup/)."""

from __future__ import annotations

import json
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from pipeline.jsonfile import read_json
from pipeline.kinds.base import StageContext, StageKind

if TYPE_CHECKING:
    from pipeline.config import DedupStage


class DedupKind(StageKind):
    name = "dedup"
    global_input = True
    section = "dedup"

    def validate(self, stage: DedupStage, index: int) -> None:
        # Its keys were checked by its config model (pipeline.config.DedupStage); what is left is its place.
        if index == 0:
            raise ValueError(f"stage {stage.name!r}: a dedup stage needs a stage before it that extracts text")

    def fingerprint_parts(self, stage: DedupStage) -> tuple[list[str], dict[str, dict[str, str]]]:
        # This module's imports (pipeline.dedup.*) are the code that runs: see pipeline.fingerprint.
        return [], {"dedup": {name: version(name) for name in ("datasketch", "xxhash", "numpy",
                                                                           "pyarrow")}}

    def run(self, ctx: StageContext, pending: list[str]) -> list[dict[str, str]]:
        from pipeline.dedup.stage import run_dedup  # datasketch and scipy load only when needed

        ctx.ensure_ray()
        return run_dedup(ctx.stage, ctx.stagedir, ctx.fingerprint, ctx.shards, pending, ctx.done,
                         input_id=ctx.input_ids)

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        fs = ctx.stagedir.fs
        summary["dedup"] = read_json(fs, ctx.stagedir.file("_dedup.json")) or {}
        if not summary["dedup"]:
            # The phases' stats are written after the last shard: a driver lost in between leaves every shard
            # done and no summary, and a rerun has nothing to write. The saved decisions still hold the phases.
            saved = read_json(fs, ctx.stagedir.file("_decisions/decided.json")) or {}
            if saved.get("fingerprint") == ctx.fingerprint:
                summary["dedup"] = {"partitions": saved["parts"], "decisions_reused": True, "phases": saved["phases"],
                                    "phase_cpu_s": round(sum(p.get("cpu_s", 0) for p in saved["phases"].values()), 3)}
        # The shuffle phases' CPU belongs to the stage too, not only the final writes.
        summary["cpu_s"] = round(summary["cpu_s"] + summary["dedup"].get("phase_cpu_s", 0), 3)

    def describe(self, stage: dict[str, Any]) -> str:
        return f"near-duplicate removal (MinHash LSH, exact hashes) with {json.dumps(stage.get('dedup', {}))}"
