"""Small JSON records on any fsspec filesystem: written atomically, read leniently."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from pipeline.storage import write_bytes


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


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any | None:
    """The record at `path`, or None when it is missing or unreadable."""
    try:
        with fs.open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
