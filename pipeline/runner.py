"""The driver: resolve stages, skip what is done, run the rest as Ray tasks, write the manifest.

Ray is started (or joined) only when some shard has work to do, so a rerun of a finished run
only reads completion records and returns in well under a second.
"""

from __future__ import annotations

import logging
import os
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
from pipeline.fingerprint import stage_fingerprint
from pipeline.jsonfile import read_json, write_json
from pipeline.progress import ProgressCounter, StageProgress
from pipeline.stage import ShardJob, clear_shard, run_shard

log = logging.getLogger("winnow.run")

# Set in every Ray worker before it imports pyarrow (see parquet_io._use_a_returning_memory_pool).
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}


def url_prefix(fs: fsspec.AbstractFileSystem) -> str:
    """'' for local disk, else 'proto://', to turn an fs path back into a URL for workers."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if protocol in ("file", "local") else f"{protocol}://"


def expand_inputs(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        fs, path = fsspec.core.url_to_fs(pattern)
        matches = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        found = [url_prefix(fs) + m for m in matches if fs.isfile(m)]
        if not found:
            raise ConfigError(f"input: {pattern!r} matches no file")
        paths.extend(found)
    return sorted(dict.fromkeys(paths))


class Runner:
    def __init__(self, cfg: RunConfig, ray_address: str | None = None):
        self.cfg = cfg
        self.ray_address = ray_address or cfg.ray.address
        self.fs, self.root = fsspec.core.url_to_fs(cfg.output_dir)
        self.root = self.root.rstrip("/")
        self.protocol_prefix = url_prefix(self.fs)
        self._ray_started = False

    def url(self, path: str) -> str:
        return self.protocol_prefix + path

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = datetime.now(UTC)
        inputs = expand_inputs(self.cfg.input)
        self.fs.makedirs(f"{self.root}/logs", exist_ok=True)
        with self.fs.open(f"{self.root}/run.yaml", "w") as f:
            yaml.safe_dump(self.cfg.model_dump(mode="json"), f, sort_keys=False)
        self._remove_unknown_stage_dirs()

        stages, previous, shard_inputs = [], "", inputs
        try:
            for index, stage in enumerate(self.cfg.stages):
                fingerprint = stage_fingerprint(stage, previous, inputs if index == 0 else None)
                summary = self.run_stage(index, stage, fingerprint, shard_inputs)
                stages.append(summary)
                shard_inputs, previous = summary.pop("_outputs"), fingerprint
                self._write_manifest(started, inputs, stages, None)
            output = self._publish_output(shard_inputs, previous)
            changed = output.pop("changed")
            manifest = self._write_manifest(started, inputs, stages, output)
            self._write_card(changed)
            return manifest
        finally:
            self._shutdown_ray()

    def stage_dir(self, index: int, stage: StageConfig) -> str:
        return f"{self.root}/stages/{index:02d}_{stage.name}"

    def run_stage(self, index: int, stage: StageConfig, fingerprint: str, inputs: list[str]) -> dict[str, Any]:
        wall0 = time.perf_counter()
        stage_dir = self.stage_dir(index, stage)
        self._reset_if_changed(stage_dir, stage, fingerprint)
        shards = {f"{k:05d}": path for k, path in enumerate(inputs)}
        done = load_done(self.fs, stage_dir, fingerprint, shards)
        self._remove_stale_shards(stage_dir, shards)
        pending = [s for s in shards if s not in done]
        reused = len(done)
        failures: list[dict[str, str]] = []
        if pending:
            log.info("stage %s: %d shards to run, %d reused", stage.name, len(pending), reused)
            if stage.kind == "dedup":
                from pipeline.dedup.stage import run_dedup  # datasketch and scipy load only when needed

                self._ensure_ray()
                failures = run_dedup(stage, self.url(stage_dir), fingerprint, shards, pending, done)
            else:
                failures = self._run_tasks(index, stage, stage_dir, fingerprint, shards, pending, done)
        summary = summarize(stage, stage_dir, fingerprint, shards, done, reused, failures)
        if stage.kind == "dedup":
            summary["dedup"] = read_json(self.fs, f"{stage_dir}/_dedup.json") or {}
            # The shuffle phases' CPU belongs to the stage too, not only the final writes.
            summary["cpu_s"] = round(summary["cpu_s"] + summary["dedup"].get("phase_cpu_s", 0), 3)
        summary["wall_s"] = round(time.perf_counter() - wall0, 3)
        summary["_outputs"] = [self.url(f"{stage_dir}/{name}") for s in sorted(done) for name in done[s]["outputs"]]
        return summary

    def _run_tasks(self, index: int, stage: StageConfig, stage_dir: str, fingerprint: str,
                   shards: dict[str, str], pending: list[str], done: dict[str, dict]) -> list[dict[str, str]]:
        import ray

        self._ensure_ray()
        task = ray.remote(run_shard).options(
            num_cpus=stage.resources.num_cpus,
            num_gpus=stage.resources.num_gpus,
            memory=(stage.resources.memory_mb << 20) if stage.resources.memory_mb else None,
            max_retries=stage.max_retries,
            retry_exceptions=False,
        )
        stage_json = stage.model_dump_json()
        counter = ray.remote(ProgressCounter).options(num_cpus=0).remote()
        futures = {}
        for shard in pending:
            job = ShardJob(stage.name, stage_json, self.url(stage_dir), shard, shards[shard], index == 0, fingerprint,
                           progress=counter)
            futures[task.remote(job)] = shard
        failures = []
        finished_docs = 0
        with StageProgress(f"{index:02d}_{stage.name}", total=len(pending)) as progress:
            remaining = list(futures)
            while remaining:
                ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.5)
                live_docs = ray.get(counter.total.remote())
                for ref in ready:
                    shard = futures[ref]
                    try:
                        record = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - one bad shard must not stop the run
                        message = str(exc).strip().splitlines()[-1][:500]
                        log.error("stage %s shard %s (%s) failed: %s", stage.name, shard, shards[shard], message)
                        failures.append({"shard": shard, "input": shards[shard], "error": message})
                        progress.update(live_docs, failed=1)
                        continue
                    done[shard] = record
                    finished_docs += record["rows_in"]
                    for message in record.get("messages", []):
                        log.warning("%s/%s: %s", stage.name, shard, message)
                    progress.update(max(live_docs, finished_docs), shards_done=1)
                if not ready:
                    progress.update(live_docs)
        ray.kill(counter)
        return failures

    # -- housekeeping ----------------------------------------------------------------------------
    def _reset_if_changed(self, stage_dir: str, stage: StageConfig, fingerprint: str) -> None:
        marker = f"{stage_dir}/_stage.json"
        if self.fs.exists(marker):
            if (read_json(self.fs, marker) or {}).get("fingerprint") == fingerprint:
                return
            log.info("stage %s changed: recomputing it", stage.name)
            self.fs.rm(stage_dir, recursive=True)
        self.fs.makedirs(f"{stage_dir}/_done", exist_ok=True)
        write_json(self.fs, marker, {"name": stage.name, "fingerprint": fingerprint,
                                     "config": stage.model_dump(mode="json")})

    def _remove_stale_shards(self, stage_dir: str, shards: dict[str, str]) -> None:
        for record in self.fs.glob(f"{stage_dir}/_done/*.json"):
            shard = record.rsplit("/", 1)[-1].removesuffix(".json")
            if shard not in shards:
                clear_shard(self.fs, stage_dir, shard)

    def _remove_unknown_stage_dirs(self) -> None:
        wanted = {self.stage_dir(i, s).rsplit("/", 1)[-1] for i, s in enumerate(self.cfg.stages)}
        for path in self.fs.glob(f"{self.root}/stages/*"):
            if path.rsplit("/", 1)[-1] not in wanted:
                self.fs.rm(path, recursive=True)

    def _publish_output(self, files: list[str], fingerprint: str) -> dict[str, Any]:
        """Copy the last stage's shards to output/, unless they are already there."""
        out = f"{self.root}/output"
        names = [f.rsplit("/", 1)[-1] for f in files]
        marker = f"{out}/_source.json"
        state = {"fingerprint": fingerprint, "files": names}
        if read_json(self.fs, marker) == state:
            return {"files": names, "changed": False}
        if self.fs.exists(out):
            self.fs.rm(out, recursive=True)
        self.fs.makedirs(out, exist_ok=True)
        for src, name in zip(files, names, strict=True):
            self.fs.copy(fsspec.core.url_to_fs(src)[1], f"{out}/{name}.tmp")
            self.fs.mv(f"{out}/{name}.tmp", f"{out}/{name}")
        write_json(self.fs, marker, state)
        return {"files": names, "changed": True}

    def _write_card(self, output_changed: bool) -> None:
        """output/README.md, the dataset card, for a new output (local run directories only)."""
        if self.protocol_prefix or not (output_changed or not self.fs.exists(f"{self.root}/output/README.md")):
            return
        from pipeline.report import write_card

        try:
            write_card(self.root)
        except Exception as exc:  # noqa: BLE001 - the data is written; a card failure must not fail the run
            log.warning("could not write the dataset card %s/output/README.md: %r", self.root, exc)

    def _write_manifest(self, started: datetime, inputs: list[str], stages: list[dict[str, Any]],
                        output: dict[str, Any] | None) -> dict[str, Any]:
        manifest = {
            "winnow_version": version("winnow"),
            "code_version": code_version(),
            "started_at": started.isoformat(timespec="seconds"),
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "output_dir": self.cfg.output_dir,
            "inputs": inputs,
            "stages": stages,
            "output": output,
            "status": "done" if output and all(s["status"] == "done" for s in stages) else
                      ("partial" if output else "running"),
        }
        write_json(self.fs, f"{self.root}/manifest.json", manifest)
        return manifest

    def _ensure_ray(self) -> None:
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
        if self.ray_address:
            ray.init(address=self.ray_address, runtime_env={"env_vars": WORKER_ENV}, **kwargs)
        else:
            for key, value in WORKER_ENV.items():  # a local Ray's workers inherit the driver's environment
                os.environ.setdefault(key, value)
            # "local" starts a private Ray even when another one runs on this machine.
            ray.init(address="local", num_cpus=self.cfg.ray.num_cpus, **kwargs)
        self._ray_started = True

    def _shutdown_ray(self) -> None:
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False


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


