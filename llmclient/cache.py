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
stored the same key (a retried task racing its original), the oldest answer wins, so reruns see the
same answers and write the same bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import fsspec
import orjson

log = logging.getLogger("winnow.llm.cache")


def request_key(model: str, prompt: Any, sampling: dict[str, Any], sample: int) -> str:
    """The cache key of one request: sha256 over model, prompt, sorted sampling params and sample index."""
    payload = orjson.dumps({"model": model, "prompt": prompt, "sampling": sampling, "sample": sample},
                           option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


class RequestCache:
    """Answers by key for one shard; `put` stores a new one durably."""

    def __init__(self, cache_dir: str, shard: str, fsync: bool = False, segment_records: int = 64,
                 segment_s: float = 5.0):
        self.fs, root = fsspec.core.url_to_fs(cache_dir)
        self.dir = f"{root.rstrip('/')}/{shard}"
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.fsync, self.segment_records, self.segment_s = fsync, segment_records, segment_s
        self.fs.makedirs(self.dir, exist_ok=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.torn = 0  # lines that could not be read (a write cut by a kill)
        self._load()
        self.writer_id = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._handle = None
        self._pending: list[bytes] = []
        self._segment = 0
        self._last_flush = time.monotonic()
        self.written = 0

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
                    self.entries.setdefault(record["key"], record)
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    self.torn += 1
        if self.torn:
            log.warning("request cache %s: skipped %d unreadable line(s) (a write cut short by a kill)",
                        self.dir, self.torn)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {"key": key, **record}
        if key in self.entries:
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
            path = f"{self.dir}/{self.writer_id}-{self._segment:06d}.jsonl"
            with self.fs.open(path, "wb") as f:
                f.write(b"".join(self._pending))
            self._segment += 1
            self._pending = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
