"""Stage fingerprints: what decides whether a stage's finished shards can be reused.

A fingerprint hashes the stage's resolved config, the fingerprint of the stage before it, the
source of the code that runs it (its modules and every first-party module they import: see
pipeline.sources), and the versions of the libraries and models its steps use (model files by
their digest). Change any of these and the stage, and so every stage after it, is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import TYPE_CHECKING

from pipeline.sources import closure, module_file

if TYPE_CHECKING:
    from pipeline.config import StageConfig


def source_digest(modules: list[str]) -> str:
    """A digest of the source of `modules` and of every first-party module they import (pipeline.sources)."""
    h = hashlib.sha256()
    for name in closure(tuple(sorted(set(modules)))):
        h.update(name.encode() + b"\0")
        h.update(module_file(name).read_bytes())
    return h.hexdigest()[:16]


def stage_modules(stage: StageConfig) -> list[str]:
    """The modules a stage runs: its kind's module, the reader's for the first stage, and what the kind adds
    from its config (a map stage's step classes, say). Their imports are followed by source_digest."""
    from pipeline.kinds import KINDS

    kind = KINDS[stage.kind]
    modules = [type(kind).__module__, *kind.fingerprint_parts(stage)[0]]
    if getattr(stage, "reader", None) is not None:
        modules.append("filters.warc")
    return modules


def stage_fingerprint(stage: StageConfig, previous: str, inputs: list[str] | None = None) -> str:
    from pipeline.kinds import KINDS

    kind_versions = KINDS[stage.kind].fingerprint_parts(stage)[1]
    versions: dict[str, dict[str, str]] = {"winnow": {"version": version("winnow")}}
    if getattr(stage, "reader", None) is not None:
        versions["reader"] = {"resiliparse": version("resiliparse"), "faust-cchardet": version("faust-cchardet")}
    versions |= kind_versions
    payload = {
        # Resources and retries change how a stage runs, not what it writes.
        "stage": stage.model_dump(mode="json", exclude={"resources", "max_retries", "actors"}),
        "previous": previous,
        "inputs": inputs,
        "code": source_digest(stage_modules(stage)),
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
