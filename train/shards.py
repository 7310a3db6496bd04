"""Token shards: curated Parquet in, llm.c-style `.bin` files out, tokenized in parallel on Ray.

File format (llm.c's): a header of 256 little-endian int32 (magic 20240520, version, token count,
then zeros), followed by the tokens. Version 1 stores uint16 tokens, as llm.c does; version 2,
Winnow's addition, stores uint32 for vocabularies over 65,536. Each document is written as BOS
followed by its tokens, so BOS marks every document boundary.

One Ray task per input file writes `train-NNNNN.bin` and `val-NNNNN.bin`, numbered by the input's
position in the sorted list, so the shard order never depends on which task finished first. With the
`megatron` format it also writes Megatron-LM's indexed dataset (train/megatron.py), merged at the end
into one `megatron/train_text_document` and one `megatron/val_text_document`. A
document goes to validation when a hash of its id falls below `val_fraction`: the split is the
same on every rerun and for every tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = 20240520
HEADER_INTS = 256
VERSIONS = {1: np.uint16, 2: np.uint32}


def write_shard(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    version = 1 if vocab_size <= 2**16 else 2
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = MAGIC, version, len(tokens)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.dtype(VERSIONS[version]).newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)


def read_shard(path: str | Path) -> np.ndarray:
    """The tokens of a shard, memory-mapped (nothing is read until used)."""
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if len(header) < 3 or header[0] != MAGIC or header[1] not in VERSIONS:
        raise ValueError(f"{path}: not a token shard (magic {header[0] if len(header) else None}, expected {MAGIC})")
    dtype = np.dtype(VERSIONS[int(header[1])]).newbyteorder("<")
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_INTS * 4, shape=(int(header[2]),))
    return tokens


def is_validation(doc_id: str, val_fraction: float) -> bool:
    digest = hashlib.blake2b(doc_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < val_fraction


FORMATS = ("llmc", "megatron")


def tokenize_file(index: int, path: str, tokenizer_path: str, out_dir: str, val_fraction: float,
                  batch_size: int = 512, formats: tuple[str, ...] = ("llmc",)) -> dict[str, Any]:
    """One input file to one train and one validation shard per format; returns their token and document
    counts (llm.c's figures, BOS included, when it is among the formats)."""
    import pyarrow.dataset as ds

    from train.tokenizer import load_vocab

    vocab = load_vocab(tokenizer_path)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}  # each document's tokens, no special token
    data = ds.dataset(path, format="parquet")
    columns = ["id", "text"] if "id" in data.schema.names else ["text"]
    row = 0
    for batch in data.to_batches(columns=columns, batch_size=batch_size):
        texts = [t or "" for t in batch.column("text").to_pylist()]
        ids = batch.column("id").to_pylist() if "id" in columns else [f"{path}:{row + k}" for k in range(len(texts))]
        row += len(texts)
        for doc_id, encoded in zip(ids, vocab.encode_batch(texts), strict=True):
            split = "val" if is_validation(str(doc_id), val_fraction) else "train"
            parts[split].append(np.asarray(encoded, dtype=np.uint32))
    out = {}
    for split, docs in parts.items():
        out[split] = {"tokens": sum(len(d) + 1 for d in docs), "docs": len(docs)}
        if "llmc" in formats:
            bos = np.array([vocab.bos_id], dtype=np.uint32)
            tokens = np.concatenate([piece for d in docs for piece in (bos, d)]) if docs else np.zeros(0, np.uint32)
            name = f"{split}-{index:05d}.bin"
            write_shard(Path(out_dir) / name, tokens, vocab.size)
            out[split]["file"] = name
        if "megatron" in formats:
            from train.megatron import write_indexed

            (Path(out_dir) / "megatron").mkdir(exist_ok=True)
            write_indexed(Path(out_dir) / "megatron" / f"{split}-{index:05d}", docs, vocab.eos_id, vocab.size)
    return {"input": path, **out}


def tokenize_to_shards(inputs: list[str], tokenizer_path: str, out_dir: str, val_fraction: float = 0.01,
                       num_cpus: int | None = None, formats: tuple[str, ...] = ("llmc",)) -> dict[str, Any]:
    """Tokenizes every input file on Ray and writes `meta.json` describing the shards: llm.c's
    `train-NNNNN.bin` and `val-NNNNN.bin`, and/or Megatron-LM's `megatron/{train,val}_text_document`."""
    import ray

    from train.tokenizer import load_vocab, tokenizer_digest

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--format {','.join(formats)}: choose from {', '.join(FORMATS)} (comma-separated)")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")
    try:
        task = ray.remote(tokenize_file)
        results = ray.get([task.remote(k, path, tokenizer_path, out_dir, val_fraction, formats=tuple(formats))
                           for k, path in enumerate(inputs)])
    finally:
        if started:
            ray.shutdown()
    vocab = load_vocab(tokenizer_path)
    meta = {
        "tokenizer": str(Path(tokenizer_path).resolve()), "tokenizer_digest": tokenizer_digest(tokenizer_path),
        "vocab_size": vocab.size, "bos_id": vocab.bos_id, "dtype": "uint16" if vocab.size <= 2**16 else "uint32",
        "val_fraction": val_fraction, "formats": list(formats), "shards": results,
        "train_tokens": sum(r["train"]["tokens"] for r in results),
        "val_tokens": sum(r["val"]["tokens"] for r in results),
        "docs": sum(r["train"]["docs"] + r["val"]["docs"] for r in results),
    }
    if "megatron" in formats:
        from train.megatron import merge, token_dtype

        folder = Path(out_dir) / "megatron"
        for split in ("train", "val"):
            merge([folder / f"{split}-{k:05d}" for k in range(len(inputs))], folder / f"{split}_text_document")
        meta["megatron"] = {"train": "megatron/train_text_document", "val": "megatron/val_text_document",
                            "dtype": str(token_dtype(vocab.size)), "eod_id": vocab.eos_id}
    tmp = Path(out_dir) / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(Path(out_dir) / "meta.json")
    return meta
