"""The synth kind: instruction data (and rephrased documents) generated from curated documents.

A synth stage reads the documents of the stage before it and passes them on unchanged, so the
stages after it and `output/` see the same documents; what it makes goes beside them. Each shard
writes, in its stage directory, `instructions/part-*.parquet`, `instructions/rejected/` (rows with
their `drop_reason`) and `rephrased/` documents; once every shard is done the run publishes them to
`RUN_DIR/instructions/` and `RUN_DIR/rephrased/`. Every answer an LLM gave is kept in
`RUN_DIR/cache/llm/`, outside the stage directory, so a changed check or recipe list never pays
again for a request that already completed.
"""

from __future__ import annotations

import logging
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from pipeline.kinds.base import StageContext, StageKind

if TYPE_CHECKING:
    from pipeline.kinds.pool import ShardCalls

log = logging.getLogger("winnow.run")

MODULES = ["pipeline.synth.shard", "pipeline.synth.params", "pipeline.synth.recipes", "pipeline.synth.qc",
           "pipeline.synth.webqa", "pipeline.synth.jsonrepair", "llmclient.client", "llmclient.cache",
           "pipeline.synth.local", "pipeline.kinds.synth", "pipeline.stage", "pipeline.parquet_io"]
# Summed from the shards' records into the manifest's `synth` entry, then shown by status and the report.
COUNTS = ("instructions", "rejected", "rephrased", "json_repaired", "judged", "requests", "completed",
          "cache_hits", "retries", "bad_requests", "failed_requests", "prompt_tokens", "completion_tokens")


