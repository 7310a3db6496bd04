"""Small JSON records on any fsspec filesystem: written atomically, read honestly.

Reading a record has three outcomes, and callers need to tell them apart: there is no record (None),
there is one (its value), or there is something at the path that is not a record (RecordError, naming
the path). A record being rewritten while it is read is none of these: the read is tried again. On
object storage that happens when a writer replaces the object between the reader's metadata request
and its GET (s3fs raises FileExpired, an OSError); taking it for a missing record once made the lock
code delete a live run's lock.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from typing import Any, Literal

import fsspec

from pipeline.storage import is_s3, write_bytes

log = logging.getLogger("winnow.records")

# A rewrite is over in milliseconds: 5 tries over about 0.75 s outlast one.
ATTEMPTS = 5
BACKOFF_S = 0.05


class RecordError(ValueError):
    """Something at a record's path that is not a JSON record (Winnow writes records whole, so it was
    damaged or written by something else); the message names the path."""


def write_json(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    """Readers never see half a record: a temporary name and a rename on local disk, one PUT on object
    storage (see pipeline.storage)."""
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        write_bytes(fs, path, text.encode())
    except OSError as exc:
        if not exc.filename:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def read_json(fs: fsspec.AbstractFileSystem, path: str, damaged: Literal["raise", "missing"] = "raise") -> Any | None:
    """The record at `path`, or None when there is none.

    A record rewritten while it is read is read again. What is still not JSON after that raises
    RecordError, or, with `damaged="missing"` (for a caller that rewrites such a record, as a shard's
    completion record is rewritten when the shard is recomputed), is logged and taken as no record. Any
    other failure to read (a network error, a permission) raises OSError: it is never taken for a
    missing record."""
    return _read(fs, path, damaged, versioned=False)[0]


def read_json_versioned(fs: fsspec.AbstractFileSystem, path: str) -> tuple[Any | None, str | None]:
    """The record at `path` (as read_json reads it) and the version that was read: its ETag on object
    storage, None where the store names none; (None, None) when there is no record. For a writer that
    replaces the record only while it is still that version (pipeline/conditional.py)."""
    return _read(fs, path, "raise", versioned=True)


def _fetch(fs: fsspec.AbstractFileSystem, path: str, versioned: bool) -> tuple[bytes, str | None]:
    if not versioned:
        # One GET for the whole object: an object store returns one version of it, whole.
        return fs.cat_file(path), None
    if is_s3(fs):
        # One GET answers with the bytes and the ETag of the same version: no window for a rewrite between
        # asking for the tag and reading, however often another run's heartbeat rewrites the record.
        return _get_with_etag(fs, path)
    # Elsewhere opening asks for the object's metadata (its ETag) first, then reads with If-Match on that ETag,
    # so the bytes are that version's (a rewrite in between fails the read, and it is tried again).
    with fs.open(path, "rb") as f:
        data = f.read()
        details = getattr(f, "details", None) or {}
    return data, details.get("ETag")


def _get_with_etag(fs: fsspec.AbstractFileSystem, path: str) -> tuple[bytes, str | None]:
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(path)

    async def get() -> tuple[bytes, str | None]:
        answer = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        try:
            async with answer["Body"] as body:
                return await body.read(), answer.get("ETag")
        except Exception as exc:
            # A connection dropped mid-body surfaces as botocore's or aiohttp's own error, outside s3fs's
            # retries; callers treat a failed read as an OSError (the owner check tries again later).
            raise OSError(errno.EIO, f"{path}: the read broke off ({exc!r})", path) from exc

    return sync(fs.loop, get)


def _read(fs: fsspec.AbstractFileSystem, path: str, damaged: Literal["raise", "missing"],
          versioned: bool) -> tuple[Any | None, str | None]:
    for attempt in range(ATTEMPTS):
        last = attempt == ATTEMPTS - 1
        try:
            data, etag = _fetch(fs, path, versioned)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if last or not rewritten_while_read(exc):
                raise
        else:
            try:
                return json.loads(data), etag
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                # Only a filesystem without atomic replacement shows half a record; after the retries
                # it is no record at all.
                if last:
                    problem = (f"{path}: not a JSON record ({exc}); Winnow writes its records whole, so it was "
                               "damaged or written by something else")
                    if damaged == "missing":
                        log.warning("%s; taken as missing, to be written again", problem)
                        return None, None
                    raise RecordError(f"{problem}: delete it or restore it") from None
        time.sleep(BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def rewritten_while_read(exc: OSError) -> bool:
    """Whether a read failed because the object changed under it (s3fs's FileExpired, or the store's
    answer to an If-Match that no longer holds), not because it cannot be read."""
    if type(exc).__name__ == "FileExpired" or exc.errno == errno.EBUSY:
        return True
    return exc.errno == errno.EINVAL and "pre-condition" in str(exc).lower()
