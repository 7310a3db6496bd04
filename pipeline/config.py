"""Run configuration: YAML in, validated pydantic models out, with `--set` overrides.

Every model forbids unknown keys, so a typo fails before any work starts, with the key's path
and the nearest valid name. Each stage kind has its own model (MapStage, DedupStage, SynthStage),
picked by the stage's `kind`: a key the kind does not use is an error that names the stage, the key
and the kinds that do use it. Steps are validated against the parameter model of their `type`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator

from filters import STEPS
from filters.warc import WarcReaderParams
from pipeline.dedup.params import DedupParams
from pipeline.writer_params import COMPRESSION_LEVELS, WriterConfig
from train.overrides import fields_at as _fields_at
from train.overrides import suggest as _suggest

__all__ = ["COMPRESSION_LEVELS", "STAGE_MODELS", "ConfigError", "DedupStage", "MapStage", "RunConfig", "StageConfig",
           "SynthStage", "WriterConfig", "load_config", "validate"]


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


class StageBase(Strict):
    """What every stage has, whatever its kind."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)  # also a directory name
    kind: str  # each kind's model narrows it to its own name
    max_retries: int = Field(3, ge=0)  # Ray retries a task whose worker died


class MapStage(StageBase):
    """A chain of document steps, run on each input shard."""

    kind: Literal["map"] = "map"
    reader: WarcReaderParams | None = None  # first stage only: how to read the input files
    steps: list[dict[str, Any]] = Field(default_factory=list)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    resources: Resources = Field(default_factory=Resources)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    # Run the shards on this many long-lived Ray actors, each building the steps (and loading their
    # models) once. Null: one task per shard, except on GPUs, where an actor pool is the default (Ray
    # never reuses a GPU task's process, so each task would load its models again).
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


class CpuResources(Strict):
    """A dedup stage's tasks: CPUs and memory (no GPU: nothing in it runs on one)."""

    num_cpus: float = Field(1, gt=0)
    memory_mb: int | None = Field(2048, ge=1)

    @property
    def num_gpus(self) -> float:
        return 0


class DedupStage(StageBase):
    """Near-duplicate removal across every shard (pipeline/dedup/)."""

    kind: Literal["dedup"]
    dedup: DedupParams = Field(default_factory=DedupParams)
    batch_size: int = Field(256, ge=1, le=1_000_000)
    resources: CpuResources = Field(default_factory=CpuResources)
    writer: WriterConfig = Field(default_factory=WriterConfig)


class SynthStage(StageBase):
    """Instruction data made from the documents, which pass through unchanged (pipeline/synth/)."""

    kind: Literal["synth"]
    # A pipeline.synth.params.SynthParams once validated. The type is imported only for configs that
    # have a synth stage, since it pulls in datasketch and the LLM client.
    synth: Any = Field(None, validate_default=True)
    resources: Resources = Field(default_factory=Resources)  # GPUs: the `local` generator
    actors: int | None = Field(None, ge=1, le=10_000)  # as for a map stage

    @field_validator("synth", mode="before")
    @classmethod
    def _check_synth(cls, value: Any) -> Any:
        from pipeline.synth.params import SynthParams

        if isinstance(value, SynthParams):
            return value
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"expected a mapping of synth settings, got {value!r}")
        try:
            return SynthParams(**(value or {}))
        except ValidationError as exc:
            raise ValueError(_describe(exc, SynthParams)) from None


# The config model of each stage kind (pipeline/kinds/ registers the kinds by the same names).
STAGE_MODELS: dict[str, type[StageBase]] = {"map": MapStage, "dedup": DedupStage, "synth": SynthStage}


def _kind_of(stage: Any) -> str:
    """The tag that picks a stage's model: its `kind`, `map` when it has none."""
    if isinstance(stage, dict):
        kind = stage.get("kind", "map")
        return kind if isinstance(kind, str) else repr(kind)
    return getattr(stage, "kind", "map")


# A stage of any kind: validated against its kind's model only, so a key its kind does not use is an error.
StageConfig = Annotated[Annotated[MapStage, Tag("map")] | Annotated[DedupStage, Tag("dedup")]
                        | Annotated[SynthStage, Tag("synth")], Discriminator(_kind_of)]


class RunConfig(Strict):
    input: list[str]
    output_dir: str
    ray: RayConfig = Field(default_factory=RayConfig)
    # A shard of a map or synth stage starts as soon as its input shard is done, earlier stages' shards
    # first when CPUs are short (pipeline/stream.py);
    # false makes every stage wait for the whole stage before it. The output is the same either way.
    streaming: bool = True
    # Sample the whole run with py-spy into RUN_DIR/profile/ (pipeline/pyspy.py); per-step costs are
    # measured either way. Changes no output and no fingerprint.
    profile: bool = False
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
        if isinstance(stages[0], MapStage) and stages[0].reader is None:
            stages[0].reader = WarcReaderParams()
        for s in stages[1:]:
            if getattr(s, "reader", None) is not None:
                raise ValueError(f"stage {s.name!r}: only the first stage reads input files")
        from pipeline.kinds import KINDS

        for index, s in enumerate(stages):
            KINDS[s.kind].validate(s, index)
        return stages


