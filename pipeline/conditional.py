"""Conditional writes on object storage: create a file only if none is there, replace or delete it only
while it is still the version that was read (its ETag).

S3 decides each such request atomically, so of many writers racing for one key exactly one wins. The run
lock on object storage rests on that (pipeline/rundir.py): two runs that start together, or that take over
the record of a crashed run together, cannot both win. s3fs sends the conditions as S3's `If-None-Match: *`
and `If-Match: <ETag>` (AWS since 2024; MinIO and other S3-compatible stores too).

A store that cannot make a write conditional raises Unconditional, which the lock turns into an error that
says so: writing anyway would race silently, which is what the lock is there to prevent. (A store that
ignores the headers instead of refusing them cannot be told apart from one that honours them.)
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import fsspec

from pipeline.storage import is_s3


class Unconditional(RuntimeError):
    """This store cannot make a write conditional; the message says which condition and why."""


def create(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str | None:
    """Write `data` at `path` only if nothing is there: the new version's ETag, or None when a file was there."""
    answer = _attempt(fs, "create a file only if none is there (If-None-Match)",
                      lambda: fs.pipe_file(path, data, mode="create"), FileExistsError)
    return None if answer is _LOST else _etag(answer)


def replace(fs: fsspec.AbstractFileSystem, path: str, data: bytes, etag: str) -> str | None:
    """Write `data` at `path` only while the version there is `etag`: the new version's ETag, or None when
    another version is there, or none."""
    answer = _attempt(fs, "replace a file only while it is unchanged (If-Match)",
                      lambda: fs.pipe_file(path, data, IfMatch=etag), FileNotFoundError)
    return None if answer is _LOST else _etag(answer)


def delete(fs: fsspec.AbstractFileSystem, path: str, etag: str) -> bool:
    """Delete `path` only while the version there is `etag`; False when another version is there, or none."""
    bucket, key, _ = fs.split_path(path)
    answer = _attempt(fs, "delete a file only while it is unchanged (If-Match)",
                      lambda: fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag), FileNotFoundError)
    if answer is _LOST:
        return False
    fs.invalidate_cache(path)
    return True


_LOST: Any = object()  # the condition no longer held: another writer got there first


def _attempt(fs: fsspec.AbstractFileSystem, what: str, write: Callable[[], Any], lost: type[OSError]) -> Any:
    """Send one conditional write: its answer, or _LOST when its condition failed (`lost`, or S3's 412)."""
    _need_s3(fs, what)
    try:
        return write()
    except lost:
        return _LOST
    except OSError as exc:
        if precondition_failed(exc):
            return _LOST
        _refused(exc, what)
        raise


def precondition_failed(exc: OSError) -> bool:
    """S3's 412 for an If-Match that no longer holds (s3fs raises it as EINVAL, 'pre-conditions')."""
    return exc.errno == errno.EINVAL and "pre-condition" in str(exc).lower()


def _need_s3(fs: fsspec.AbstractFileSystem, what: str) -> None:
    if not is_s3(fs):
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        raise Unconditional(f"Winnow can {what} on S3 and S3-compatible stores (s3://) only, not on {protocol}://")


def _refused(exc: OSError, what: str) -> None:
    """An S3-compatible store that does not implement the condition answers 501 NotImplemented."""
    if exc.errno == errno.ENOSYS:
        raise Unconditional(f"this store refused to {what}: {exc}") from exc


def _etag(answer: object) -> str:
    etag = answer.get("ETag") if isinstance(answer, dict) else None
    if not etag:
        raise Unconditional("the store answered a write without the new version's ETag")
    return etag
