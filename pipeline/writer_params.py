"""How a stage writes its Parquet shards (`writer:` in a map or dedup stage).

Its own module, apart from pipeline.config: the code that writes shards imports it, and a stage's
fingerprint follows that code's imports (pipeline.sources), which should not reach every config model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Codecs pyarrow's Parquet writer takes, with the compression levels each accepts (None: no level).
COMPRESSION_LEVELS: dict[str, tuple[int, int] | None] = {
    "zstd": (1, 22), "gzip": (1, 9), "brotli": (0, 11), "lz4": None, "snappy": None, "none": None}


class WriterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target_shard_mb: int = Field(256, ge=1)  # a stage output file rolls over at this much uncompressed text
    row_group_mb: int = Field(32, ge=1)  # readers fetch row groups; ~32 MB keeps them few and small
    compression: Literal["zstd", "gzip", "brotli", "lz4", "snappy", "none"] = "zstd"
    compression_level: int | None = 3

    @model_validator(mode="after")
    def _level_fits_codec(self) -> WriterConfig:
        levels = COMPRESSION_LEVELS[self.compression]
        if levels is None:
            self.compression_level = None  # these codecs take no level
        elif self.compression_level is not None and not levels[0] <= self.compression_level <= levels[1]:
            raise ValueError(f"compression_level: {self.compression} takes {levels[0]} to {levels[1]}, "
                             f"got {self.compression_level}")
        return self
