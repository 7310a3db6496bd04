"""The driver: resolve stages, skip what is done, run the rest through their kinds, write the manifest.

Ray is started (or joined) only when some shard has work to do, so a rerun of a finished run
only reads completion records and returns in well under a second.

Every completion record names the identity of its input (`input_id`): for the first stage the
input file's size and modification time (or its ETag on object storage), for later stages a
digest of the upstream shard's record, and for a stage whose every shard reads the whole input
(dedup) a digest of the whole input set. A shard is reused only when that identity still holds,
so a changed input file, a recomputed upstream shard or a changed set of shards is noticed.
"""

from __future__ import annotations

import io
import logging
import subprocess
import time
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

import fsspec
import yaml

from pipeline.config import ConfigError, RunConfig, StageConfig
from pipeline.deletion import remove
from pipeline.fingerprint import set_digest, stage_fingerprint
from pipeline.jsonfile import write_json
from pipeline.kinds import KINDS, StageContext
from pipeline.raycluster import RayConnection
from pipeline.runcost import RunCosts
from pipeline.rundir import RunDir, url_prefix
from pipeline.stagedir import merge_counts
from pipeline.storage import write_bytes
from pipeline.stream import Segment

log = logging.getLogger("winnow.run")


def input_identity(info: dict[str, Any]) -> str:
    """What says that an input file is the one a shard was computed from."""
    for key in ("VersionId", "ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}:{info.get('size')}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')}:mtime:{mtime}"


def expand_inputs(patterns: list[str]) -> dict[str, str]:
    """Input URL -> identity, for every file the patterns match, in sorted order."""
    found: dict[str, str] = {}
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        try:
            matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
            infos = [(m, fs.info(m)) for m in matches if fs.exists(m)]
        except OSError as exc:
            raise ConfigError(f"input: {pattern!r} cannot be listed: {exc}") from None
        files = [(m, info) for m, info in infos if info.get("type") != "directory"]
        if not files:
            raise ConfigError(f"input: {pattern!r} matches no file")
        for m, info in files:
            found[url_prefix(fs) + m] = input_identity(info)
    return dict(sorted(found.items()))


class Runner:
    def __init__(self, cfg: RunConfig, ray_address: str | None = None):
        self.cfg = cfg
        self.rundir = RunDir(cfg.output_dir)
        self.fs, self.root = self.rundir.fs, self.rundir.root
        self.ray = RayConnection(ray_address or cfg.ray.address, cfg.ray.num_cpus)

    def url(self, path: str) -> str:
        return self.rundir.url(path)

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        inputs = expand_inputs(self.cfg.input)
        self.rundir.claim()
        self.rundir.lock()
        log_handler = self._log_to_run_dir()
        started = datetime.now(UTC)
        costs = RunCosts(self.rundir, sample=self.cfg.profile)
        stages: list[dict[str, Any]] = []
        results_all: list[tuple[dict[str, Any], Any]] = []
        try:
            self.fs.makedirs(self.rundir.logs, exist_ok=True)
            with self.fs.open(self.rundir.run_yaml, "w") as f:
                yaml.safe_dump(self.cfg.model_dump(mode="json"), f, sort_keys=False)
            self._remove_unknown_stage_dirs()
            previous = ""
            shard_inputs = {f"{k:05d}": url for k, url in enumerate(inputs)}
            input_ids = {f"{k:05d}": identity for k, identity in enumerate(inputs.values())}
            for segment in self.segments():
                self.rundir.check_lock()
                plan = []
                for index in segment:
                    stage = self.cfg.stages[index]
                    previous = stage_fingerprint(stage, previous, list(inputs) if index == 0 else None)
                    plan.append((index, stage, previous))
                if KINDS[plan[0][1].kind].global_input:
                    results = [self.run_global_stage(*plan[0], shard_inputs, input_ids)]
                else:
                    results = self.run_segment(plan, shard_inputs, input_ids)
                results_all += results
                for summary, _ in results:
                    stages.append(summary)
                last = results[-1][1]
                shard_inputs, input_ids = KINDS[last.stage.kind].next_inputs(last)
                previous = results[-1][0]["fingerprint"]
                self._write_manifest(started, list(inputs), stages, None)
            output = self._publish_output(list(shard_inputs.values()), previous)
            changed = output.pop("changed")
            manifest = self._write_manifest(started, list(inputs), stages, output,
                                            profile=costs.read(results_all, self.ray))
            self._write_card(changed)
            return manifest
        except KeyboardInterrupt:
            self._write_manifest(started, list(inputs), stages, None, status="interrupted")
            log.warning("interrupted: finished shards are kept; run the same command again to resume")
            raise
        finally:
            costs.abandon()
            self.ray.shutdown()
            if log_handler is not None:
                self._close_log(log_handler)
            self.rundir.unlock()

    def context(self, index: int, stage: StageConfig, fingerprint: str) -> StageContext:
        """Stage `index` as its kind sees it: its StageDir and fingerprint; shards come later."""
        stagedir = self.rundir.stage(index, stage.name, KINDS[stage.kind].folders)
        return StageContext(self.rundir, index, stage, stagedir, fingerprint, {}, {}, ensure_ray=self.ray.ensure)

    def segments(self) -> list[list[int]]:
        """Stage indexes, grouped into the runs of per-shard stages that stream into each other
        (pipeline/stream.py); a global stage (dedup) is a segment of its own, as is every stage when
        `streaming` is off."""
        segments: list[list[int]] = []
        for index, stage in enumerate(self.cfg.stages):
            per_shard = not KINDS[stage.kind].global_input
            if (self.cfg.streaming and per_shard and segments
                    and not KINDS[self.cfg.stages[segments[-1][-1]].kind].global_input):
                segments[-1].append(index)
            else:
                segments.append([index])
        return segments

    def run_segment(self, plan: list[tuple[int, StageConfig, str]], inputs: dict[str, str],
                    input_ids: dict[str, str]) -> list[tuple[dict[str, Any], StageContext]]:
        contexts = [self.context(*step) for step in plan]
        levels = Segment(contexts, self.ray, len(inputs), self.rundir.check_lock).run(inputs, input_ids)
        return [(self._summary(level.ctx, level.reused, level.failures, level.wall_s), level.ctx) for level in levels]

    def run_global_stage(self, index: int, stage: StageConfig, fingerprint: str, inputs: dict[str, str],
                         input_ids: dict[str, str]) -> tuple[dict[str, Any], StageContext]:
        """A stage every shard of which reads the whole input: it starts once all of it is there."""
        wall0 = time.perf_counter()
        kind = KINDS[stage.kind]
        # One identity for the whole set, in the fingerprint too, so a changed set recomputes the stage
        # and everything after it.
        whole = set_digest(input_ids)
        fingerprint = stage_fingerprint(stage, fingerprint, [whole])
        ctx = self.context(index, stage, fingerprint)
        ctx.shards, ctx.input_ids = dict(inputs), dict.fromkeys(input_ids, whole)
        found = ctx.stagedir.prepare(fingerprint, stage.model_dump(mode="json"))
        ctx.done = {shard: record for shard, record in found.items()
                    if shard in inputs and ctx.stagedir.reusable(record, inputs[shard], whole)}
        ctx.stagedir.remove_stale(inputs)
        pending = [s for s in inputs if s not in ctx.done]
        reused = len(ctx.done)
        failures: list[dict[str, str]] = []
        if pending:
            log.info("stage %s: %d shards to run, %d reused", stage.name, len(pending), reused)
            self.ray.ensure()
            self.ray.check_schedulable(stage)
            failures = kind.run(ctx, pending)
        return self._summary(ctx, reused, failures, time.perf_counter() - wall0), ctx

    def _summary(self, ctx: StageContext, reused: int, failures: list[dict[str, str]],
                 wall_s: float) -> dict[str, Any]:
        summary = summarize(ctx, reused, failures) | ctx.notes
        KINDS[ctx.stage.kind].summarize(ctx, summary)
        summary["wall_s"] = round(wall_s, 3)
        return summary

    # -- housekeeping ----------------------------------------------------------------------------
    def _log_to_run_dir(self) -> logging.Handler | None:
        """The run's log goes to RUN_DIR/logs/run.log as well as the terminal. Object storage cannot append:
        there the log is kept in memory and added to run.log when the run ends."""
        if self.rundir.local:
            Path(self.rundir.logs).mkdir(parents=True, exist_ok=True)
            handler: logging.Handler = logging.FileHandler(Path(self.rundir.logs, "run.log"))
        else:
            handler = logging.StreamHandler(io.StringIO())
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("winnow")
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        return handler

    def _close_log(self, handler: logging.Handler) -> None:
        logging.getLogger("winnow").removeHandler(handler)
        handler.close()
        if self.rundir.local or not isinstance(handler, logging.StreamHandler):
            return
        text = handler.stream.getvalue()
        path = f"{self.rundir.logs}/run.log"
        try:
            before = self.fs.cat_file(path) if self.fs.exists(path) else b""
            write_bytes(self.fs, path, before + text.encode())
        except OSError as exc:
            log.warning("could not write the run's log to %s: %r", self.url(path), exc)

    def _remove_unknown_stage_dirs(self) -> None:
        """Stage directories of stages no longer in the config; only Winnow's own (with `_stage.json`)."""
        wanted = {self.rundir.stage_dir(i, s.name) for i, s in enumerate(self.cfg.stages)}
        for path in self.rundir.owned_stage_dirs():
            if path not in wanted:
                remove(self.fs, self.rundir.path("stages"), path, recursive=True)

    def _publish_output(self, files: list[str], fingerprint: str) -> dict[str, Any]:
        """Copy the last stage's shards to output/, unless they are already there."""
        sources = {f.rsplit("/", 1)[-1]: fsspec.core.url_to_fs(f)[1] for f in files}
        changed = self.rundir.replace_published(self.rundir.output, sources, {"fingerprint": fingerprint})
        return {"files": list(sources), "changed": changed}

    def _write_card(self, output_changed: bool) -> None:
        """output/README.md, the dataset card, for a new output."""
        card = f"{self.rundir.output}/README.md"
        if not (output_changed or not self.fs.exists(card)):
            return
        from pipeline.report import write_card

        try:
            write_card(self.url(self.root))
        except Exception as exc:  # noqa: BLE001 - the data is written; a card failure must not fail the run
            log.warning("could not write the dataset card %s: %r", card, exc)

    def _write_manifest(self, started: datetime, inputs: list[str], stages: list[dict[str, Any]],
                        output: dict[str, Any] | None, status: str | None = None,
                        profile: dict[str, Any] | None = None) -> dict[str, Any]:
        if status is None:
            status = ("done" if output and all(s["status"] == "done" for s in stages) else
                      ("partial" if output else "running"))
        manifest = {
            "winnow_version": version("winnow"),
            "code_version": code_version(),
            "started_at": started.isoformat(timespec="seconds"),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "output_dir": self.cfg.output_dir,
            "inputs": inputs,
            "stages": stages,
            "output": output,
            "status": status,
        }
        if profile is not None:
            manifest["profile"] = profile
        write_json(self.fs, self.rundir.manifest, manifest)
        return manifest


@cache
def code_version() -> str:
    """The git commit of the code that ran (with `+dirty` for uncommitted changes), or the package
    version outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"winnow {version('winnow')}"
    return commit + ("+dirty" if dirty else "")


def summarize(ctx: StageContext, reused: int, failures: list[dict[str, str]]) -> dict[str, Any]:
    """A stage's manifest entry, from the records of its done shards. `cpu_s` is what its shard tasks
    spent, their child processes included (`child_cpu_s` of it)."""
    done = ctx.done

    def total(key: str) -> int | float:
        return sum(r.get(key, 0) for r in done.values())

    status = "done" if len(done) == len(ctx.shards) else ("failed" if failures else "pending")
    return {
        "name": ctx.stage.name,
        "kind": ctx.stage.kind,
        "dir": f"stages/{ctx.stagedir.dirname}",
        "fingerprint": ctx.fingerprint,
        "status": status,
        "shards": {"total": len(ctx.shards), "done": len(done), "reused": reused,
                   "computed": len(done) - reused, "failed": len(failures)},
        "rows_in": total("rows_in"),
        "rows_out": total("rows_out"),
        "rows_rejected": total("rows_rejected"),
        "chars_out": total("chars_out"),
        "chars_rejected": total("chars_rejected"),
        "drop_reasons": merge_counts(r.get("drop_reasons", {}) for r in done.values()),
        "reader": merge_counts(r.get("reader", {}) for r in done.values()),
        "steps": merge_counts(r.get("steps", {}) for r in done.values()),
        "costs": {part: {k: round(v, 3) for k, v in spent.items()}
                  for part, spent in merge_counts(r.get("costs", {}) for r in done.values()).items()},
        "cpu_s": round(total("cpu_s"), 3),
        "child_cpu_s": round(total("child_cpu_s"), 3),
        "shard_wall_s": round(total("wall_s"), 3),
        # The largest worker process (and child process) any shard ran in: memory to provision per worker.
        "peak_rss_mb": max((r.get("peak_rss_mb", 0.0) for r in done.values()), default=0.0),
        "child_peak_rss_mb": max((r.get("child_peak_rss_mb", 0.0) for r in done.values()), default=0.0),
        "errors": failures,
    }
