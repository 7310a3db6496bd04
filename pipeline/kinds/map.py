"""The map kind: a chain of document steps, one Ray task per input shard."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from filters import STEPS
from pipeline.kinds.base import StageContext, StageKind

if TYPE_CHECKING:
    from pipeline.config import MapStage
    from pipeline.kinds.pool import ShardCalls


class MapKind(StageKind):
    name = "map"

    def fingerprint_parts(self, stage: MapStage) -> tuple[list[str], dict[str, dict[str, str]]]:
        # The steps this stage runs: their modules join this one's imports in the stage's source digest.
        modules = []
        versions: dict[str, dict[str, str]] = {}
        for i, step in enumerate(stage.steps):
            cls = STEPS[step["type"]]
            modules.append(cls.__module__)
            versions[f"{i}:{cls.type_name}"] = cls.versions(cls.Params(**step))
        return modules, versions

    def shard_calls(self, ctx: StageContext) -> ShardCalls:
        from pipeline.kinds.pool import ShardCalls
        from pipeline.progress import LiveCount
        from pipeline.stage import ShardJob, map_shard

        stage, live = ctx.stage, LiveCount.start()
        stage_json = stage.model_dump_json()

        def args(shard: str) -> tuple:
            return (ShardJob(stage.name, stage_json, ctx.stagedir, shard, ctx.shards[shard], ctx.first,
                             ctx.fingerprint, input_id=ctx.input_ids[shard], progress=live.actor,
                             log_path=ctx.rundir.task_log(ctx.stagedir.dirname, shard)),)

        return ShardCalls(map_shard, args, live.total, live.stop)

    def describe(self, stage: dict[str, Any]) -> str:
        steps = []
        for step in stage.get("steps") or []:
            params = {k: v for k, v in step.items() if k != "type"}
            steps.append(f"`{step['type']}` {json.dumps(params)}" if params else f"`{step['type']}`")
        return "; ".join(steps)

