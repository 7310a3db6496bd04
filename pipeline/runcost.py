"""Where a run's CPU went, as a whole: inside shard tasks, in Ray and the driver, or nowhere (idle cores).

Each shard's record already says what its reading, steps and writing cost (pipeline/cputime.Costs). What
no shard sees is the rest: the driver, Ray's own daemons, worker processes between tasks, and cores left
idle while the slowest shard of a stage finishes. With a local Ray cluster all of those processes are
descendants of the driver, so the driver's process tree measures them:

    ray_and_driver_cpu_s = CPU of the driver's whole tree during the run - CPU inside this run's tasks
    idle_core_s          = wall seconds x the cluster's CPUs - CPU of the whole tree

A run that joins a remote cluster cannot see the other nodes' processes; there only the tasks' CPU and
the driver's own are given.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.cputime import ShardClock
from pipeline.kinds import StageContext
from pipeline.pyspy import SamplingProfiler
from pipeline.raycluster import RayConnection
from pipeline.rundir import RunDir
from pipeline.storage import write_bytes


class RunCosts:
    """Started with the run; `read` gives the run's profile for the manifest, once its stages are done."""

    def __init__(self, rundir: RunDir, sample: bool) -> None:
        self.rundir = rundir
        self.clock, self.started_at, self.driver_cpu0 = ShardClock(), time.time(), time.process_time()
        self.profiler: SamplingProfiler | None = None
        if sample:
            # Object storage cannot take py-spy's file as it is written: it goes to a local folder first.
            local = Path(rundir.profile) if rundir.local else Path(tempfile.mkdtemp(prefix="winnow-profile-"))
            self.profiler = SamplingProfiler(local, os.getpid())
            if not self.profiler.start():
                self.profiler = None

    def tasks_cpu_s(self, results: list[tuple[dict[str, Any], StageContext]]) -> float:
        """CPU spent inside this run's tasks: shards computed now (not reused) and the dedup phases."""
        total = 0.0
        for summary, ctx in results:
            total += sum(r.get("cpu_s", 0.0) for r in ctx.done.values() if r.get("finished_at", 0) >= self.started_at)
            if summary.get("shards", {}).get("computed"):
                total += summary.get("dedup", {}).get("phase_cpu_s", 0.0)
        return total

    def read(self, results: list[tuple[dict[str, Any], StageContext]], ray: RayConnection) -> dict[str, Any]:
        spent = self.clock.read()
        sampler = self.profiler.cpu_s() if self.profiler is not None else 0.0
        spent["cpu_s"] = round(max(spent["cpu_s"] - sampler, 0.0), 3)
        tasks = self.tasks_cpu_s(results)
        profile: dict[str, Any] = {"wall_s": spent["wall_s"], "tasks_cpu_s": round(tasks, 3),
                                   "driver_cpu_s": round(time.process_time() - self.driver_cpu0, 3)}
        if ray.started and not ray.address:  # a local cluster: all of it is under this process
            import ray as ray_module

            cpus = ray_module.cluster_resources().get("CPU", 0.0)
            profile |= {"cpus": cpus, "cpu_s": spent["cpu_s"],
                        "ray_and_driver_cpu_s": round(max(spent["cpu_s"] - tasks, 0.0), 3),
                        "idle_core_s": round(max(spent["wall_s"] * cpus - spent["cpu_s"], 0.0), 3)}
        if self.profiler is not None:
            profile["sampling"] = self.profiler.stop()
            profile["sampler_cpu_s"] = round(sampler, 3)
            if not self.rundir.local and self.profiler.stacks.exists():
                write_bytes(self.rundir.fs, f"{self.rundir.profile}/pyspy.txt", self.profiler.stacks.read_bytes())
            self.profiler = None
        return profile

    def abandon(self) -> None:
        """The run ended early: stop the sampler, keep what it wrote."""
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler = None
