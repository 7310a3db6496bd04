"""What a `local` generator's checkpoint holds, as a digest: the synth fingerprint and the request
cache key use it, so a new model written at the same path is asked again instead of being served the
old model's answers.

The digest is the sha256 of the weight files' contents (a checkpoint file, or in a checkpoint folder
its `*.pt`, `*.safetensors`, `*.bin` and `tokenizer.json`), with their names and sizes. Reading a
large checkpoint takes a while, so each file's hash is remembered by (path, size, mtime): in the
process, and in `$WINNOW_CACHE/checkpoints/` for the next process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WEIGHTS = ("*.pt", "*.safetensors", "*.bin", "tokenizer.json")
_seen: dict[tuple[str, int, int], str] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("WINNOW_CACHE") or Path.home() / ".cache" / "winnow") / "checkpoints"


def file_sha256(path: Path) -> str:
    """sha256 of a file's contents, remembered by (resolved path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _seen:
        return _seen[key]
    stored = _cache_dir() / (hashlib.sha256(repr(key).encode()).hexdigest()[:32] + ".sha256")
    try:
        digest = stored.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 64:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        try:
            stored.parent.mkdir(parents=True, exist_ok=True)
            tmp = stored.with_name(f"{stored.name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            os.replace(tmp, stored)
        except OSError:  # a read-only home: the digest is still right, only not remembered
            pass
    _seen[key] = digest
    return digest


def checkpoint_digest(checkpoint: str) -> str:
    """16 hex digits over the checkpoint's weight files; raises FileNotFoundError naming it when none."""
    path = Path(checkpoint)
    files = [path] if path.is_file() else sorted({f for pattern in WEIGHTS for f in path.glob(pattern) if f.is_file()})
    if not files:
        raise FileNotFoundError(f"synth.checkpoint: no checkpoint file at {checkpoint} (looked for "
                                f"{', '.join(WEIGHTS)}); give a training out_dir or its checkpoint.pt")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()[:16]
