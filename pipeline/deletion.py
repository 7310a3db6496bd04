"""The one way a run deletes: only paths that resolve inside the folder it is deleting from.

What a run deletes is named by files on shared storage (`output/_source.json`, stage records) that
anyone with write access can edit or damage. A name like `../../home/me/thesis.tex`, an absolute
path, or a folder replaced by a symlink must never make a run delete outside its own directory, so
every deleter resolves the path first: `..` and `.` are folded, and on local disk the parent
folders' symlinks are followed (the last part is not: removing a symlink removes the link only).
"""

from __future__ import annotations

import os
import posixpath

import fsspec

from pipeline.storage import is_local


class OutsideRunDir(RuntimeError):
    """A path to delete resolves outside the folder it should be in: the message names both."""


def resolved(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The path with `..` folded (and, on local disk, its parent folders' symlinks followed)."""
    if is_local(fs):
        parent, name = os.path.split(os.path.abspath(path))
        return os.path.join(os.path.realpath(parent), name)
    return posixpath.normpath("/" + path.lstrip("/"))


def check_inside(fs: fsspec.AbstractFileSystem, root: str, path: str, named_by: str = "") -> str:
    """`path`, resolved, when it lies strictly inside `root`; OutsideRunDir otherwise."""
    base = resolved(fs, root) if not is_local(fs) else os.path.realpath(root)
    target = resolved(fs, path)
    if not target.startswith(base.rstrip("/") + "/"):
        source = f" (named by {named_by}, which was edited or damaged: delete it and run again)" if named_by else ""
        raise OutsideRunDir(f"refusing to delete {path}: it resolves to {target}, outside {root}{source}")
    return target


def remove(fs: fsspec.AbstractFileSystem, root: str, path: str, recursive: bool = False, named_by: str = "") -> None:
    """Deletes `path` (a folder with `recursive`) after checking that it lies inside `root`."""
    check_inside(fs, root, path, named_by)
    fs.rm(path, recursive=recursive)
