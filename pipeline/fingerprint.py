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

from pipeline.config import StageConfig


def _source_digest(module_names: list[str]) -> str:
    h = hashlib.sha256()
    for name in sorted(set(module_names)):
        # Read the source file without importing it: a rerun that has nothing to do stays fast.
        spec = importlib.util.find_spec(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


def stage_fingerprint(stage: StageConfig, previous: str, inputs: list[str] | None = None) -> str:
    from pipeline.kinds import KINDS

    modules, kind_versions = KINDS[stage.kind].fingerprint_parts(stage)
    versions: dict[str, dict[str, str]] = {"winnow": {"version": version("winnow")}}
    if stage.reader is not None:
        from filters.warc import READER_MODULES

        modules += READER_MODULES
        versions["reader"] = {"resiliparse": version("resiliparse"), "faust-cchardet": version("faust-cchardet")}
    versions |= kind_versions
    payload = {
        # Resources and retries change how a stage runs, not what it writes.
        "stage": stage.model_dump(mode="json", exclude={"resources", "max_retries", "actors"}),
        "previous": previous,
        "inputs": inputs,
        "code": _source_digest(modules),
        "versions": versions,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def record_digest(record: dict) -> str:
    """What a completion record says about the bytes its shard wrote: a downstream shard records this
    as its input's identity, so a recomputed upstream shard with other content is noticed."""
    keys = ("fingerprint", "input", "input_id", "outputs", "rejected", "rows_in", "rows_out", "chars_out")
    payload = json.dumps({k: record.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def set_digest(input_ids: dict[str, str]) -> str:
    """One identity for a whole set of inputs, for stages whose every shard depends on all of them."""
    return hashlib.sha256(json.dumps(sorted(input_ids.items())).encode()).hexdigest()[:16]
