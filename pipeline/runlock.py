"""The lock that keeps one `winnow run` in a run directory, and the token that says which run holds it.

On local disk it is an flock on `RUN_DIR/.winnow.lock`, which the kernel releases when the process dies, so
a crash never leaves the directory locked. Object storage has no flock: there the lock is a record at the
same key, refreshed by a heartbeat every HEARTBEAT_S while the run lasts; a record whose heartbeat is older
than STALE_S, or whose process on this host has died, belongs to a crashed run and is taken over.

Every write of that record is conditional (pipeline/conditional.py): it is created only if none is there,
taken over only by replacing the very version found stale, and refreshed or deleted only while it is the
version this run wrote. So of runs that start, or take over, together exactly one wins, and the others read
the winner's record and refuse; a run whose heartbeat finds another run's record stops. A record that cannot
be read counts as held: it is never replaced or deleted.

Either way the lock's record names a token of the run's own, which the run hands its tasks
(pipeline/owner.py) so that a task stops once its run has ended.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec

from pipeline import conditional
from pipeline.jsonfile import RecordError, read_json, read_json_versioned
from pipeline.rundir import LOCK, RunDirError, _now

log = logging.getLogger("winnow.run")

# Object storage: the lock record's heartbeat is refreshed this often, and counts as stale after STALE_S.
HEARTBEAT_S = 60.0
STALE_S = 600.0
LOCK_TRIES = 50  # 10 ms apart: outlasts the instants that `winnow status` or tasks' checks hold the lock shared


class RunLock:
    """The lock at `path` (an fs path of `fs`) of the run directory the user named `given`."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, given: str, url: str, local: bool):
        self.fs, self.path, self.given, self.url, self.local = fs, path, given, url, local
        self.token: str | None = None  # this run's, in the lock's record while the run holds it
        self.lost: str | None = None  # set by the heartbeat when another run holds the lock
        self._handle: Any = None  # local disk: the open, flocked file
        self._info: dict[str, Any] | None = None  # object storage: the record this run wrote last
        self._etag: str | None = None  # ... and its version, which the next write is conditioned on

    def acquire(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": _now(), "token": uuid.uuid4().hex}
        if self.local:
            self._acquire_local(info)
        else:
            self._acquire_remote(info)
        self.token = info["token"]

    def _acquire_local(self, info: dict[str, Any]) -> None:
        import fcntl

        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the whole run
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A run holds the lock for good; a task checking its owner (pipeline/owner.py), or
                # `winnow status`, holds it shared for an instant.
                if attempt < LOCK_TRIES - 1:
                    time.sleep(0.01)
                    continue
                holder = _local_record(handle)
                handle.close()
                raise RunDirError(self._busy_message(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(info))
        handle.flush()
        self._handle = handle

    def _acquire_remote(self, info: dict[str, Any]) -> None:
        info = info | {"heartbeat": time.time()}
        for _ in range(5):
            etag = self._conditionally(conditional.create, _encode(info))
            if etag is not None:
                break
            holder, seen = self._read_versioned()
            if holder is None:
                continue  # released between our PUT and our read: try to create it again
            if holder.get("token") == info["token"] and seen:
                etag = seen  # our own PUT: its answer was lost and the retry found our record
                break
            if _alive(holder):
                raise RunDirError(self._busy_message(holder))
            etag = self._conditionally(conditional.replace, _encode(info), seen, stale=holder)
            if etag is not None:
                log.warning("output_dir %s: took over the lock of a run that stopped (%s)", self.given,
                            _holder(holder))
                break
            # Another version is there now (a taker that came first), or none: look again.
        else:
            raise RunDirError(self._busy_message(self._read() or {}))
        self._info, self._etag = info, etag
        self.lost = None
        self._heartbeat_stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="winnow-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def _conditionally(self, write: Any, *args: Any, stale: dict[str, Any] | None = None) -> str | None:
        """A conditional write of the lock record, or the error that says this store cannot make one."""
        try:
            return write(self.fs, self.path, *args)
        except conditional.Unconditional as exc:
            if stale is not None:
                raise RunDirError(
                    f"output_dir {self.given}: a run that stopped ({_holder(stale)}) left its lock record, and "
                    f"{exc}, so two runs starting now could both take it over; if no run uses the directory, "
                    f"delete {self.url} and run again") from None
            raise RunDirError(
                f"output_dir {self.given}: on object storage the run lock is a record written only "
                f"conditionally, so that two runs never both hold the directory, and {exc}; use an s3:// or "
                "a local output_dir") from None

    def _read(self) -> dict[str, Any] | None:
        """The lock record on object storage, None only when there is none. One that cannot be read as a
        record is reported as held by an unknown run (so it is neither taken over nor deleted)."""
        try:
            return _as_holder(read_json(self.fs, self.path))
        except RecordError as exc:
            log.warning("output_dir %s: the lock record cannot be read (%s); taking it as held", self.given, exc)
            return _as_holder("unreadable")

    def _read_versioned(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lock record (as `_read`) and its ETag, for a conditional write that replaces it."""
        try:
            holder, etag = read_json_versioned(self.fs, self.path)
        except RecordError as exc:
            log.warning("output_dir %s: the lock record cannot be read (%s); taking it as held", self.given, exc)
            return _as_holder("unreadable"), None
        return _as_holder(holder), etag

    def _beat(self) -> None:
        while not self._heartbeat_stop.wait(HEARTBEAT_S):
            info = self._info | {"heartbeat": time.time()}
            try:
                etag = conditional.replace(self.fs, self.path, _encode(info), self._etag)
                if etag is None:  # another version is there, or none: whose?
                    holder, seen = self._read_versioned()
                    if (holder or {}).get("token") == info["token"] and seen:
                        self._etag = seen  # our own beat: its answer was lost and the retry found it
                        continue
                    # Another run holds the directory now: this one must stop writing there (check).
                    self.lost = (f"output_dir {self.given}: this run lost its lock to another `winnow run` "
                                 f"({_holder(holder) if holder else 'the lock record was deleted'}); it stopped "
                                 "so that two runs never write the same directory. Check that only one run uses "
                                 "it, then run again to resume")
                    log.error("%s", self.lost)
                    return
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; STALE_S allows many
                log.warning("output_dir %s: could not refresh the lock: %r", self.given, exc)
                continue
            self._info, self._etag = info, etag

    def check(self) -> None:
        """Raise RunDirError if the heartbeat found that another run holds this directory now."""
        lost, self.lost = self.lost, None
        if lost is not None:
            raise RunDirError(lost)

    def release(self) -> None:
        """Release the lock; on object storage, delete the record only while it is the one this run wrote.
        Raises RunDirError when the run had lost it (so that the run ends with an error, not a success)."""
        self.token = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        elif self._info is not None:
            self._heartbeat_stop.set()
            self._heartbeat.join()
            try:
                if not conditional.delete(self.fs, self.path, self._etag):
                    holder, seen = self._read_versioned()  # a beat whose answer was lost wrote it last?
                    if (holder or {}).get("token") == self._info["token"] and seen:
                        conditional.delete(self.fs, self.path, seen)
            except OSError as exc:
                log.warning("output_dir %s: could not release the lock (%r); the next run takes it over once "
                            "its heartbeat is %d s old", self.given, exc, STALE_S)
            self._info = None
            self.check()

    def holder(self, stale_s: float = STALE_S) -> tuple[dict[str, Any] | None, bool]:
        """The lock's record (None when there is none) and whether a live `winnow run` holds it now: on
        local disk, whether its flock is held; on object storage, whether the record's heartbeat is
        younger than `stale_s` (and, on this host, its process lives), or the record cannot be read."""
        if not self.local:
            holder = self._read()
            return holder, holder is not None and _alive(holder, stale_s)
        import fcntl

        try:
            handle = open(self.path)  # noqa: SIM115 - closed below, which drops the shared lock
        except FileNotFoundError:
            return None, False
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _local_record(handle), True
            return _local_record(handle), False

    def _busy_message(self, holder: dict[str, Any]) -> str:
        if holder.get("unreadable"):
            return (f"output_dir {self.given}: its lock record {LOCK} is there but cannot be read, so another "
                    f"`winnow run` may be using it; if none is, delete {self.url} and run again")
        return (f"output_dir {self.given}: another `winnow run` is using it ({_holder(holder)}); wait for it to "
                "finish, or stop it, then run again")


def _holder(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('started_at', '?')}"


def _alive(holder: dict[str, Any], stale_s: float = STALE_S) -> bool:
    """Whether the run that wrote a lock record on object storage still holds it: its heartbeat is younger
    than `stale_s`, and, on this host, its process still exists."""
    if time.time() - float(holder.get("heartbeat") or 0) >= stale_s:
        return False
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, indent=1, sort_keys=True).encode()


def _as_holder(record: Any) -> dict[str, Any] | None:
    """A lock record as the lock code reads it; anything but a record (or none) is held by an unknown run."""
    if record is None or isinstance(record, dict):
        return record
    return {"unreadable": True, "heartbeat": time.time()}


def _local_record(handle: Any) -> dict[str, Any]:
    """What the run holding a local lock wrote in it ({} when it cannot be read)."""
    handle.seek(0)
    try:
        record = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}
