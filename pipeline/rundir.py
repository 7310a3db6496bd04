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

import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

import fsspec

from pipeline.deletion import OutsideRunDir, check_inside, remove
from pipeline.jsonfile import RecordError, read_json, write_json
from pipeline.stagedir import MARKER as STAGE_MARKER
from pipeline.stagedir import StageDir
from pipeline.storage import is_local

log = logging.getLogger("winnow.run")

MARKER = "_winnow.json"
LOCK = ".winnow.lock"
# Object storage: the lock record's heartbeat is refreshed this often, and counts as stale after STALE_S.
HEARTBEAT_S = 60.0
STALE_S = 600.0


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
        self._lock_handle: Any = None
        self._lock_info: dict[str, Any] | None = None
        self._lock_lost: str | None = None  # set by the heartbeat when another run holds the lock

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

    # -- the lock --------------------------------------------------------------------------------
    def lock(self) -> None:
        """One `winnow run` per run directory. On local disk an flock, which the kernel releases when
        the process dies, so a crash never leaves the directory locked. On object storage, which has no
        flock, see `_lock_remote`."""
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now()}
        if not self.local:
            self._lock_remote(info)
            return
        import fcntl

        handle = open(self.path(LOCK), "a+")  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "{}")
            except json.JSONDecodeError:
                holder = {}
            handle.close()
            raise RunDirError(self._busy_message(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        self._lock_handle = handle

    def _lock_remote(self, info: dict[str, Any]) -> None:
        """An advisory lock record, `.winnow.lock`, created only if absent (a conditional PUT, If-None-Match,
        where the store has one, so two runs starting together cannot both win) and refreshed by a
        heartbeat every HEARTBEAT_S while the run lasts. A record whose heartbeat is older than STALE_S, or
        whose process on this host has died, belongs to a crashed run: it is taken over. A record that
        cannot be read counts as held: only a record read whole and found stale is ever deleted."""
        info = info | {"token": uuid.uuid4().hex, "heartbeat": time.time()}
        for _ in range(3):
            if self._create_lock(info):
                break
            holder = self._read_lock()
            if holder is None:
                continue  # released between our PUT and our read: try to create it again
            if _alive(holder):
                raise RunDirError(self._busy_message(holder))
            # Delete it only while it is still the record judged stale: a taker that came first may have
            # replaced it already. (Two takers that still race are told apart by the heartbeat, which
            # stops the run that lost the record.)
            if self._read_lock() != holder:
                continue
            log.warning("output_dir %s: taking over the lock of a run that stopped (%s)", self.given,
                        _holder(holder))
            try:
                self.fs.rm(self.path(LOCK))
            except FileNotFoundError:
                pass
        else:
            raise RunDirError(self._busy_message(self._read_lock() or {}))
        self._lock_info = info
        self._lock_lost = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="winnow-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _read_lock(self) -> dict[str, Any] | None:
        """The lock record on object storage, None only when there is none. One that cannot be read as a
        record is reported as held by an unknown run (so it is neither taken over nor deleted)."""
        try:
            holder = read_json(self.fs, self.path(LOCK))
        except RecordError as exc:
            log.warning("output_dir %s: the lock record cannot be read (%s); taking it as held", self.given, exc)
            return {"unreadable": True, "heartbeat": time.time()}
        if holder is not None and not isinstance(holder, dict):
            return {"unreadable": True, "heartbeat": time.time()}
        return holder

    def _create_lock(self, info: dict[str, Any]) -> bool:
        data = json.dumps(info, indent=1, sort_keys=True).encode()
        try:
            with self.fs.open(self.path(LOCK), "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # a store without exclusive creation
            if self.fs.exists(self.path(LOCK)):
                return False
            write_json(self.fs, self.path(LOCK), info)
            return True

    def _beat(self) -> None:
        while not self._heartbeat_stop.wait(HEARTBEAT_S):
            try:
                holder = self._read_lock()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; STALE_S allows many
                log.warning("output_dir %s: could not read the lock to refresh it: %r", self.given, exc)
                continue
            if (holder or {}).get("token") != self._lock_info["token"]:
                # Another run holds the directory now: this one must stop writing there (check_lock).
                self._lock_lost = (f"output_dir {self.given}: this run lost its lock to another `winnow run` "
                                   f"({_holder(holder) if holder else 'the lock record was deleted'}); it "
                                   "stopped so that two runs never write the same directory. Check that "
                                   "only one run uses it, then run again to resume")
                log.error("%s", self._lock_lost)
                return
            try:
                self._lock_info["heartbeat"] = time.time()
                write_json(self.fs, self.path(LOCK), self._lock_info)
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; STALE_S allows many
                log.warning("output_dir %s: could not refresh the lock: %r", self.given, exc)

    def check_lock(self) -> None:
        """Raise RunDirError if the heartbeat found that another run holds this directory now. The runner
        calls it between shards; a run that never checks is stopped by `unlock` at its end."""
        lost, self._lock_lost = self._lock_lost, None
        if lost is not None:
            raise RunDirError(lost)

    def unlock(self) -> None:
        """Release the lock; on object storage, delete the record only if it is still this run's.
        Raises RunDirError when the run had lost it (so that the run ends with an error, not a success)."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None
        elif self._lock_info is not None:
            self._heartbeat_stop.set()
            self._heartbeat.join()
            try:
                if (self._read_lock() or {}).get("token") == self._lock_info["token"]:
                    self.fs.rm(self.path(LOCK))
            except OSError as exc:
                log.warning("output_dir %s: could not release the lock (%r); the next run takes it over once "
                            "its heartbeat is %d s old", self.given, exc, STALE_S)
            self._lock_info = None
            self.check_lock()

    def in_use(self) -> bool:
        """Whether a live `winnow run` holds this directory now (on object storage: a fresh lock record,
        or one that cannot be read)."""
        if not self.local:
            holder = self._read_lock()
            return holder is not None and _alive(holder)
        if not os.path.exists(self.path(LOCK)):
            return False
        import fcntl

        with open(self.path(LOCK)) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def _busy_message(self, holder: dict[str, Any]) -> str:
        if holder.get("unreadable"):
            return (f"output_dir {self.given}: its lock record {LOCK} is there but cannot be read, so another "
                    f"`winnow run` may be using it; if none is, delete {self.url(self.path(LOCK))} and run again")
        who = _holder(holder)
        return (f"output_dir {self.given}: another `winnow run` is using it ({who}); wait for it to finish, "
                "or stop it, then run again")

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


def _holder(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started_at', '?')}"


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the run that wrote a lock record on object storage still holds it: its heartbeat is fresh,
    and, on this host, its process still exists."""
    if time.time() - float(holder.get("heartbeat") or 0) >= STALE_S:
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
