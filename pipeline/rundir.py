"""The run directory: every path Winnow writes, who owns it, and the lock that keeps one run in it.

Paths inside a stage directory, and the protocol that reads and writes them, belong to
`pipeline/stagedir.py`; `RunDir.stage` hands out a stage's `StageDir`.

Winnow deletes only what it wrote. A directory becomes a run directory when `winnow run` claims
it: it must be new, empty, or already a run (it holds `_winnow.json`, or the `run.yaml` and
`manifest.json` of a run made before the marker existed). Inside it, stage directories carry
`_stage.json` and the published output is listed in `output/_source.json`; nothing else is
touched, so a user's notes beside them survive.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import fsspec

from pipeline.deletion import OutsideRunDir, check_inside, remove
from pipeline.jsonfile import read_json, write_json
from pipeline.stagedir import MARKER as STAGE_MARKER
from pipeline.stagedir import StageDir
from pipeline.storage import is_local

if TYPE_CHECKING:
    from pipeline.owner import RunOwner

log = logging.getLogger("winnow.run")

MARKER = "_winnow.json"
LOCK = ".winnow.lock"


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked: the message says which path and why."""


def url_prefix(fs: fsspec.AbstractFileSystem) -> str:
    """'' for local disk, else 'proto://', to turn an fs path back into a URL for workers."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if protocol in ("file", "local") else f"{protocol}://"


class RunDir:
    def __init__(self, url: str):
        self.given = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/") or "/"
        self.prefix = url_prefix(self.fs)
        self.local = is_local(self.fs)
        from pipeline.runlock import RunLock  # which imports this module

        self._lock = RunLock(self.fs, self.path(LOCK), url, self.url(self.path(LOCK)), self.local)

    # -- paths -----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, path: str) -> str:
        """An fs path as a URL that any worker can open."""
        return self.prefix + path

    @property
    def run_yaml(self) -> str:
        return self.path("run.yaml")

    @property
    def manifest(self) -> str:
        return self.path("manifest.json")

    @property
    def output(self) -> str:
        return self.path("output")

    @property
    def logs(self) -> str:
        return self.path("logs")

    def task_log(self, stage_dir: str, shard: str) -> str:
        """`logs/<NN_stage>/<shard>.log`: a shard task's own log lines, kept if the task dies. Only for
        local run directories, where a task can append as it goes; "" elsewhere. `stage_dir` is the stage
        directory's path or its name (`<NN>_<stage>`)."""
        if not self.local:
            return ""
        return self.path("logs", stage_dir.rstrip("/").rsplit("/", 1)[-1], f"{shard}.log")

    @property
    def profile(self) -> str:
        """py-spy's sampling profile of the last run made with `profile: true`."""
        return self.path("profile")

    @property
    def instructions(self) -> str:
        return self.path("instructions")

    @property
    def rephrased(self) -> str:
        return self.path("rephrased")

    def llm_cache(self, stage_name: str) -> str:
        """Every completed LLM request of a stage; kept across changes of the stage's config."""
        return self.path("cache", "llm", stage_name)

    def stage_dir(self, index: int, name: str) -> str:
        return self.path("stages", f"{index:02d}_{name}")

    def stage(self, index: int, name: str, folders: tuple[str, ...] = ()) -> StageDir:
        """Stage `index` (`name`), whose kind writes `folders` beside its documents (StageKind.folders)."""
        return StageDir(self.url(self.stage_dir(index, name)), name, folders)

    # -- ownership -------------------------------------------------------------------------------
    def is_run(self) -> bool:
        if self.fs.exists(self.path(MARKER)):
            return True
        return self.fs.exists(self.run_yaml) and self.fs.exists(self.manifest)

    def claim(self) -> None:
        """Make sure the directory may be written by a run, and mark it as Winnow's."""
        try:
            if self.fs.exists(self.root):
                if not self.fs.isdir(self.root):
                    raise RunDirError(f"output_dir {self.given}: is a file, not a directory; choose another path")
                if not self.is_run():
                    entries = [p.rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False)]
                    if entries:
                        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
                        raise RunDirError(
                            f"output_dir {self.given}: not empty and not a Winnow run directory (it holds {shown}); "
                            "Winnow writes only to a new or empty directory, or to one of its own runs")
            self.fs.makedirs(self.root, exist_ok=True)
            if not self.fs.exists(self.path(MARKER)):
                write_json(self.fs, self.path(MARKER), {"created_by": "winnow", "version": version("winnow"),
                                                       "created_at": _now()})
        except OSError as exc:
            raise RunDirError(f"output_dir {self.given}: cannot be used: {describe_os_error(exc)}") from None

    def owned_stage_dirs(self) -> list[str]:
        """Stage directories Winnow made (they hold `_stage.json`); anything else in stages/ is left alone."""
        return [p for p in self.fs.glob(self.path("stages", "*")) if self.fs.exists(f"{p}/{STAGE_MARKER}")]

    def stages(self) -> list[StageDir]:
        """The stage directories Winnow made, in stage order, for readers (status, inspect, report); they
        name no kind folders, which only the shard protocol needs."""
        return [StageDir(self.url(p), p.rsplit("/", 1)[-1].split("_", 1)[-1]) for p in sorted(self.owned_stage_dirs())]

    # -- the lock (pipeline/runlock.py) ----------------------------------------------------------
    def lock(self) -> None:
        """One `winnow run` per run directory: an flock on local disk, a record written only conditionally
        on object storage. Raises RunDirError, naming the run that holds it, when another run does."""
        self._lock.acquire()

    def check_lock(self) -> None:
        """Raise RunDirError if the heartbeat found that another run holds this directory now. The runner
        calls it between shards; a run that never checks is stopped by `unlock` at its end."""
        self._lock.check()

    def unlock(self) -> None:
        """Release the lock; raises RunDirError when the run had lost it (so that it ends with an error)."""
        self._lock.release()

    def in_use(self) -> bool:
        """Whether a live `winnow run` holds this directory now (on object storage: a fresh lock record,
        or one that cannot be read)."""
        return self._lock.holder()[1]

    def lock_holder(self, stale_s: float | None = None) -> tuple[dict[str, Any] | None, bool]:
        """The lock's record (None when there is none) and whether a live run holds it now; on object
        storage a heartbeat older than `stale_s` (default: the lock's STALE_S) is a run that stopped."""
        return self._lock.holder() if stale_s is None else self._lock.holder(stale_s)

    def owner(self) -> RunOwner | None:
        """What this run hands its tasks, so that a task stops once the run has ended (pipeline/owner.py);
        None while it holds no lock."""
        from pipeline.owner import RunOwner

        return RunOwner(self.url(self.root), self._lock.token) if self._lock.token else None

    # -- published folders (output/, instructions/, rephrased/) -----------------------------------
    def replace_published(self, target: str, files: dict[str, str], state: dict[str, Any] | None = None) -> bool:
        """Make `target` hold exactly `files` (name -> source fs path), listed in `target/_source.json`.

        Only files an earlier publish listed are ever removed, so a user's file beside them stays.
        Returns False when the target already held this state."""
        fs, marker = self.fs, f"{target}/_source.json"
        state = {**(state or {}), "files": list(files)}
        previous = read_json(fs, marker)
        if previous == state and all(fs.exists(f"{target}/{n}") for n in files):
            return False
        fs.makedirs(target, exist_ok=True)
        old = [f"{target}/{name}" for name in (previous or {}).get("files", [])]
        for path in [*old, *(f"{target}/{name}" for name in files)]:  # every name, before anything is deleted
            try:
                check_inside(fs, target, path, named_by=self.url(marker))
            except OutsideRunDir as exc:
                raise RunDirError(str(exc)) from None
        if fs.exists(marker):
            remove(fs, target, marker)
        for path in old:
            if fs.exists(path):
                remove(fs, target, path)
        for name, source in files.items():
            if not self.local:  # a server-side copy: the object appears whole, and a rename would copy again
                fs.copy(source, f"{target}/{name}")
                continue
            try:
                fs.copy(source, f"{target}/{name}.tmp")
                fs.mv(f"{target}/{name}.tmp", f"{target}/{name}")
            except BaseException:
                if fs.exists(f"{target}/{name}.tmp"):
                    fs.rm(f"{target}/{name}.tmp")
                raise
        write_json(fs, marker, state)
        return True


def describe_os_error(exc: OSError) -> str:
    """'PATH: cause' for an OSError, whatever layer raised it."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {cause}" if exc.filename else cause


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
