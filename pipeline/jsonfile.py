"""Small JSON records on any fsspec filesystem: written atomically, read leniently."""

from __future__ import annotations

import json
from typing import Any

import fsspec


def write_json(fs: fsspec.AbstractFileSystem, path: str, data: Any) -> None:
    """Write to a temporary name, then rename: readers never see half a record."""
    tmp = path + ".tmp"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True, default=str)
        fs.mv(tmp, path)
    except BaseException as exc:
        try:
            fs.rm(tmp)
        except OSError:
            pass  # never written, or the disk is gone; the original error is what matters
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any | None:
    """The record at `path`, or None when it is missing or unreadable."""
    try:
        with fs.open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
