"""Parquet shards: streaming reads, size-bounded writes, atomic renames.

A writer buffers rows until `row_group_mb` of text, writes them as one row group, and rolls to
a new file at `target_shard_mb`. Files are written under a temporary name and renamed into
place on close, so a killed task leaves no half-written `part-*.parquet` behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import REJECTED_COLUMNS, schema_for


def iter_parquet(path: str, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    with fsspec.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        for batch in reader.iter_batches(batch_size=batch_size):
            yield batch.to_pylist()


def _row_bytes(row: dict[str, Any]) -> int:
    return len(row.get("text") or "") + 256


class ShardWriter:
    """Writes rows to `{prefix}-{k:03d}.parquet` files; `close()` returns the final paths."""

    def __init__(self, fs: fsspec.AbstractFileSystem, prefix: str, schema: pa.Schema,
                 target_shard_mb: int, row_group_mb: int, compression: str = "zstd", level: int = 3):
        self.fs, self.prefix, self.schema = fs, prefix, schema
        self.target_bytes = target_shard_mb << 20
        self.row_group_bytes = row_group_mb << 20
        self.compression, self.level = compression, level
        self.buffer: list[dict[str, Any]] = []
        self.buffer_bytes = 0
        self.file_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.handle = None
        self.tmp_path = ""
        self.paths: list[str] = []
        self.rows = 0

    def _final_path(self, k: int) -> str:
        return f"{self.prefix}-{k:03d}.parquet"

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.buffer.append(row)
            self.buffer_bytes += _row_bytes(row)
            if self.buffer_bytes >= self.row_group_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            self.tmp_path = self._final_path(len(self.paths)) + ".tmp"
            self.handle = self.fs.open(self.tmp_path, "wb")
            self.writer = pq.ParquetWriter(self.handle, self.schema, compression=self.compression,
                                           compression_level=self.level)
        table = pa.Table.from_pylist(self.buffer, schema=self.schema)
        self.writer.write_table(table, row_group_size=len(self.buffer))
        self.rows += len(self.buffer)
        self.file_bytes += self.buffer_bytes
        self.buffer, self.buffer_bytes = [], 0
        if self.file_bytes >= self.target_bytes:
            self._finish_file()

    def _finish_file(self) -> None:
        assert self.writer is not None and self.handle is not None
        self.writer.close()
        self.handle.close()
        final = self._final_path(len(self.paths))
        self.fs.mv(self.tmp_path, final)
        self.paths.append(final)
        self.writer, self.handle, self.file_bytes = None, None, 0

    def close(self) -> list[str]:
        self._flush()
        if self.writer is not None:
            self._finish_file()
        return self.paths


def writer_for(fs: fsspec.AbstractFileSystem, prefix: str, columns: dict[str, pa.DataType], rejected: bool,
               writer_cfg: Any) -> ShardWriter:
    cols = {**columns, **REJECTED_COLUMNS} if rejected else columns
    return ShardWriter(fs, prefix, schema_for(cols), writer_cfg.target_shard_mb, writer_cfg.row_group_mb,
                       writer_cfg.compression, writer_cfg.compression_level)
