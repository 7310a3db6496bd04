"""The contract every stage kind fulfils, and the context the runner hands it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pipeline.config import StageConfig
    from pipeline.rundir import RunDir


@dataclass
class StageContext:
    """One stage of one run, as the runner resolved it."""

    rundir: RunDir
    index: int
    stage: StageConfig
    stage_dir: str  # an fs path inside rundir
    fingerprint: str
    shards: dict[str, str]  # shard id -> input URL
    input_ids: dict[str, str]  # shard id -> identity of that input (see runner.input_identity)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard id -> completion record
    ensure_ray: Callable[[], None] = lambda: None
    notes: dict[str, Any] = field(default_factory=dict)  # what the kind learnt running; joins the summary

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def stage_url(self) -> str:
        return self.rundir.url(self.stage_dir)


class StageKind:
    """A kind of stage. Subclasses set `name` and override what differs from a map stage."""

    name: ClassVar[str]
    # True when a shard's output depends on every input shard (dedup): its completion records then
    # name the whole input set, and a changed set recomputes the whole stage.
    global_input: ClassVar[bool] = False
    # The config section (a key of StageConfig) this kind takes instead of `steps`, if any.
    section: ClassVar[str | None] = None
    # True when the stage's documents are its input, unchanged (it makes something else beside them).
    passes_documents_through: ClassVar[bool] = False

    def validate(self, stage: StageConfig, index: int) -> None:
        """Raise ValueError, phrased for the user, when the stage cannot be of this kind."""

    def fingerprint_parts(self, stage: StageConfig) -> tuple[list[str], dict[str, dict[str, str]]]:
        """The modules whose source and the library versions that decide what this stage writes."""
        return [], {}

    def run(self, ctx: StageContext, pending: list[str]) -> list[dict[str, str]]:
        """Compute the pending shards, adding their records to ctx.done; return the failures."""
        raise NotImplementedError

    def next_inputs(self, ctx: StageContext) -> tuple[dict[str, str], dict[str, str]] | None:
        """The next stage's shards and their identities; None: this stage's output files."""
        return None

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        """Add what this kind reports beyond the common counts to the stage's manifest entry."""

    def describe(self, stage: dict[str, Any]) -> str:
        """One line for the dataset card: what the stage did, from its resolved config."""
        return ""