def _describe(exc: ValidationError, model: type[BaseModel], raw: Any = None) -> str:
    lines = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), None
        if model is RunConfig and len(loc) > 2 and loc[0] == "stages" and loc[2] in STAGE_MODELS:
            loc, kind = loc[:2] + loc[3:], loc[2]  # pydantic names the stage's kind after its index
        path = ".".join(str(p) for p in loc)
        if err["type"] == "union_tag_invalid":
            tag = err["ctx"]["tag"]
            lines.append(f"{_stage(raw, loc)}: unknown kind {tag!r}{_suggest(tag, STAGE_MODELS)}")
        elif err["type"] == "extra_forbidden" and kind and _used_by_other_kinds(kind, loc[2:]):
            key, users = ".".join(str(p) for p in loc[2:]), _used_by_other_kinds(kind, loc[2:])
            also = f", or set `kind: {key}`" if key in users else ""
            lines.append(f"{_stage(raw, loc)}: a {kind} stage does not use `{key}` ({' and '.join(users)} stages "
                         f"do); remove it{also}")
        elif err["type"] == "extra_forbidden":
            valid = _fields_at(STAGE_MODELS[kind], loc[2:-1]) if kind else _fields_at(model, loc[:-1])
            lines.append(f"unknown key {path!r}{_suggest(str(loc[-1]), valid) if valid else ''}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if loc and msg.startswith(f"{loc[-1]}."):  # the step validator already names its key
                lines.append(".".join(str(p) for p in loc[:-1]) + "." + msg)
            else:
                lines.append(f"{path}: {msg}" if path else msg)
    return "; ".join(lines)


def _stage(raw: Any, loc: tuple[Any, ...]) -> str:
    """`stage 'NAME' (stages.N)` for the stage at `loc`, as the user wrote it."""
    try:
        name = raw["stages"][loc[1]]["name"]
    except (KeyError, IndexError, TypeError):
        name = None
    where = f"stages.{loc[1]}"
    return f"stage {name!r} ({where})" if isinstance(name, str) else where


def _used_by_other_kinds(kind: str, key: tuple[Any, ...]) -> list[str]:
    """The other stage kinds whose model has the key at `key` (inside a stage)."""
    return [other for other, m in STAGE_MODELS.items() if other != kind and key and key[-1] in _fields_at(m, key[:-1])]


# Every key of a stage, as `winnow run` wrote them all into run.yaml before each kind had its own model.
_OLD_STAGE_KEYS = {"name", "kind", "reader", "steps", "dedup", "synth", "batch_size", "resources", "writer",
                   "max_retries", "actors"}


def _from_old_run_yaml(raw: dict[str, Any]) -> dict[str, Any]:
    """A run.yaml written by an older `winnow run` lists every key on every stage, with what the stage's
    kind ignored: keep only what its kind uses, so that `winnow run RUN_DIR` goes on with such a run."""
    stages = raw.get("stages")
    if not isinstance(stages, list) or not any(isinstance(s, dict) and set(s) == _OLD_STAGE_KEYS for s in stages):
        return raw
    raw = copy.deepcopy(raw)
    for stage in raw["stages"]:
        if isinstance(stage, dict) and set(stage) == _OLD_STAGE_KEYS and stage["kind"] in STAGE_MODELS:
            model = STAGE_MODELS[stage["kind"]]
            for key in set(stage) - set(model.model_fields):
                del stage[key]
            if isinstance(stage["resources"], dict) and model.model_fields["resources"].annotation is CpuResources:
                stage["resources"].pop("num_gpus", None)
    return raw


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value`. List items are addressed by index or by their name/type. The same
    parsing and messages serve `winnow train --set` (train/overrides.py)."""
    from train.overrides import apply_override as apply

    apply(raw, assignment, error=ConfigError)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    from train.overrides import read_config

    raw = read_config(path, overrides, error=ConfigError)
    return validate(absolute_paths(raw), source=str(path))


def absolute_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """Relative local `output_dir` and `input` made absolute against the working directory, where they
    are meant: the run.yaml written from them then names the same places from any other directory."""
    def absolute(value: Any) -> Any:
        if isinstance(value, str) and value and "://" not in value and not os.path.isabs(value):
            return os.path.abspath(os.path.expanduser(value))
        return value

    out = dict(raw)
    if "output_dir" in out:
        out["output_dir"] = absolute(out["output_dir"])
    if isinstance(out.get("input"), list):
        out["input"] = [absolute(v) for v in out["input"]]
    elif "input" in out:
        out["input"] = absolute(out["input"])
    return out


def validate(raw: dict[str, Any], source: str = "config") -> RunConfig:
    raw = _from_old_run_yaml(raw)
    try:
        return RunConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, RunConfig, raw)}") from None
