"""One shard of the synth stage: curated documents in, instruction rows (and rephrased documents) out.

`run_synth_shard` reads a Parquet shard of documents a batch at a time, asks the configured generator
for every (document, recipe, sample) the recipes route to it, parses and checks every answer, and
writes, each under a temporary name renamed into place on close:

    out_dir/part-<shard>-000.parquet            kept instruction rows (INSTRUCTION_COLUMNS)
    out_dir/rejected/part-<shard>-000.parquet   dropped rows, with drop_reason, drop_stage and the raw answer
    rephrased_dir/part-<shard>-000.parquet      rephrased documents, in the document columns

Answers come from the request cache when it has them (cache_dir/<shard>/), so a rerun or a resumed
shard sends nothing that already completed and writes the same bytes. Given its run's `owner`
(pipeline/owner.py), a shard stops with RunEnded once that run has ended: it checks before each batch,
while requests are in flight, and before each cache segment on object storage, and it holds the shard's
cache as its only writer (llmclient/cache.py). The returned dict is the shard's
accounting for its completion record: rows, drop reasons, requests, cache hits, retries, tokens, cost.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow as pa

from llmclient.cache import RequestCache
from llmclient.client import AsyncLLMClient, Request, Result, run_sync
from llmclient.ratelimit import make_limiter
from pipeline.owner import OWNER_CHECK_S
from pipeline.parquet_io import ShardWriter, empty_parquet, iter_parquet
from pipeline.schema import DOC_COLUMNS, REJECTED_COLUMNS, schema_for
from pipeline.storage import write_bytes
from pipeline.synth import webqa
from pipeline.synth.params import SynthParams
from pipeline.synth.qc import QC, REFUSAL
from pipeline.synth.recipes import InvalidAnswer, Recipe, judge_prompt, load_seed_tasks, parse_judge

if TYPE_CHECKING:
    from pipeline.owner import RunOwner

log = logging.getLogger("winnow.synth")

INSTRUCTION_COLUMNS: dict[str, pa.DataType] = {
    "instruction": pa.string(), "input": pa.string(), "output": pa.string(), "source_id": pa.string(),
    "generator": pa.string(), "score": pa.float32(), "model": pa.string(), "recipe": pa.string(),
    "prompt_tokens": pa.int32(), "completion_tokens": pa.int32(),
}
REJECTED_INSTRUCTION_COLUMNS = {**INSTRUCTION_COLUMNS, **REJECTED_COLUMNS, "raw": pa.string()}
REPHRASED_COLUMNS = {**{k: DOC_COLUMNS[k] for k in ("id", "url", "domain", "crawl_date", "text", "language",
                                                     "quality_score", "source_file", "source_offset")},
                     "source_id": pa.string(), "recipe": pa.string(), "model": pa.string(),
                     "generator": pa.string(), "prompt_tokens": pa.int32(), "completion_tokens": pa.int32()}
ONE_FILE_MB = 1 << 20  # a shard's output stays one file; row groups of 64 MB bound the memory


def _instruction_schema() -> pa.Schema:
    return pa.schema(list(INSTRUCTION_COLUMNS.items()))


def _rejected_schema() -> pa.Schema:
    return pa.schema(list(REJECTED_INSTRUCTION_COLUMNS.items()))


class _Output:
    """A ShardWriter that always leaves a file, so an empty shard still has its (empty) part."""

    def __init__(self, fs: fsspec.AbstractFileSystem, prefix: str, schema: pa.Schema):
        self.fs, self.prefix, self.schema = fs, prefix, schema
        self.writer = ShardWriter(fs, prefix, schema, ONE_FILE_MB, 64)

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.writer.write(rows)

    def close(self) -> str:
        paths = self.writer.close()
        if paths:
            return paths[0]
        final = f"{self.prefix}-000.parquet"
        write_bytes(self.fs, final, empty_parquet(self.schema))
        return final

    def abort(self) -> None:
        """Drop the file being written, after an error: no temporary or half-uploaded file is left behind."""
        self.writer.abort()


def _make_generator(p: SynthParams, shard: str, cache: RequestCache, limiter: Any, owner: RunOwner | None) -> Any:
    if p.generator == "local" or (p.generator == "webqa" and p.checkpoint):  # webqa: the judge's model
        from pipeline.synth.checkpoint_digest import checkpoint_digest
        from pipeline.synth.local import LocalGenerator

        # Answers are cached under the checkpoint's contents: a new model at the same path asks again.
        name = p.model or os.path.basename(p.checkpoint.rstrip("/"))
        return LocalGenerator(p.checkpoint, f"{name}@{checkpoint_digest(p.checkpoint)}", p.device, cache,
                              batch_size=p.concurrency)
    limiter = limiter if limiter is not None else make_limiter(p.endpoint, p.requests_per_s, p.tokens_per_min,
                                                               p.rate_limiter)
    return AsyncLLMClient(p.endpoint, p.model, os.environ.get(p.api_key_env), concurrency=p.concurrency,
                          timeout_s=p.timeout_s, connect_timeout_s=p.connect_timeout_s, max_retries=p.max_retries,
                          backoff_s=p.backoff_s, backoff_max_s=p.backoff_max_s, limiter=limiter, cache=cache,
                          owner=owner.check if owner is not None else None, owner_check_s=OWNER_CHECK_S)


class _ShardJob:
    def __init__(self, p: SynthParams, shard: str, cache_dir: str, limiter: Any, owner: RunOwner | None):
        self.p, self.shard = p, shard
        self.qc = QC(p.qc)
        self.model_name = p.model or (os.path.basename(p.checkpoint.rstrip("/")) if p.checkpoint else "")
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.by_recipe: Counter = Counter()
        self.cache = None
        self.generator = None
        self.decont_index = None
        self.failure: str | None = None  # the first request that failed for good: what the shard's error names
        if p.generator != "webqa":
            seeds = load_seed_tasks(p.seed_tasks) if p.seed_tasks else None
            self.recipes = [Recipe(r, seeds) for r in p.recipes]
        if p.generator != "webqa" or (p.qc.judge and (p.checkpoint or p.endpoint)):  # webqa pairs can be judged
            self.cache = RequestCache(cache_dir, shard, fsync=p.cache_fsync,
                                      owner=owner.check if owner is not None else None)
            try:
                self.generator = _make_generator(p, shard, self.cache, limiter, owner)
            except BaseException:
                self.cache.close()  # and with it the shard's writer lock
                raise

    def row(self, doc: dict[str, Any], fields: dict[str, str], recipe: str, result: Result | None,
            first: bool) -> dict[str, Any]:
        return {**fields, "source_id": str(doc.get("id")), "generator": self.p.generator, "score": None,
                "model": self.model_name, "recipe": recipe,
                "prompt_tokens": result.prompt_tokens if result and first else 0,
                "completion_tokens": result.completion_tokens if result and first else 0}

    def reject(self, row: dict[str, Any], reason: str, raw: str | None = None) -> dict[str, Any]:
        self.reasons[reason] += 1
        return {**row, "drop_reason": reason, "drop_stage": "synth", "raw": raw}

    # -- one batch -------------------------------------------------------------------------------
    def batch(self, docs: list[dict[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
        candidates: list[tuple[dict, dict, tuple]] = []  # (row, source doc, best-of group key)
        rejected: list[dict] = []
        rephrased: list[dict] = []
        if self.p.generator == "webqa":
            for doc in docs:
                for k, pair in enumerate(webqa.mine(doc, self.p.webqa)):
                    fields = {"instruction": pair["instruction"], "input": "", "output": pair["output"]}
                    row = self.row(doc, fields, f"webqa:{pair['method']}", None, False)
                    # The answer is the page's own text by design: no echo check.
                    reason = self.qc.check_instruction(row, doc, echo_exempt=True)
                    (rejected.append(self.reject(row, reason)) if reason else
                     candidates.append((row, doc, (doc.get("id"), "webqa", k))))
        else:
            candidates, rejected, rephrased = self._generate(docs)
        if self.p.qc.judge and candidates:
            candidates, more = self._judge(candidates)
            rejected += more
        if self.p.best_of > 1:
            candidates, more = self._best_of(candidates)
            rejected += more
        kept = []
        for row, _, _ in candidates:
            if self.qc.is_near_duplicate(row["instruction"]):
                rejected.append(self.reject(row, "synth:near_duplicate"))
            else:
                kept.append(row)
        if self.p.qc.decont:
            kept, rejected = self._decont(kept, rejected, ("instruction", "input", "output"))
            rephrased, _ = self._decont(rephrased, [], ("text",))
        for row in kept:
            self.by_recipe[row["recipe"]] += 1
        return kept, rejected, rephrased

    def _decont(self, rows: list[dict], rejected: list[dict], columns: tuple[str, ...]) -> tuple[list, list]:
        """Drop rows that share an n-gram with an eval set (rephrased documents are counted, not kept)."""
        from filters.decont import DecontParams, contaminated, index_for

        if self.decont_index is None:  # once per shard: finding the index digests the eval set files
            self.decont_index = index_for(DecontParams(**self.p.qc.decont))
        clean = []
        for row, reason in zip(rows, contaminated(rows, self.decont_index, columns), strict=True):
            if reason is None:
                clean.append(row)
            elif "text" in columns:
                self.reasons[reason] += 1
            else:
                rejected.append(self.reject(row, reason))
        return clean, rejected

    def _generate(self, docs: list[dict[str, Any]]) -> tuple[list, list, list]:
        jobs, requests = [], []
        for doc in docs:
            for recipe in self.recipes:
                if not recipe.applies(doc):
                    continue
                messages = recipe.render(doc)
                prompt: Any = messages if self.p.chat else "\n\n".join(m["content"] for m in messages)
                for sample in range(self.p.samples):
                    jobs.append((doc, recipe, sample))
                    requests.append(Request(prompt, self.p.sampling(sample), sample))
        results = run_sync(self.generator.run(requests)) if requests else []
        candidates, rejected, rephrased = [], [], []
        for (doc, recipe, sample), result in zip(jobs, results, strict=True):
            empty = self.row(doc, {"instruction": "", "input": "", "output": ""}, recipe.name, result, True)
            if result.status != "ok":
                reason = "synth:bad_request" if result.status == "bad_request" else "synth:request_failed"
                if result.status == "failed" and self.failure is None:
                    self.failure = result.error
                rejected.append(self.reject(empty, reason, result.error))
                continue
            if self.p.qc.refusals and REFUSAL.search((result.text or "")[:300]):
                rejected.append(self.reject(empty, "synth:refusal", result.text))  # before parsing: say why
                continue
            try:
                rows, repaired = recipe.parse(result.text or "", doc)
            except InvalidAnswer as exc:
                rejected.append(self.reject(empty, exc.reason, result.text))
                continue
            self.counts["json_repaired"] += int(repaired)
            if recipe.output == "text":
                text = rows[0]["text"]
                reason = self.qc.check_text(text, doc)
                if reason:
                    rejected.append(self.reject({**empty, "output": text}, reason, result.text))
                    continue
                rephrased.append({k: doc.get(k) for k in REPHRASED_COLUMNS if k in DOC_COLUMNS} | {
                    "id": f"{doc.get('id')}/{recipe.name}/{sample}", "text": text, "source_id": str(doc.get("id")),
                    "recipe": recipe.name, "model": self.model_name, "generator": self.p.generator,
                    "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens})
                self.by_recipe[recipe.name] += 1
                continue
            for k, fields in enumerate(rows):
                row = self.row(doc, fields, recipe.name, result, k == 0)
                reason = self.qc.check_instruction(row, doc, echo_exempt=recipe.output == "instruction",
                                                   grounded=recipe.output == "pairs")
                if reason:
                    rejected.append(self.reject(row, reason, result.text))
                else:
                    candidates.append((row, doc, (doc.get("id"), recipe.name, sample)))
        return candidates, rejected, rephrased

    def _judge(self, candidates: list) -> tuple[list, list]:
        sampling = {"temperature": 0.0, "max_tokens": 128}
        requests = [Request(judge_prompt(row, self.p.qc.judge_template), sampling) for row, _, _ in candidates]
        if self.generator is None:  # webqa without a checkpoint or endpoint has no model to judge with
            return candidates, []
        results = run_sync(self.generator.run(requests))
        self.failure = self.failure or next((r.error for r in results if r.status == "failed"), None)
        kept, rejected = [], []
        for (row, doc, group), result in zip(candidates, results, strict=True):
            row["score"] = parse_judge(result.text) if result.status == "ok" else None
            self.counts["judged"] += 1
            if self.p.qc.min_score is not None and (row["score"] is None or row["score"] < self.p.qc.min_score):
                rejected.append(self.reject(row, "synth:judge_below_min", result.text))
            else:
                kept.append((row, doc, group))
        return kept, rejected

    def _best_of(self, candidates: list) -> tuple[list, list]:
        """Keep, per (document, recipe), the sample whose rows scored best (the earliest sample on ties or
        without a judge): rejection sampling over best_of samples."""
        samples: dict[tuple, dict[int, list]] = defaultdict(lambda: defaultdict(list))
        for item in candidates:
            doc_id, recipe, sample = item[2]
            samples[(doc_id, recipe)][sample].append(item)
        best = {}
        for key, by_sample in samples.items():
            def quality(sample: int, by_sample: dict = by_sample) -> tuple:
                scores = [r[0]["score"] for r in by_sample[sample] if r[0]["score"] is not None]
                return (sum(scores) / len(scores) if scores else float("-inf"), -sample)
            best[key] = max(by_sample, key=quality)
        kept, rejected = [], []
        for item in candidates:
            doc_id, recipe, sample = item[2]
            if best[(doc_id, recipe)] == sample:
                kept.append(item)
            else:
                rejected.append(self.reject(item[0], "synth:not_best"))
        return kept, rejected


def run_synth_shard(params: SynthParams, input_path: str, out_dir: str, shard: str, cache_dir: str, *,
                    rephrased_dir: str | None = None, limiter: Any = None,
                    owner: RunOwner | None = None) -> dict[str, Any]:
    """Generate, check and write one shard; return its counts and accounting (see the module docstring)."""
    start = time.monotonic()
    fs, root = fsspec.core.url_to_fs(out_dir)
    rfs, rroot = fsspec.core.url_to_fs(rephrased_dir or f"{out_dir.rstrip('/')}/rephrased")
    for f, d in ((fs, root), (fs, f"{root}/rejected"), (rfs, rroot)):
        f.makedirs(d, exist_ok=True)
    job = _ShardJob(params, shard, cache_dir, limiter, owner)
    outputs = {"instructions": _Output(fs, f"{root}/part-{shard}", _instruction_schema()),
               "rejected": _Output(fs, f"{root}/rejected/part-{shard}", _rejected_schema()),
               "rephrased": _Output(rfs, f"{rroot}/part-{shard}", schema_for(REPHRASED_COLUMNS))}
    docs_in = 0
    try:
        for docs in iter_parquet(input_path, params.batch_docs):
            if params.max_docs is not None:
                docs = docs[: max(0, params.max_docs - docs_in)]
            if not docs:
                break
            if owner is not None:
                owner.check()
            docs_in += len(docs)
            kept, rejected, rephrased = job.batch(docs)
            outputs["instructions"].write(kept)
            outputs["rejected"].write(rejected)
            outputs["rephrased"].write(rephrased)
            log.info("synth shard %s: %d documents, %d instructions kept", shard, docs_in, sum(job.by_recipe.values()))
        if owner is not None:
            owner.check()  # a shard whose run has ended must not put its files in place
        paths = {name: out.close() for name, out in outputs.items()}
    except (OSError, pa.ArrowException) as exc:  # an unreadable shard: name it, leave no partial output
        for out in outputs.values():
            out.abort()
        raise RuntimeError(f"synth shard {shard}: cannot read {input_path}: {exc}") from exc
    except BaseException:
        for out in outputs.values():
            out.abort()
        raise
    finally:
        if job.cache is not None:
            job.cache.close()
    stats = job.generator.stats.as_dict() if job.generator is not None else {}
    cost = (stats.get("prompt_tokens", 0) * params.price_input_per_mtok
            + stats.get("completion_tokens", 0) * params.price_output_per_mtok) / 1e6
    return {
        "shard": shard, "input": input_path, "docs_in": docs_in,
        "instructions": outputs["instructions"].writer.rows, "rejected": outputs["rejected"].writer.rows,
        "rephrased": outputs["rephrased"].writer.rows,
        "drop_reasons": dict(sorted(job.reasons.items())), "by_recipe": dict(sorted(job.by_recipe.items())),
        "json_repaired": job.counts["json_repaired"], "judged": job.counts["judged"],
        "requests": stats.get("requests", 0), "completed": stats.get("completed", 0),
        "cache_hits": stats.get("cache_hits", 0), "retries": stats.get("retries", 0),
        "retry_causes": stats.get("retry_causes", {}), "bad_requests": stats.get("bad_requests", 0),
        "failed_requests": stats.get("failed", 0), "first_failure": job.failure,
        "bad_usage": stats.get("bad_usage", 0), "prompt_tokens": stats.get("prompt_tokens", 0),
        "completion_tokens": stats.get("completion_tokens", 0), "cost_usd": round(cost, 6),
        "generator": params.generator, "model": job.model_name, "outputs": paths,
        "wall_s": round(time.monotonic() - start, 3),
    }
