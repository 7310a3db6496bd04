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

import fsspec

from pipeline.kinds.base import StageContext, StageKind

if TYPE_CHECKING:
    from pipeline.config import SynthStage
    from pipeline.kinds.pool import ShardCalls
    from pipeline.owner import RunOwner
    from pipeline.stagedir import StageDir

log = logging.getLogger("winnow.run")

# Summed from the shards' records into the manifest's `synth` entry, then shown by status and the report.
COUNTS = ("instructions", "rejected", "rephrased", "json_repaired", "judged", "requests", "completed",
          "cache_hits", "retries", "bad_requests", "failed_requests", "bad_usage", "prompt_tokens",
          "completion_tokens")


class SynthKind(StageKind):
    name = "synth"
    section = "synth"
    passes_documents_through = True
    folders = ("instructions", "instructions/rejected", "rephrased")

    def validate(self, stage: SynthStage, index: int) -> None:
        # Its keys, `synth:` included, were checked by its config model (pipeline.config.SynthStage).
        if index == 0:
            raise ValueError(f"stage {stage.name!r}: a synth stage needs a stage before it that extracts text")

    def fingerprint_parts(self, stage: SynthStage) -> tuple[list[str], dict[str, dict[str, str]]]:
        versions = {name: version(name) for name in ("jinja2", "aiohttp", "lxml", "datasketch")}
        return [], {"synth": versions, "synth_files": data_digests(stage.synth)}

    def shard_calls(self, ctx: StageContext) -> ShardCalls:
        from llmclient.ratelimit import make_limiter
        from pipeline.kinds.pool import ShardCalls

        stage, params = ctx.stage, ctx.stage.synth
        # One limiter for the whole cluster: a named actor every shard task finds by the endpoint.
        limiter = None
        if params.generator == "llm":
            mode = "ray" if params.rate_limiter == "auto" else params.rate_limiter
            limiter = make_limiter(params.endpoint, params.requests_per_s, params.tokens_per_min, mode)
        cache_dir = ctx.rundir.url(ctx.rundir.llm_cache(stage.name))
        params_json = params.model_dump_json()
        owner = ctx.rundir.owner()  # a task stops once this run has ended (pipeline/owner.py)

        # A `local` generator loads its checkpoint once per process: on a GPU, the pool keeps it loaded.
        def args(shard: str) -> tuple:
            return (params_json, ctx.stagedir, shard, ctx.shards[shard], ctx.input_ids[shard], ctx.fingerprint,
                    cache_dir, limiter, owner)

        return ShardCalls(synth_shard_task, args)

    def shard_next(self, ctx: StageContext, shard: str, record: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {shard: (ctx.shards[shard], ctx.input_ids[shard])}

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        from pipeline.stagedir import merge_counts

        merged = merge_counts(r["synth"] for r in ctx.done.values())
        synth: dict[str, Any] = {key: merged.get(key, 0) for key in COUNTS}
        synth |= {key: merged.get(key, {}) for key in ("drop_reasons", "by_recipe", "retry_causes")}
        synth["cost_usd"] = round(merged.get("cost_usd", 0), 6)
        params = ctx.stage.synth
        synth |= {"generator": params.generator, "model": params.model or params.checkpoint,
                  "recipes": [r.name for r in params.recipes]}
        summary["synth"] = synth
        if len(ctx.done) == len(ctx.shards):
            summary["published"] = publish(ctx)

    def describe(self, stage: dict[str, Any]) -> str:
        synth = stage.get("synth") or {}
        recipes = ", ".join(r.get("name", "?") for r in synth.get("recipes", []))
        return (f"synthetic instruction data (`{synth.get('generator')}` generator, recipes: {recipes}); "
                "documents pass through unchanged")


def data_digests(params: Any) -> dict[str, str]:
    """Digests of the files a synth stage reads besides its input: the prompt templates of its recipes
    (configs/synth/*.j2 or the recipe's own), the judge's, the seed tasks, a `local` generator's
    checkpoint and the QC's eval sets. A changed
    template makes other prompts, so other answers: the stage is recomputed (answers already paid for stay
    in the LLM cache)."""
    import hashlib

    import fsspec

    from pipeline.synth.recipes import TEMPLATES

    def digest(path: Any) -> str:
        try:
            with fsspec.open(str(path), "rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()[:16]
        except FileNotFoundError:
            return "missing"  # the stage reports it when it runs

    found = {}
    if params.generator != "webqa":  # webqa mines pages: no prompt
        for recipe in params.recipes:
            found[f"recipe:{recipe.name}"] = digest(recipe.template or TEMPLATES / f"{recipe.name}.j2")
        if params.seed_tasks:
            found["seed_tasks"] = digest(params.seed_tasks)
    if params.qc.judge:  # webqa pairs are judged too, when it has a model
        found["judge"] = digest(params.qc.judge_template or TEMPLATES / "judge.j2")
    if params.checkpoint and params.generator in ("local", "webqa"):  # the model itself: its weights, not its path
        from pipeline.synth.checkpoint_digest import checkpoint_digest

        try:
            found["checkpoint"] = checkpoint_digest(params.checkpoint)
        except FileNotFoundError:
            found["checkpoint"] = "missing"  # the stage reports it when it runs
    if params.qc.decont:
        from filters.decont import DecontParams, sets_digest

        found["decont"] = sets_digest(DecontParams(**{**params.qc.decont, "type": "decont"}))
    return found


def synth_shard_task(params_json: str, stagedir: StageDir, shard: str, input_path: str, input_id: str,
                     fingerprint: str, cache_dir: str, limiter: Any, owner: RunOwner | None = None) -> dict[str, Any]:
    """Compute one shard: generate its instructions (in the stage's folders); return its completion record.
    Once its run has ended (`owner`) it stops with RunEnded, so that it never writes that record."""
    from collections import Counter

    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.stage import completion_record
    from pipeline.synth.params import SynthParams
    from pipeline.synth.shard import run_synth_shard

    params = SynthParams.model_validate_json(params_json)
    result = run_synth_shard(params, input_path, stagedir.file_url("instructions"), shard, cache_dir,
                             rephrased_dir=stagedir.file_url("rephrased"), limiter=limiter, owner=owner)
    outputs = result.pop("outputs")
    failure = result.pop("first_failure", None)
    if result["failed_requests"]:
        # Rows are missing: the shard is not complete. Raising leaves no completion record, so the stage
        # reports the shard failed (and the run exits non-zero), and the next run or --retry-failed asks
        # again; the answers that did come back are in the LLM cache and are not paid for twice.
        raise RuntimeError(f"synth shard {shard}: {result['failed_requests']} request(s) still failed after "
                           f"{params.max_retries} retries, so their rows are missing (first: {failure}); the "
                           f"{result['completed'] + result['cache_hits']} answers received are kept in the LLM "
                           "cache: run again, or `winnow run RUN_DIR --retry-failed`, once the endpoint answers")
    if owner is not None:
        owner.check()  # the last check before the completion record is written (StageDir.finish)
    names = {k: [v.rsplit("/", 1)[-1]] if v else [] for k, v in outputs.items()}
    docs = result["docs_in"]
    with fsspec.open(input_path, "rb") as f:  # the upstream stage's text, counted as this stage's output
        text = pq.read_table(f, columns=["text"]).column("text")
    chars = pc.sum(pc.utf8_length(text)).as_py() or 0
    # Documents pass through: none is dropped here. The files this shard made are listed so that a
    # rerun reuses the shard only while they are all there.
    return completion_record(shard, fingerprint, input_path, [], [], docs, docs, Counter(), input_id=input_id,
                             synth=result, chars_out=chars,
                             files=[f"instructions/{n}" for n in names["instructions"]] +
                                   [f"instructions/rejected/{n}" for n in names["rejected"]] +
                                   [f"rephrased/{n}" for n in names["rephrased"]])


def publish(ctx: StageContext) -> dict[str, list[str]]:
    """Copy every shard's instructions and rephrased documents to RUN_DIR/instructions/ and rephrased/."""
    rundir = ctx.rundir
    published = {}
    for kind, target in (("instructions", rundir.instructions), ("rephrased", rundir.rephrased)):
        files = [f for s in sorted(ctx.done) for f in ctx.done[s].get("files", [])
                 if f.startswith(f"{kind}/part-")]
        rundir.replace_published(target, {f.rsplit("/", 1)[-1]: ctx.stagedir.file(f) for f in files},
                                 {"fingerprint": ctx.fingerprint})  # a rerun with other settings republishes
        published[kind] = [f.rsplit("/", 1)[-1] for f in files]
    return published
