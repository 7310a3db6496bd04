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

        from pipeline.kinds.pool import shard_runner
        from pipeline.progress import LiveCount, StageProgress
        from pipeline.stage import ShardJob, run_shard

        ctx.ensure_ray()
        stage = ctx.stage
        live = LiveCount.start()
        jobs = [ShardJob(stage.name, stage.model_dump_json(), ctx.stage_url, shard, ctx.shards[shard], ctx.first,
                         ctx.fingerprint, input_id=ctx.input_ids[shard], progress=live.actor,
                         log_path=ctx.rundir.task_log(ctx.stage_dir, shard)) for shard in pending]
        runner = shard_runner(stage, run_shard, len(jobs))
        futures = runner.start({job.shard: (job,) for job in jobs})
        failures: list[dict[str, str]] = []
        finished_docs = 0
        with StageProgress(f"{ctx.index:02d}_{stage.name}", total=len(pending)) as progress:
            while futures:
                ready, _ = ray.wait(list(futures), num_returns=len(futures), timeout=0.5)
                live_docs = live.total()
                for ref in ready:
                    shard = futures.pop(ref)
                    futures |= runner.next(ref)
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
        ctx.notes |= runner.close()
        return failures

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        summary.update(ctx.notes)

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

