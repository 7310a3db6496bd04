"""Parquet shards: streaming reads, size-bounded writes, atomic renames.

A writer buffers rows until `row_group_mb` of text, writes them as one row group, and rolls to
a new file at `target_shard_mb`. On local disk files are written under a temporary name and
renamed into place on close, so a killed task leaves no half-written `part-*.parquet` behind.
On object storage the final key is written once (a rename there is a copy): the upload completes
on close, atomically, and an aborted one is discarded (see pipeline.storage).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import REJECTED_COLUMNS, schema_for
from pipeline.storage import discard, is_local


def _use_a_returning_memory_pool() -> None:
    """Winnow's Ray workers are long-lived and run one task after another. Arrow's default pool
    (mimalloc) keeps freed memory; jemalloc hands it back, which took a worker writing a 25k-document
    shard from 150 to 75 MB above its baseline. An explicit ARROW_DEFAULT_MEMORY_POOL still wins."""
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except NotImplementedError:  # a pyarrow build without jemalloc
        pa.set_memory_pool(pa.system_memory_pool())


_use_a_returning_memory_pool()


def iter_parquet(path: str, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    with fsspec.open(path, "rb") as f:
        reader = pq.ParquetFile(f)
        for batch in reader.iter_batches(batch_size=batch_size):
            yield batch.to_pylist()


def empty_parquet(schema: pa.Schema, compression: str = "zstd") -> bytes:
    """A Parquet file of `schema` with no row group at all, for a shard that must exist but has no rows.
    Writing an empty table instead makes one row group of zero rows, which 🤗 Datasets refuses
    (`ArrowInvalid: BatchSize must be greater than 0`); a file with none is read as zero rows by it,
    DuckDB, Polars and pandas alike."""
    sink = pa.BufferOutputStream()
    pq.ParquetWriter(sink, schema, compression=compression).close()
    return sink.getvalue().to_pybytes()


ROW_OVERHEAD = 256  # bytes counted per row on top of its text, for the non-text columns


def _row_sizes(table: pa.Table) -> np.ndarray:
    """Characters of text plus a fixed overhead, per row: what row groups and files are sized by."""
    if "text" not in table.column_names:
        return np.full(table.num_rows, ROW_OVERHEAD, dtype=np.int64)
    chars = pc.utf8_length(table.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
    return chars.astype(np.int64) + ROW_OVERHEAD


class ShardWriter:
    """Writes rows to `{prefix}-{k:03d}.parquet` files; `close()` returns the final paths."""

    def __init__(self, fs: fsspec.AbstractFileSystem, prefix: str, schema: pa.Schema,
                 target_shard_mb: int, row_group_mb: int, compression: str = "zstd", level: int = 3):
        self.fs, self.prefix, self.schema = fs, prefix, schema
        self.target_bytes = target_shard_mb << 20
        self.row_group_bytes = row_group_mb << 20
        self.compression, self.level = compression, level
        self.rename = is_local(fs)  # a temporary name and a rename on local disk; the final key on object storage
        # Rows wait as Arrow tables, not dicts: a row group of text costs about its own size.
        self.buffer: list[pa.Table] = []
        self.buffer_bytes = 0
        self.file_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.handle = None
        self.tmp_path = ""
        self.paths: list[str] = []
        self.rows = 0
        self.chars = 0  # characters of `text` written, for the funnel in manifests and reports

    def _final_path(self, k: int) -> str:
        return f"{self.prefix}-{k:03d}.parquet"

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def write_table(self, table: pa.Table) -> None:
        """Append rows; they go out in row groups of about `row_group_mb`."""
        table = table.select(self.schema.names).cast(self.schema)
        sizes = _row_sizes(table)  # measured once: they size the row groups and count the characters
        self.chars += int(sizes.sum()) - ROW_OVERHEAD * table.num_rows
        offset = 0
        while offset < table.num_rows:
            # Take rows up to the row-group budget, so one big table still makes bounded groups.
            budget = self.row_group_bytes - self.buffer_bytes
            within = int(np.searchsorted(np.cumsum(sizes[offset:]), budget, side="left")) + 1
            take = max(1, min(within, table.num_rows - offset))
            self.buffer.append(table.slice(offset, take))
            self.buffer_bytes += int(sizes[offset:offset + take].sum())
            offset += take
            if self.buffer_bytes >= self.row_group_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self.buffer:
            return
        if self.writer is None:
            final = self._final_path(len(self.paths))
            self.tmp_path = final + ".tmp" if self.rename else final
            self.handle = self.fs.open(self.tmp_path, "wb")
            self.writer = pq.ParquetWriter(self.handle, self.schema, compression=self.compression,
                                           compression_level=self.level)
        table = pa.concat_tables(self.buffer).combine_chunks()
        self.writer.write_table(table, row_group_size=table.num_rows)
        self.rows += table.num_rows
        self.file_bytes += self.buffer_bytes
        self.buffer, self.buffer_bytes = [], 0
        if self.file_bytes >= self.target_bytes:
            self._finish_file()

    def _finish_file(self) -> None:
        assert self.writer is not None and self.handle is not None
        self.writer.close()
        self.handle.close()
        final = self._final_path(len(self.paths))
        if self.rename:
            self.fs.mv(self.tmp_path, final)
        self.paths.append(final)
        self.writer, self.handle, self.file_bytes = None, None, 0

    def abort(self) -> None:
        """Drop the file being written (after an error): no temporary file is left behind."""
        for closing in (self.writer, self.handle):
            try:
                if closing is None:
                    continue
                if closing is self.handle and not self.rename:
                    discard(closing)  # closing it would publish half a file under the final key
                else:
                    closing.close()
            except Exception:  # noqa: BLE001 - already failing; the rm below is what matters
                pass
        self.writer, self.handle, self.buffer = None, None, []
        if self.tmp_path and self.rename:
            try:
                self.fs.rm(self.tmp_path)
            except (OSError, FileNotFoundError):
                pass

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
