"""The Hugging Face Hub side of the dataset card: one config per published folder, with its features.

A run publishes three folders that 🤗 Datasets can load as configs of one dataset: `output/` (the
curated documents, config `default`), `instructions/` and `rephrased/`. The card's YAML header names
each with its `data_files`, its features and its size, so that `load_dataset(RUN_DIR, "instructions")`
works on the run directory, and `load_dataset("user/name", "instructions")` on a Hub repository that
holds the same folders. A folder without rows is left out: 🤗 Datasets cannot load a split of none.

Features are written in the card's own YAML form (what `datasets.Features._to_yaml_list` writes), from
the Parquet schema, without importing `datasets`: the pipeline does not depend on it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# (config name, folder under the run directory): the order the card lists them in.
FOLDERS = [("default", "output"), ("instructions", "instructions"), ("rephrased", "rephrased")]
SIZE_CATEGORIES = [(1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"), (1e7, "1M<n<10M"),
                   (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"), (1e11, "10B<n<100B"),
                   (1e12, "100B<n<1T")]
_FLOATS = {16: "float16", 32: "float32", 64: "float64"}


def size_category(rows: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if rows < limit), "n>1T")


def dtype_name(column: str, t: pa.DataType) -> str:
    """The name 🤗 Datasets gives an Arrow scalar type (`Value(...)`)."""
    if pa.types.is_floating(t):
        return _FLOATS[t.bit_width]
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_date32(t):
        return "date32"
    if pa.types.is_date64(t):
        return "date64"
    if (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_timestamp(t)):
        return str(t)  # int32, string, large_string, timestamp[us, tz=UTC], ...
    raise ValueError(f"column {column!r}: Arrow type {t} has no 🤗 Datasets equivalent; write it as a list "
                     "of structs or as text instead")


def feature(name: str, t: pa.DataType) -> dict[str, Any]:
    """One entry of a card's `features` list: `{name, dtype}`, `{name, list}` or `{name, struct}`."""
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if pa.types.is_struct(inner):
            return {"name": name, "list": [feature(f.name, f.type) for f in inner]}
        return {"name": name, "list": dtype_name(name, inner)}
    if pa.types.is_struct(t):
        return {"name": name, "struct": [feature(f.name, f.type) for f in t]}
    return {"name": name, "dtype": dtype_name(name, t)}


def features(schema: pa.Schema) -> list[dict[str, Any]]:
    return [feature(f.name, f.type) for f in schema]


def hub_configs(run_dir: str) -> list[dict[str, Any]]:
    """Each published folder that holds rows: its config name, folder, rows, size category and features
    (the row counts and schemas come from the Parquet footers: no data is read)."""
    from pipeline.report.collect import parquet_files, run_fs

    fs, root = run_fs(run_dir)
    configs = []
    for name, folder in FOLDERS:
        files = parquet_files(f"{root}/{folder}", fs)
        rows, schemas = 0, []
        for path in files:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
                rows += meta.num_rows
                schemas.append(meta.schema.to_arrow_schema())
        if rows:
            schema = pa.unify_schemas(schemas, promote_options="permissive")
            try:
                named = features(schema)
            except ValueError:  # a run written before pii_counts was a list: the card names no features
                named = None
            configs.append({"name": name, "folder": folder, "rows": rows, "size": size_category(rows),
                            "features": named})
    return configs


def header_configs(configs: list[dict[str, Any]], prefix: bool) -> dict[str, Any]:
    """The card header's `configs` and `dataset_info`: paths under the run directory (`prefix`), or, for the
    card inside `output/`, relative to it (where only `default` can be named)."""
    if not prefix:
        configs = [c for c in configs if c["name"] == "default"]
    return {
        "configs": [{"config_name": c["name"],
                     "data_files": [{"split": "train",
                                     "path": f"{c['folder']}/part-*.parquet" if prefix else "part-*.parquet"}],
                     **({"default": True} if c["name"] == "default" else {})} for c in configs],
        **({"dataset_info": [{"config_name": c["name"], "features": c["features"]} for c in configs
                             if c["features"] is not None]} if any(c["features"] for c in configs) else {}),
    }