def load_done(fs: fsspec.AbstractFileSystem, stage_dir: str, fingerprint: str,
              shards: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Completion records that match this fingerprint and input, with their outputs present."""
    done = {}
    paths = fs.glob(f"{stage_dir}/_done/*.json")
    existing = set(fs.glob(f"{stage_dir}/part-*.parquet")) | set(fs.glob(f"{stage_dir}/rejected/part-*.parquet"))
    for path in paths:
        shard = path.rsplit("/", 1)[-1].removesuffix(".json")
        record = read_json(fs, path)
        if record is None:
            continue
        if record.get("fingerprint") != fingerprint or shards.get(shard) != record.get("input"):
            continue
        files = [f"{stage_dir}/{n}" for n in record["outputs"]] + [f"{stage_dir}/rejected/{n}" for n in
                                                                   record["rejected"]]
        if all(p in existing for p in files):
            done[shard] = record
    return done


def summarize(stage: StageConfig, stage_dir: str, fingerprint: str, shards: dict[str, str],
              done: dict[str, dict[str, Any]], reused: int, failures: list[dict[str, str]]) -> dict[str, Any]:
    def total(key: str) -> int | float:
        return sum(r.get(key, 0) for r in done.values())

    def merged(key: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for record in done.values():
            for name, value in record.get(key, {}).items():
                if isinstance(value, dict):
                    bucket = out.setdefault(name, {})
                    for k, v in value.items():
                        bucket[k] = bucket.get(k, 0) + v
                else:
                    out[name] = out.get(name, 0) + value
        return dict(sorted(out.items()))

    status = "done" if len(done) == len(shards) else ("failed" if failures else "pending")
    return {
        "name": stage.name,
        "dir": stage_dir.rsplit("/", 2)[-2] + "/" + stage_dir.rsplit("/", 1)[-1],
        "fingerprint": fingerprint,
        "status": status,
        "shards": {"total": len(shards), "done": len(done), "reused": reused,
                   "computed": len(done) - reused, "failed": len(failures)},
        "rows_in": total("rows_in"),
        "rows_out": total("rows_out"),
        "rows_rejected": total("rows_rejected"),
        "chars_out": total("chars_out"),
        "chars_rejected": total("chars_rejected"),
        "drop_reasons": merged("drop_reasons"),
        "reader": merged("reader"),
        "steps": merged("steps"),
        "cpu_s": round(total("cpu_s"), 3),
        "shard_wall_s": round(total("wall_s"), 3),
        "errors": failures,
    }
