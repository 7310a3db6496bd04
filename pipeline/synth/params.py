"""The synth stage's config section (`synth:` in a stage), checked before anything runs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.synth.qc import QCParams
from pipeline.synth.recipes import RecipeConfig
from pipeline.synth.webqa import WebQAParams


class SynthParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    generator: Literal["webqa", "llm", "local"] = "webqa"
    # llm: an OpenAI-compatible base URL (…/v1), the model name it serves, and where the key is.
    endpoint: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    chat: bool = True  # /chat/completions; False sends the rendered prompt to /completions
    # local: a Winnow checkpoint (file or folder), generating in process.
    checkpoint: str | None = None
    device: str = "cpu"
    recipes: list[RecipeConfig] = Field(default_factory=lambda: [RecipeConfig(name="paragraph_qa")])
    seed_tasks: str | None = None  # JSONL of seed tasks, for the self_instruct recipe
    webqa: WebQAParams = Field(default_factory=WebQAParams)
    # Requests: in flight at once (per shard task), rate limits for the whole cluster, and patience.
    concurrency: int = Field(16, ge=1)
    requests_per_s: float | None = Field(None, gt=0)
    tokens_per_min: float | None = Field(None, gt=0)
    rate_limiter: Literal["auto", "local", "ray"] = "auto"
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    max_retries: int = Field(6, ge=0)
    backoff_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # Sampling. Each sample of a prompt is its own request (and cache entry), with seed + sample index.
    # The ranges of train/sampling.SamplingRules (OpenAI's): what the bundled server and `local` accept.
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int | None = Field(0, ge=0, lt=2**62)
    stop: list[str] = Field(default_factory=list)
    n: int = Field(1, ge=1)  # samples per prompt, all kept when they pass QC
    best_of: int = Field(1, ge=1)  # samples per prompt, only the best kept (by judge score, else the first passing)
    qc: QCParams = Field(default_factory=QCParams)
    # Dollars per million tokens, for the cost in the stats.
    price_input_per_mtok: float = Field(0.0, ge=0)
    price_output_per_mtok: float = Field(0.0, ge=0)
    batch_docs: int = Field(256, ge=1)  # documents read and sent per batch: bounds memory
    max_docs: int | None = Field(None, ge=1)  # per shard, to cap what a run can spend
    cache_fsync: bool = False  # fsync each cached answer (survives a machine crash, not just a kill)

    @model_validator(mode="after")
    def _consistent(self) -> SynthParams:
        if self.generator == "llm" and not (self.endpoint and self.model):
            raise ValueError("synth.endpoint and synth.model are required with generator: llm")
        if self.generator == "local" and not self.checkpoint:
            raise ValueError("synth.checkpoint is required with generator: local")
        if self.n > 1 and self.best_of > 1:
            raise ValueError("synth.n and synth.best_of: set one of them (n keeps every sample, best_of keeps one)")
        names = [r.name for r in self.recipes]
        if len(set(names)) != len(names):
            raise ValueError(f"synth.recipes: each recipe once ({names})")
        return self

    @property
    def samples(self) -> int:
        return max(self.n, self.best_of)

    def sampling(self, sample: int) -> dict:
        out: dict = {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}
        if self.seed is not None:
            out["seed"] = self.seed + sample
        if self.stop:
            out["stop"] = list(self.stop)
        return out
