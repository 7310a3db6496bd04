"""The synthetic-data stage's building blocks: generators, request cache, recipes, QC, one-shard runner."""

from pipeline.synth.params import SynthParams
from pipeline.synth.shard import INSTRUCTION_COLUMNS, REPHRASED_COLUMNS, run_synth_shard

__all__ = ["INSTRUCTION_COLUMNS", "REPHRASED_COLUMNS", "SynthParams", "run_synth_shard"]
