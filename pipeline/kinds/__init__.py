"""Stage kinds, registered by name: what a stage of each kind validates, hashes, runs and reports.

`map` runs a chain of document steps per shard; `dedup` decides across every shard at once;
`synth` makes instruction data from the documents and passes them on.
The runner knows only this contract (`base.StageKind`), never a kind by name.
"""

from __future__ import annotations

from pipeline.kinds.base import StageContext, StageKind
from pipeline.kinds.dedup import DedupKind
from pipeline.kinds.map import MapKind
from pipeline.kinds.synth import SynthKind

KINDS: dict[str, StageKind] = {kind.name: kind for kind in (MapKind(), DedupKind(), SynthKind())}

__all__ = ["KINDS", "StageContext", "StageKind"]
