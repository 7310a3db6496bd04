"""The map kind: a chain of document steps, one Ray task per input shard."""

from __future__ import annotations

import json
import logging
from typing import Any

from filters import STEPS
from pipeline.kinds.base import StageContext, StageKind

log = logging.getLogger("winnow.run")

# Modules every map stage runs through, whatever its steps.
RUNTIME_MODULES = ["filters.base", "pipeline.stage", "pipeline.parquet_io", "pipeline.schema"]


class MapKind(StageKind):
    name = "map"

    def validate(self, stage, index: int) -> None:
        for section in ("dedup", "synth"):
            if getattr(stage, section) is not None:
                raise ValueError(f"stage {stage.name!r}: `{section}:` needs `kind: {section}`")

    def fingerprint_parts(self, stage) -> tuple[list[str], dict[str, dict[str, str]]]:
        modules = list(RUNTIME_MODULES)
        versions: dict[str, dict[str, str]] = {}
        for i, step in enumerate(stage.steps):
            cls = STEPS[step["type"]]
            modules.append(cls.__module__)
            versions[f"{i}:{cls.type_name}"] = cls.versions(cls.Params(**step))
        return modules, versions

    def run(self, ctx: StageContext, pending: list[str]) -> list[dict[str, str]]:
        import ray

        from pipeline.progress import LiveCount, StageProgress
        from pipeline.stage import ShardJob, run_shard

        ctx.ensure_ray()
        stage = ctx.stage
        task = ray.remote(run_shard).options(
            num_cpus=stage.resources.num_cpus,
            num_gpus=stage.resources.num_gpus,
            memory=(stage.resources.memory_mb << 20) if stage.resources.memory_mb else None,
            max_retries=stage.max_retries,
            retry_exceptions=False,
        )
        stage_json = stage.model_dump_json()
        live = LiveCount.start()
        futures = {}
        for shard in pending:
            job = ShardJob(stage.name, stage_json, ctx.stage_url, shard, ctx.shards[shard], ctx.first,
                           ctx.fingerprint, input_id=ctx.input_ids[shard], progress=live.actor)
            futures[task.remote(job)] = shard
        failures: list[dict[str, str]] = []
        finished_docs = 0
        with StageProgress(f"{ctx.index:02d}_{stage.name}", total=len(pending)) as progress:
            remaining = list(futures)
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.5)
                live_docs = live.total()
                for ref in ready:
                    shard = futures[ref]
                    try:
                        record: dict[str, Any] = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - one bad shard must not stop the run
                        failures.append(shard_failure(stage.name, shard, ctx.shards[shard], exc))
                        progress.update(live_docs, failed=1)
                        continue
                    ctx.done[shard] = record
                    finished_docs += record["rows_in"]
                    for message in record.get("messages", []):
                        log.warning("%s/%s: %s", stage.name, shard, message)
                    progress.update(max(live_docs, finished_docs), shards_done=1)
                if not ready:
                    progress.update(live_docs)
        live.stop()
        return failures

    def describe(self, stage: dict[str, Any]) -> str:
        steps = []
        for step in stage.get("steps") or []:
            params = {k: v for k, v in step.items() if k != "type"}
            steps.append(f"`{step['type']}` {json.dumps(params)}" if params else f"`{step['type']}`")
        return "; ".join(steps)


def shard_failure(stage_name: str, shard: str, input_path: str, exc: BaseException) -> dict[str, str]:
    """A failed shard as the manifest records it, logged with its input."""
    lines = str(exc).strip().splitlines()
    message = (lines[-1] if lines else type(exc).__name__)[:500]
    log.error("stage %s shard %s (%s) failed: %s", stage_name, shard, input_path, message)
    return {"shard": shard, "input": input_path, "error": message}
