"""Megatron-LM's indexed dataset (`.bin` + `.idx`, the "MMIDIDX" format), written from token arrays.

`PREFIX.bin` holds every sequence's tokens back to back. `PREFIX.idx` is, little-endian:

    9 bytes   magic b"MMIDIDX\\x00\\x00"
    uint64    version, 1
    uint8     dtype code of the tokens (uint16: 8, int32: 4)
    uint64    sequence count S
    uint64    document count D (D = documents + 1: the indices below start with 0)
    int32[S]  sequence lengths, in tokens
    int64[S]  sequence pointers: the byte offset of each sequence in PREFIX.bin
    int64[D]  document indices: 0, then after each document the number of sequences so far

Each Winnow document is one sequence, its tokens followed by the tokenizer's end-of-document token, as
Megatron's `tools/preprocess_data.py --append-eod` writes them. Megatron's GPT dataset splits documents
at that token. Tokens are uint16 below 65,500 vocabulary entries (Megatron's own choice) and int32 above.
Train with `--data-path PREFIX` (without the extension).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def write_index(path: Path, lengths: np.ndarray, dtype: np.dtype) -> None:
    """`path` (.idx) for sequences of `lengths` tokens, one document each."""
    lengths = np.asarray(lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths):
        pointers[1:] = np.cumsum(lengths[:-1], dtype=np.int64) * dtype.itemsize
    documents = np.arange(len(lengths) + 1, dtype="<i8")
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", VERSION))
        f.write(struct.pack("<B", DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(documents)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(documents.tobytes())
    os.replace(tmp, path)


def write_indexed(prefix: Path, documents: list[np.ndarray], eod_id: int, vocab_size: int) -> dict[str, int]:
    """PREFIX.bin and PREFIX.idx from each document's tokens (without special tokens); the EOD is added."""
    dtype = token_dtype(vocab_size).newbyteorder("<")
    lengths = np.array([len(d) + 1 for d in documents], dtype=np.int64)
    tmp = prefix.with_name(prefix.name + ".bin.tmp")
    with tmp.open("wb") as f:
        eod = np.array([eod_id], dtype=dtype)
        for tokens in documents:
            f.write(np.asarray(tokens).astype(dtype, copy=False).tobytes())
            f.write(eod.tobytes())
    os.replace(tmp, prefix.with_name(prefix.name + ".bin"))
    write_index(prefix.with_name(prefix.name + ".idx"), lengths, np.dtype(dtype.type))
    return {"tokens": int(lengths.sum()), "docs": len(documents)}


def read_lengths(idx: Path) -> tuple[np.dtype, np.ndarray]:
    """The token dtype and sequence lengths of an index Winnow wrote (for merging parts)."""
    with idx.open("rb") as f:
        head = f.read(len(MAGIC) + 8 + 1 + 8 + 8)
        if not head.startswith(MAGIC):
            raise ValueError(f"{idx}: not a Megatron index (no MMIDIDX header)")
        code = head[len(MAGIC) + 8]
        count = struct.unpack("<Q", head[len(MAGIC) + 9:len(MAGIC) + 17])[0]
        lengths = np.frombuffer(f.read(4 * count), dtype="<i4")
    dtype = next(d for d, c in DTYPE_CODES.items() if c == code)
    return dtype, lengths


def merge(parts: list[Path], prefix: Path) -> None:
    """One PREFIX.bin/.idx from the parts' (in order), which are removed: Megatron trains on one prefix per
    split, and the parts are written in parallel, one per input file."""
    lengths, dtype = [], None
    tmp = prefix.with_name(prefix.name + ".bin.tmp")
    with tmp.open("wb") as out:
        for part in parts:
            part_dtype, part_lengths = read_lengths(part.with_name(part.name + ".idx"))
            if dtype not in (None, part_dtype):
                raise ValueError(f"{part}.idx: token type {part_dtype} differs from the other parts' {dtype}")
            dtype = part_dtype
            lengths.append(part_lengths)
            with part.with_name(part.name + ".bin").open("rb") as f:
                shutil.copyfileobj(f, out, 16 << 20)
    os.replace(tmp, prefix.with_name(prefix.name + ".bin"))
    write_index(prefix.with_name(prefix.name + ".idx"), np.concatenate(lengths) if lengths else np.zeros(0),
                dtype or np.dtype(np.uint16))
    for part in parts:
        for suffix in (".bin", ".idx"):
            part.with_name(part.name + suffix).unlink()
