"""The document-step contract shared by every module in `filters/`.

A document is a plain dict (columns in pipeline/schema.py). A batch is a list of them. A step takes a
batch and returns it; a filter never removes rows, it sets `drop_reason` on the documents it
rejects, and later steps skip those. Every step counts what it saw and why it dropped things,
so a stage's stats add up to its row counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from importlib.metadata import version
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

Doc = dict[str, Any]
log = logging.getLogger("winnow.steps")


def pkg_version(dist: str) -> str:
    return version(dist)


class StepParams(BaseModel):
    """Base for every step's parameters: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Step:
    """A document step. Subclasses set `type_name`, `Params`, and implement `process`."""

    type_name: ClassVar[str]
    Params: ClassVar[type[StepParams]] = StepParams
    # Columns this step adds to documents, so a stage knows its Parquet schema up front.
    output_columns: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, params: StepParams):
        self.params = params
        self.stats: Counter[str] = Counter()
        self.start_shard()

    @property
    def name(self) -> str:
        return self.type_name

    def start_shard(self) -> None:
        """Called before each shard: steps are reused across shards in a worker, state is not."""
        self.stats = Counter()

    @classmethod
    def versions(cls, params: StepParams) -> dict[str, str]:
        """Versions of libraries and models this step's output depends on (for fingerprints)."""
        return {}

    def process(self, docs: list[Doc]) -> None:
        """Transform or mark the live documents of a batch in place."""
        raise NotImplementedError

    def drop(self, doc: Doc, reason: str) -> None:
        doc["drop_reason"] = f"{self.type_name}:{reason}"
        self.stats[f"dropped:{reason}"] += 1

    def __call__(self, batch: list[Doc]) -> list[Doc]:
        live = [d for d in batch if d.get("drop_reason") is None]
        self.stats["in"] += len(live)
        try:
            self.process(live)
        except Exception:
            # Isolate the document that broke the batch, so one bad page costs one row.
            for doc in live:
                try:
                    self.process([doc])
                except Exception as exc:  # noqa: BLE001 - any failure on input is recorded, not raised
                    log.warning("%s failed on record %s (%s): %r", self.type_name, doc.get("id"),
                                doc.get("url"), exc)
                    self.drop(doc, "error")
        survivors = [d for d in live if d.get("drop_reason") is None]
        self.stats["out"] += len(survivors)
        # Characters after the step, for the report's funnel (extraction creates text, PII changes it).
        self.stats["chars_out"] += sum(len(d.get("text") or "") for d in survivors)
        return batch


class Filter(Step):
    """A step that keeps or drops each document, with a reason."""

    def process(self, docs: list[Doc]) -> None:
        for doc, reason in zip(docs, self.filter_batch(docs), strict=True):
            if reason is not None:
                self.drop(doc, reason)

    def filter_batch(self, docs: list[Doc]) -> list[str | None]:
        """Return None to keep a document, or the reason to drop it."""
        return [self.filter(d) for d in docs]

    def filter(self, doc: Doc) -> str | None:
        raise NotImplementedError
