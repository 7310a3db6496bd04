"""The run a shard task works for, so that a task stops once that run has ended.

A task can outlive its driver: when `winnow run` is killed, Ray takes a while to kill the job's workers
(about 20 s on a local Ray), and the run directory's lock is free at once, so a new run may start meanwhile.
A task left over would go on paying for LLM requests and writing the shard the new run computes. So the
synth stage hands each shard task its run's owner, the run directory and the token in its lock
(pipeline/runlock.py), and the task checks it before each batch of documents, every OWNER_CHECK_S while
requests are in flight, and before its completion record is written. The run has ended when

- the lock no longer names the token: another run holds the directory; or
- no live run holds the lock: on local disk its flock is free (the kernel released it when the driver
  died); on object storage its heartbeat is older than half of STALE_S, so a task stops well before
  another run may take the record over, or, on the driver's host, the driver's process is gone.

A check costs a read of the lock's record (one GET on object storage). One that cannot read the record
(a network error) lets the task go on until the next check; a record that cannot be parsed counts as held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("winnow.run")

OWNER_CHECK_S = 2.0  # while requests are in flight: a task whose run has ended stops within about this


class RunEnded(RuntimeError):
    """The `winnow run` a task works for has ended: the task stops, sending and writing nothing more."""


@dataclass(frozen=True)
class RunOwner:
    """A run, as its tasks know it: its run directory (a URL any worker can open) and its lock's token.
    Two strings, so it pickles into every task."""

    url: str
    token: str

    def check(self) -> None:
        """Return while the run holds its run directory; raise RunEnded, saying why, once it does not."""
        from pipeline.rundir import RunDir
        from pipeline.runlock import STALE_S

        try:
            holder, alive = RunDir(self.url).lock_holder(stale_s=STALE_S / 2)
        except OSError as exc:
            log.warning("%s: could not read the run's lock to check that the run goes on (%r); checking again "
                        "later", self.url, exc)
            return
        if (holder or {}).get("token") != self.token:
            why = "another `winnow run` holds the directory now" if holder else "its lock is gone"
        elif not alive:
            why = "no live `winnow run` holds its lock any more: the run was killed or crashed"
        else:
            return
        raise RunEnded(f"output_dir {self.url}: the run this task works for has ended ({why}); the task stopped, "
                       "so that it neither sends requests nor writes for a run that is gone")
