"""A durable request cache: every completed LLM request, stored the moment it returns.

A key is the hash of what decides an answer: the model, the rendered prompt (chat messages or text),
the sampling parameters and the sample index. The endpoint, the API key, the concurrency and the
retry settings are left out, so moving to another server or running wider reuses every answer, while
a new model or a changed prompt asks again.

Storage is append-only JSON lines under `cache_dir/<shard>/`, one file per writer (process), named
so that older files sort first. On a local disk each record is written and flushed as soon as its
request completes, so a killed task keeps everything that finished; a torn last line is skipped on
load. Object stores cannot append, so there records go out in small segment files every
`segment_records` records or `segment_s` seconds (a kill loses at most that window). When two writers
stored the same key, the oldest answer wins, so reruns see the same answers and write the same bytes.

A cache given an `owner` (a callable that raises once the job writing it has ended, such as a synth
shard's run: pipeline/owner.py) has one writer at a time. On a local disk the writer holds an flock on
`<shard>/.writer.lock` from the moment it opens the cache until `close` (the kernel drops it if the
process dies); another writer of the same shard, such as the task of a new run while a task of a killed
run still finishes, waits for it up to `lock_wait_s`, then loads everything the first stored and goes on,
or raises CacheBusy naming the holder. Object stores have no flock: there `owner` is checked before each
segment is written, so a writer whose job has ended writes nothing more.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import orjson

log = logging.getLogger("winnow.llm.cache")

WRITER_LOCK = ".writer.lock"


class CacheBusy(RuntimeError):
    """Another writer holds a shard's cache (a cache with an owner has one writer at a time)."""


def request_key(model: str, prompt: Any, sampling: dict[str, Any], sample: int) -> str:
    """The cache key of one request: sha256 over model, prompt, sorted sampling params and sample index."""
    payload = orjson.dumps({"model": model, "prompt": prompt, "sampling": sampling, "sample": sample},
                           option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def is_answer(record: dict[str, Any]) -> bool:
    """Text from the model, or a refusal of the request itself (an HTTP 4xx, or a prompt the local
    generator cannot fit): what a rerun would get again. Not an error that came under HTTP 200, nor
    the "answer without choices" records older versions stored for one."""
    if record.get("status") == "ok":
        return isinstance(record.get("text"), str)
    if record.get("status") != "bad_request" or str(record.get("error")).startswith("answer without choices"):
        return False
    status = record.get("http_status")
    return status is None or (isinstance(status, int) and 400 <= status < 500)


class RequestCache:
    """Answers by key for one shard; `put` stores a new one durably."""

    def __init__(self, cache_dir: str, shard: str, fsync: bool = False, segment_records: int = 64,
                 segment_s: float = 5.0, owner: Callable[[], None] | None = None, lock_wait_s: float = 60.0):
        self.fs, root = fsspec.core.url_to_fs(cache_dir)
        self.dir = f"{root.rstrip('/')}/{shard}"
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.fsync, self.segment_records, self.segment_s = fsync, segment_records, segment_s
        self.owner = owner
        self.fs.makedirs(self.dir, exist_ok=True)
        self._writer_lock = self._lock_writer(lock_wait_s) if owner is not None and self.local else None
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn = 0  # lines that could not be read (a write cut by a kill)
        self.not_answers = 0  # records that hold no answer, skipped
        try:
            self._load()
        except BaseException:
            self._release_writer()
            raise
        self.writer_id = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._handle = None
        self._pending: list[bytes] = []
        self._segment = 0
        self._last_flush = time.monotonic()
        self.written = 0

    def _lock_writer(self, wait_s: float) -> Any:
        """The shard's writer lock, waited for up to `wait_s` (a writer whose job has ended stops soon)."""
        import fcntl

        handle = open(os.path.join(self.dir, WRITER_LOCK), "a+")  # noqa: SIM115 - held until close()
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "a process that wrote nothing yet"
                    handle.close()
                    raise CacheBusy(f"request cache {self.dir}: another writer holds it ({holder}) after "
                                    f"{wait_s:g} s of waiting; one writer at a time stores a shard's answers, "
                                    "so that none is paid for twice. Check that no other run computes this "
                                    "shard, then run again") from None
                time.sleep(0.1)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        handle.flush()
        return handle

    def _release_writer(self) -> None:
        if self._writer_lock is not None:
            self._writer_lock.close()  # drops the flock
            self._writer_lock = None

    def _load(self) -> None:
        for path in sorted(self.fs.ls(self.dir, detail=False)):
            if not path.endswith(".jsonl"):
                continue
            with self.fs.open(path, "rb") as f:
                data = f.read()
            for line in data.split(b"\n"):
                if not line:
                    continue
                try:
                    record = orjson.loads(line)
                    if not is_answer(record):
                        self.not_answers += 1  # an error stored by an older version: asked again
                        continue
                    self.entries.setdefault(record["key"], record)
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    self.torn += 1
        if self.torn:
            log.warning("request cache %s: skipped %d unreadable line(s) (a write cut short by a kill)",
                        self.dir, self.torn)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored answer, or None. Only answers are kept: text from the model, or a refusal the
        endpoint gave with an HTTP 4xx; a record of anything else (an error an older version stored
        under an HTTP 200) is skipped on load, so it is asked again."""
        return self.entries.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {"key": key, **record}
        if not is_answer(record) or key in self.entries:  # only answers are kept: anything else is asked again
            return
        self.entries[key] = record
        line = orjson.dumps(record) + b"\n"
        self.written += 1
        if self.local:
            if self._handle is None:
                self._handle = open(os.path.join(self.dir, f"{self.writer_id}.jsonl"), "ab")  # noqa: SIM115
            self._handle.write(line)
            self._handle.flush()  # in the OS's hands now: survives the process being killed
            if self.fsync:
                os.fsync(self._handle.fileno())  # survives the machine going down too
            return
        self._pending.append(line)
        if len(self._pending) >= self.segment_records or time.monotonic() - self._last_flush >= self.segment_s:
            self.flush()

    def flush(self) -> None:
        """Write buffered records (object stores) as one more segment file."""
        if self._pending:
            if self.owner is not None:
                self.owner()  # raises once the job has ended: its answers are not written
            path = f"{self.dir}/{self.writer_id}-{self._segment:06d}.jsonl"
            with self.fs.open(path, "wb") as f:
                f.write(b"".join(self._pending))
            self._segment += 1
            self._pending = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            self._release_writer()
