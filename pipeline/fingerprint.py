"""Stage fingerprints: what decides whether a stage's finished shards can be reused.

A fingerprint hashes the stage's resolved config, the fingerprint of the stage before it, the
source of the code that runs it, and the versions of the libraries and models its steps use.
Change any of these and the stage, and so every stage after it, is recomputed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from importlib.metadata import version
from pathlib import Path

from filters import STEPS
from filters.warc import READER_MODULES
from pipeline.config import StageConfig

# Modules every map stage runs through, whatever its steps.
RUNTIME_MODULES = ("filters.base", "pipeline.stage", "pipeline.parquet_io", "pipeline.schema")
DEDUP_MODULES = ["pipeline.dedup.minhash", "pipeline.dedup.shuffle", "pipeline.dedup.components",
                 "pipeline.dedup.phases", "pipeline.dedup.params", "pipeline.dedup.stage"]


def _source_digest(module_names: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(set(module_names)):
        # Read the source file without importing it: a rerun that has nothing to do stays fast.
        spec = importlib.util.find_spec(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def stage_fingerprint(stage: StageConfig, previous: str, inputs: list[str] | None = None) -> str:
    modules = list(RUNTIME_MODULES)
    versions: dict[str, dict[str, str]] = {"winnow": {"version": version("winnow")}}
    if stage.reader is not None:
        modules += READER_MODULES
        versions["reader"] = {"resiliparse": version("resiliparse"), "faust-cchardet": version("faust-cchardet")}
    if stage.kind == "dedup":
        modules += DEDUP_MODULES
        versions["dedup"] = {name: version(name) for name in ("datasketch", "xxhash", "numpy", "pyarrow")}
    for i, step in enumerate(stage.steps):
        cls = STEPS[step["type"]]
        modules.append(cls.__module__)
        versions[f"{i}:{cls.type_name}"] = cls.versions(cls.Params(**step))
    payload = {
        # Resources and retries change how a stage runs, not what it writes.
        "stage": stage.model_dump(mode="json", exclude={"resources", "max_retries"}),
        "previous": previous,
        "inputs": inputs,
        "code": _source_digest(modules),
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