class SynthKind(StageKind):
    name = "synth"
    section = "synth"
    passes_documents_through = True

    def validate(self, stage, index: int) -> None:
        from pydantic import ValidationError

        from pipeline.config import _describe
        from pipeline.synth.params import SynthParams

        if index == 0:
            raise ValueError(f"stage {stage.name!r}: a synth stage needs a stage before it that extracts text")
        if stage.steps:
            raise ValueError(f"stage {stage.name!r}: a synth stage takes a `synth:` section, not steps")
        if stage.dedup is not None:
            raise ValueError(f"stage {stage.name!r}: `dedup:` needs `kind: dedup`")
        try:
            stage.synth = SynthParams(**(stage.synth or {})).model_dump(mode="json")
        except ValidationError as exc:
            raise ValueError(f"stage {stage.name!r}: synth: {_describe(exc, SynthParams)}") from None

    def fingerprint_parts(self, stage) -> tuple[list[str], dict[str, dict[str, str]]]:
        versions = {name: version(name) for name in ("jinja2", "aiohttp", "lxml", "datasketch")}
        return list(MODULES), {"synth": versions}

    def shard_calls(self, ctx: StageContext) -> ShardCalls:
        from llmclient.ratelimit import make_limiter
        from pipeline.kinds.pool import ShardCalls
        from pipeline.synth.params import SynthParams

        stage, params = ctx.stage, SynthParams(**ctx.stage.synth)
        # One limiter for the whole cluster: a named actor every shard task finds by the endpoint.
        limiter = None
        if params.generator == "llm":
            mode = "ray" if params.rate_limiter == "auto" else params.rate_limiter
            limiter = make_limiter(params.endpoint, params.requests_per_s, params.tokens_per_min, mode)
        cache_dir = ctx.rundir.url(ctx.rundir.llm_cache(stage.name))
        params_json = params.model_dump_json()

        # A `local` generator loads its checkpoint once per process: on a GPU, the pool keeps it loaded.
        def args(shard: str) -> tuple:
            return (stage.name, params_json, ctx.stage_url, shard, ctx.shards[shard], ctx.input_ids[shard],
                    ctx.fingerprint, cache_dir, limiter)

        return ShardCalls(synth_shard_task, args)

    def shard_next(self, ctx: StageContext, shard: str, record: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {shard: (ctx.shards[shard], ctx.input_ids[shard])}

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        synth: dict[str, Any] = {key: sum(r["synth"].get(key, 0) for r in ctx.done.values()) for key in COUNTS}
        for key in ("drop_reasons", "by_recipe", "retry_causes"):
            merged: dict[str, int] = {}
            for record in ctx.done.values():
                for name, n in record["synth"].get(key, {}).items():
                    merged[name] = merged.get(name, 0) + n
            synth[key] = dict(sorted(merged.items()))
        synth["cost_usd"] = round(sum(r["synth"].get("cost_usd", 0) for r in ctx.done.values()), 6)
        params = ctx.stage.synth
        synth |= {"generator": params["generator"], "model": params.get("model") or params.get("checkpoint"),
                  "recipes": [r["name"] for r in params["recipes"]]}
        summary["synth"] = synth
        if len(ctx.done) == len(ctx.shards):
            summary["published"] = publish(ctx)

    def describe(self, stage: dict[str, Any]) -> str:
        synth = stage.get("synth") or {}
        recipes = ", ".join(r.get("name", "?") for r in synth.get("recipes", []))
        return (f"synthetic instruction data (`{synth.get('generator')}` generator, recipes: {recipes}); "
                "documents pass through unchanged")


def synth_shard_task(stage_name: str, params_json: str, stage_url: str, shard: str, input_path: str, input_id: str,
                     fingerprint: str, cache_dir: str, limiter: Any) -> dict[str, Any]:
    """One Ray task: generate a shard's instructions and write its completion record last."""
    import time
    from collections import Counter

    import fsspec
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.jsonfile import write_json
    from pipeline.stage import clear_shard, completion_record
    from pipeline.synth.params import SynthParams
    from pipeline.synth.shard import run_synth_shard

    wall0, cpu0 = time.perf_counter(), time.process_time()
    fs, stage_dir = fsspec.core.url_to_fs(stage_url)
    clear_shard(fs, stage_dir, shard)
    for sub in ("instructions", "instructions/rejected", "rephrased"):
        for path in fs.glob(f"{stage_dir}/{sub}/part-{shard}-*"):
            fs.rm(path)
    params = SynthParams.model_validate_json(params_json)
    result = run_synth_shard(params, input_path, f"{stage_url}/instructions", shard, cache_dir,
                             rephrased_dir=f"{stage_url}/rephrased", limiter=limiter)
    outputs = result.pop("outputs")
    names = {k: [v.rsplit("/", 1)[-1]] if v else [] for k, v in outputs.items()}
    docs = result["docs_in"]
    with fs.open(input_path, "rb") as f:  # the upstream stage's text, counted as this stage's output
        text = pq.read_table(f, columns=["text"]).column("text")
    chars = pc.sum(pc.utf8_length(text)).as_py() or 0
    # Documents pass through: none is dropped here. The files this shard made are listed so that a
    # rerun reuses the shard only while they are all there.
    record = completion_record(shard, fingerprint, input_path, [], [], docs, docs, Counter(), (wall0, cpu0),
                               input_id=input_id, synth=result, chars_out=chars,
                               files=[f"instructions/{n}" for n in names["instructions"]] +
                                     [f"instructions/rejected/{n}" for n in names["rejected"]] +
                                     [f"rephrased/{n}" for n in names["rephrased"]])
    write_json(fs, f"{stage_dir}/_done/{shard}.json", record)
    return record


def publish(ctx: StageContext) -> dict[str, list[str]]:
    """Copy every shard's instructions and rephrased documents to RUN_DIR/instructions/ and rephrased/."""
    rundir = ctx.rundir
    published = {}
    for kind, target in (("instructions", rundir.instructions), ("rephrased", rundir.rephrased)):
        files = [f for s in sorted(ctx.done) for f in ctx.done[s].get("files", [])
                 if f.startswith(f"{kind}/part-")]
        rundir.replace_published(target, {f.rsplit("/", 1)[-1]: f"{ctx.stage_dir}/{f}" for f in files},
                                 {"fingerprint": ctx.fingerprint})  # a rerun with other settings republishes
        published[kind] = [f.rsplit("/", 1)[-1] for f in files]
    return published
