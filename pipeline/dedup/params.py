"""The `dedup:` section of a dedup stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

KeepKey = Literal["oldest", "newest", "longest", "shortest"]


class DedupParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = True  # drop whitespace-identical copies through a content-hash bucket
    minhash: bool = True  # drop near-copies through MinHash LSH
    shingle_size: int = Field(5, ge=1)  # words per shingle (FineWeb: 5)
    num_perm: int = Field(112, ge=2)  # MinHash permutations (FineWeb: 14 x 8 = 112)
    # Bands x rows, given explicitly (FineWeb: 14 x 8) or, when both are null, derived from
    # `threshold` with datasketch's optimal parameters for `num_perm`.
    bands: int | None = Field(14, ge=1)
    rows: int | None = Field(8, ge=1)
    threshold: float | None = Field(None, gt=0, lt=1)
    seed: int = 1
    # Check each candidate pair's true Jaccard similarity of shingles, and keep only pairs at
    # or above `verify_min_jaccard`: fewer false positives, one more exchange of shingle sets.
    verify: bool = False
    verify_min_jaccard: float = Field(0.8, gt=0, le=1)
    # Which document of a cluster survives: the first key decides, the next ones break ties,
    # and the document's position in the input breaks the last tie.
    keep: list[KeepKey] = Field(default_factory=lambda: ["oldest", "longest"])
    # Shuffle partitions. null: at least one per CPU, and one per `rows_per_partition` documents,
    # so the largest task's memory stays flat as the corpus grows.
    partitions: int | None = Field(None, ge=1)
    rows_per_partition: int = Field(250_000, ge=1000)

    @model_validator(mode="after")
    def _resolve_bands(self) -> DedupParams:
        if self.threshold is not None and self.bands is None and self.rows is None:
            from pipeline.dedup.minhash import lsh_params  # scipy: imported only when needed

            self.bands, self.rows = lsh_params(self.threshold, self.num_perm)
        if self.bands is None or self.rows is None:
            raise ValueError("give bands and rows, or set both to null and give a threshold")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if not (self.exact or self.minhash):
            raise ValueError("enable exact, minhash or both")
        return self
