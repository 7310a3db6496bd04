"""Column order and types of document shards."""

from __future__ import annotations

import pyarrow as pa

# Canonical order: identity and provenance first, then text, then what steps computed.
DOC_COLUMNS: dict[str, pa.DataType] = {
    "id": pa.string(),
    "url": pa.string(),
    "domain": pa.string(),
    "crawl_date": pa.timestamp("us", tz="UTC"),
    "text": pa.string(),
    "language": pa.string(),
    "language_score": pa.float32(),
    "quality_score": pa.float32(),
    "dup_cluster_id": pa.string(),
    "pii_count": pa.int32(),
    "token_count": pa.int32(),
    "source_file": pa.string(),
    "source_offset": pa.int64(),
}
REJECTED_COLUMNS: dict[str, pa.DataType] = {"drop_reason": pa.string(), "drop_stage": pa.string()}


def schema_for(columns: dict[str, pa.DataType]) -> pa.Schema:
    known = [(name, columns[name]) for name in DOC_COLUMNS if name in columns]
    extra = sorted((name, t) for name, t in columns.items() if name not in DOC_COLUMNS)
    return pa.schema(known + extra)
