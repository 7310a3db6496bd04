"""Where files live: local disk or object storage (s3://, gs://, ... through fsspec), and how to write them.

On local disk a file is written under a temporary name and renamed into place, so a reader never sees
half of it. On object storage a rename is a copy and a delete, so a file would be written twice; instead
the final key is written once: an object store's PUT (and a multipart upload's completion) is atomic,
the object appears whole or not at all. A completion record is still written last.

Importing this module sets Winnow's defaults for s3fs (every Winnow module that reads or writes files
imports it, in the driver and in every Ray worker); settings the user gives fsspec win over them.
"""

from __future__ import annotations

from typing import Any

import fsspec
import fsspec.config

S3_DEFAULTS: dict[str, Any] = {
    # Throttling: at scale S3 answers SlowDown/503. botocore's adaptive retry mode backs off exponentially
    # and also rate-limits this client's requests once it sees throttling; 10 attempts instead of 3.
    # (s3fs adds its own retries, `retries=5`, around reads and for SlowDown errors.)
    "config_kwargs": {"retries": {"mode": "adaptive", "max_attempts": 10}},
    # Ray workers write the shards that the driver then lists: a cached listing would miss them.
    "use_listings_cache": False,
}


def configure() -> None:
    """Merge Winnow's s3fs defaults into fsspec's config (`fsspec.config.conf`, which FSSPEC_S3_* environment
    variables and fsspec's config files also fill). The endpoint comes from botocore's own settings:
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), or FSSPEC_S3_ENDPOINT_URL."""
    s3 = fsspec.config.conf.setdefault("s3", {})
    for key, value in S3_DEFAULTS.items():
        if key == "config_kwargs":
            s3["config_kwargs"] = {**value, **s3.get("config_kwargs", {})}
        else:
            s3.setdefault(key, value)


configure()


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "s3" in protocols


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that no reader sees part of it: temporary name and rename on local disk,
    one PUT of the final key on object storage."""
    if not is_local(fs):
        fs.pipe_file(path, data)
        return
    tmp = path + ".tmp"
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except OSError:
            pass  # never written, or the disk is gone; the original error is what matters
        raise


def discard(handle: Any) -> None:
    """Throw away a file being written to object storage without making it appear (closing it would
    complete the upload and publish half a file)."""
    try:
        handle.discard()  # aborts a multipart upload already begun; drops the buffer
    finally:
        handle.closed = True  # so neither close() nor the garbage collector completes it
