"""The contract every stage kind fulfils, and the context the runner hands it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pipeline.config import StageConfig
    from pipeline.kinds.pool import ShardCalls
    from pipeline.rundir import RunDir
    from pipeline.stagedir import StageDir


@dataclass
class StageContext:
    """One stage of one run, as the runner resolved it."""

    rundir: RunDir
    index: int
    stage: StageConfig
    stagedir: StageDir  # its directory, and the shard protocol (pipeline/stagedir.py)
    fingerprint: str
    shards: dict[str, str]  # shard id -> input URL
    input_ids: dict[str, str]  # shard id -> identity of that input (see runner.input_identity)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # shard id -> completion record
    ensure_ray: Callable[[], None] = lambda: None
    notes: dict[str, Any] = field(default_factory=dict)  # what the kind learnt running; joins the summary

    @property
    def first(self) -> bool:
        return self.index == 0


class StageKind:
    """A kind of stage. Subclasses set `name` and override what differs from a map stage."""

    name: ClassVar[str]
    # True when a shard's output depends on every input shard (dedup): its completion records then
    # name the whole input set, and a changed set recomputes the whole stage.
    global_input: ClassVar[bool] = False
    # The config section (a key of its stage model in pipeline.config) this kind takes instead of `steps`, if any.
    section: ClassVar[str | None] = None
    # True when the stage's documents are its input, unchanged (it makes something else beside them).
    passes_documents_through: ClassVar[bool] = False
    # Folders of the stage directory where its shards write beside their documents: a shard's files
    # there are cleared when it begins and removed with it when it goes stale.
    folders: ClassVar[tuple[str, ...]] = ()

    def validate(self, stage: StageConfig, index: int) -> None:
        """Raise ValueError, phrased for the user, when the stage cannot stand at `index` (its keys were
        checked by its kind's model in pipeline.config)."""

    def fingerprint_parts(self, stage: StageConfig) -> tuple[list[str], dict[str, dict[str, str]]]:
        """The modules whose source and the library versions that decide what this stage writes."""
        return [], {}

    def shard_calls(self, ctx: StageContext) -> ShardCalls:
        """How one shard of this stage runs, for a kind whose shards each read one input shard: the
        runner streams such shards (pipeline/stream.py), starting each as soon as its input is done."""
        raise NotImplementedError

    def run(self, ctx: StageContext, pending: list[str]) -> list[dict[str, str]]:
        """A `global_input` kind computes its pending shards here, once every input shard is done, adding
        their records to ctx.done; it returns the failures."""
        raise NotImplementedError

    def shard_next(self, ctx: StageContext, shard: str, record: dict[str, Any]) -> dict[str, tuple[str, str]]:
        """The next stage's shards made from one finished shard: next id -> (input URL, identity).

        A shard keeps its id from stage to stage (its extra output files, when it rolled over, get
        `<id>.<chunk>`), so a shard that fails, or writes nothing, changes no other shard's id, and a
        rerun that fixes it recomputes only what descends from it. The identity is a digest of the
        record, so a recomputed upstream shard is noticed downstream."""
        from pipeline.fingerprint import record_digest

        digest = record_digest(record)
        return {(shard if chunk == 0 else f"{shard}.{chunk:03d}"): (ctx.stagedir.file_url(name), f"{digest}:{name}")
                for chunk, name in enumerate(record["outputs"])}

    def next_inputs(self, ctx: StageContext) -> tuple[dict[str, str], dict[str, str]]:
        """The next stage's shards and their identities, from every finished shard of this stage."""
        urls, ids = {}, {}
        for shard in sorted(ctx.done):
            for next_id, (url, identity) in self.shard_next(ctx, shard, ctx.done[shard]).items():
                urls[next_id], ids[next_id] = url, identity
        return urls, ids

    def summarize(self, ctx: StageContext, summary: dict[str, Any]) -> None:
        """Add what this kind reports beyond the common counts to the stage's manifest entry."""

    def describe(self, stage: dict[str, Any]) -> str:
        """One line for the dataset card: what the stage did, from its resolved config."""
        return ""
