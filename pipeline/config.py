"""Run configuration: YAML in, validated pydantic models out, with `--set` overrides.

Every model forbids unknown keys, so a typo fails before any work starts, with the key's path
and the nearest valid name. Steps are validated against the parameter model of their `type`.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from filters import STEPS
from filters.warc import WarcReaderParams
from pipeline.dedup.params import DedupParams


class ConfigError(ValueError):
    """A config problem, phrased for the user: which key, what is wrong, what to do."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RayConfig(Strict):
    address: str | None = None  # None: start a local Ray; "auto" or host:port: join a cluster
    num_cpus: int | None = Field(None, ge=1)  # local Ray only; None uses every core


class Resources(Strict):
    num_cpus: float = Field(1, gt=0)
    num_gpus: float = Field(0, ge=0)
    memory_mb: int | None = Field(2048, ge=1)  # what Ray reserves per task; the task itself stays within it


# Codecs pyarrow's Parquet writer takes, with the compression levels each accepts (None: no level).
COMPRESSION_LEVELS: dict[str, tuple[int, int] | None] = {
    "zstd": (1, 22), "gzip": (1, 9), "brotli": (0, 11), "lz4": None, "snappy": None, "none": None}


class WriterConfig(Strict):
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


class StageConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # also a directory name
    # map: a chain of document steps per shard. dedup: near-duplicate removal across all shards.
    # (pipeline/kinds/ registers the kinds; the stages validator checks the name.)
    kind: str = "map"
    reader: WarcReaderParams | None = None  # first stage only: how to read the input files
    steps: list[dict[str, Any]] = Field(default_factory=list)
    dedup: DedupParams | None = None  # dedup stages only
    # synth stages only; checked against pipeline.synth.params.SynthParams by the synth kind (imported
    # only for configs that have one, since it pulls in datasketch and the LLM client).
    synth: dict[str, Any] | None = None
    batch_size: int = Field(256, ge=1, le=1_000_000)
    resources: Resources = Field(default_factory=Resources)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    max_retries: int = Field(3, ge=0)  # Ray retries a task whose worker died
    # Map stages: run the shards on this many long-lived Ray actors, each building the steps (and loading
    # their models) once. Null: one task per shard, except on GPUs, where an actor pool is the default
    # (Ray never reuses a GPU task's process, so each task would load its models again).
    actors: int | None = Field(None, ge=1, le=10_000)

    @field_validator("steps")
    @classmethod
    def _check_steps(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        checked = []
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                raise ValueError(f"steps.{i}: expected a mapping with a `type`, got {step!r}")
            kind = step.get("type")
            if not isinstance(kind, str) or kind not in STEPS:
                raise ValueError(f"steps.{i}.type: unknown step {kind!r}{_suggest(str(kind), STEPS)}")
            try:
                params = STEPS[kind].Params(**step)
            except ValidationError as exc:
                raise ValueError(f"steps.{i} ({kind}): {_describe(exc, STEPS[kind].Params)}") from None
            checked.append(params.model_dump(mode="json"))
        return checked


class RunConfig(Strict):
    input: list[str]
    output_dir: str
    ray: RayConfig = Field(default_factory=RayConfig)
    # A shard of a map or synth stage starts as soon as its input shard is done (pipeline/stream.py);
    # false makes every stage wait for the whole stage before it. The output is the same either way.
    streaming: bool = True
    stages: list[StageConfig]

    @field_validator("input", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: list[str]) -> list[str]:
        if not value or not all(v.strip() for v in value):
            raise ValueError("no input files given: set `input` to paths, globs or URLs of WARC files")
        return value

    @field_validator("output_dir")
    @classmethod
    def _some_output(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty: set `output_dir` to a new or empty directory, or an earlier run's")
        return value

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, stages: list[StageConfig]) -> list[StageConfig]:
        if not stages:
            raise ValueError("at least one stage is needed")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if stages[0].reader is None:
            stages[0].reader = WarcReaderParams()
        for s in stages[1:]:
            if s.reader is not None:
                raise ValueError(f"stage {s.name!r}: only the first stage reads input files")
        from pipeline.kinds import KINDS

        for index, s in enumerate(stages):
            if s.kind not in KINDS:
                raise ValueError(f"stage {s.name!r}: unknown kind {s.kind!r}{_suggest(s.kind, KINDS)}")
            KINDS[s.kind].validate(s, index)
        return stages


def _suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(options))}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The valid field names of the section at `loc` inside `model`."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current else None
        current = _model_in(field.annotation) if field else None
    return list(current.model_fields) if current else []


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            lines.append(f"unknown key {path!r}{_suggest(str(loc[-1]), valid) if valid else ''}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if loc and msg.startswith(f"{loc[-1]}."):  # the step validator already names its key
                lines.append(".".join(str(p) for p in loc[:-1]) + "." + msg)
            else:
                lines.append(f"{path}: {msg}" if path else msg)
    return "; ".join(lines)


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value`. List items are addressed by index or by their name/type. The same
    parsing and messages serve `winnow train --set` (train/overrides.py)."""
    from train.overrides import apply_override as apply

    apply(raw, assignment, error=ConfigError)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate(raw, source=str(path))


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, RunConfig)}") from None
