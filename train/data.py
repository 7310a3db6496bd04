"""Training batches, resumable: windows of token shards (pretraining), and rows of encoded examples
(SFT and preference tuning).

`TokenLoader` streams windows from token shards, sampling without replacement.

The stream is every window of `seq_len + 1` tokens in every shard, visited once per epoch: the
shard order is shuffled per epoch, then the windows inside each shard, both from `seed + epoch`.
Only one shard's window order is held at a time, so memory does not grow with the dataset. Under
DDP every rank walks the same stream and takes every `world_size`-th window. The position (epoch,
shard, window) is three integers; a checkpoint saves it and a resumed run continues exactly there.

`RowBatches` draws micro-batches of prebuilt rows (SFT rows, or preference row groups), shuffled
anew each epoch from `seed + epoch`; its position is (epoch, cursor).
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from train.shards import read_shard


@dataclass
class LoaderState:
    epoch: int = 0
    shard: int = 0  # position in this epoch's shard order
    window: int = 0  # position in this shard's window order


class TokenLoader:
    def __init__(self, pattern_or_files: str | list[str], seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, state: LoaderState | None = None):
        files = sorted(glob.glob(pattern_or_files)) if isinstance(pattern_or_files, str) else pattern_or_files
        self.shards = [read_shard(f) for f in files]
        self.shards = [s for s in self.shards if len(s) > seq_len]
        if not self.shards:
            raise ValueError(f"{pattern_or_files}: no token shard holds more than seq_len={seq_len} tokens")
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.state = state or LoaderState()
        self._order: tuple[int, int, np.ndarray] | None = None  # (epoch, shard index, window order)
        self._shards_order: tuple[int, np.ndarray] | None = None  # (epoch, shard order)

    def windows_in(self, shard: np.ndarray) -> int:
        return (len(shard) - 1) // self.seq_len

    @property
    def tokens_per_epoch(self) -> int:
        return sum(self.windows_in(s) for s in self.shards) * self.seq_len

    def _shard_order(self, epoch: int) -> np.ndarray:
        if self._shards_order is None or self._shards_order[0] != epoch:
            self._shards_order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)))
        return self._shards_order[1]

    def _window_order(self, epoch: int, shard: int) -> np.ndarray:
        if self._order is None or self._order[:2] != (epoch, shard):
            n = self.windows_in(self.shards[shard])
            self._order = (epoch, shard, np.random.default_rng([self.seed, epoch, shard]).permutation(n))
        return self._order[2]

    def _next_window(self) -> np.ndarray:
        """The next window of the global stream (all ranks advance it alike)."""
        s = self.state
        while True:
            shard = int(self._shard_order(s.epoch)[s.shard])
            order = self._window_order(s.epoch, shard)
            if s.window < len(order):
                start = int(order[s.window]) * self.seq_len
                s.window += 1
                return self.shards[shard][start: start + self.seq_len + 1]
            s.shard, s.window = s.shard + 1, 0
            if s.shard == len(self.shards):
                s.epoch, s.shard = s.epoch + 1, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) on the CPU; the trainer moves them (from pinned memory on a GPU)."""
        rows = []
        for _ in range(self.batch_size):
            for r in range(self.world_size):
                window = self._next_window()
                if r == self.rank:
                    rows.append(np.asarray(window, dtype=np.int64))
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, int]:
        return asdict(self.state)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.state = LoaderState(**state)


def validation_batches(files: list[str], seq_len: int, batch_size: int,
                       max_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first windows of the validation shards, in order: the same batches at every evaluation."""
    wanted = max_batches * batch_size
    windows = []
    for f in sorted(files):
        tokens = read_shard(f)
        windows += [np.asarray(tokens[k * seq_len: (k + 1) * seq_len + 1], dtype=np.int64)
                    for k in range(min((len(tokens) - 1) // seq_len, wanted - len(windows)))]
        if len(windows) == wanted:
            break
    batches = []
    for k in range(0, len(windows) - batch_size + 1, batch_size):
        batch = torch.from_numpy(np.stack(windows[k: k + batch_size]))
        batches.append((batch[:, :-1], batch[:, 1:]))
    return batches


class RowBatches:
    """Micro-batches of `size` rows (or row groups) drawn without replacement, epoch after epoch.
    `make(index)` builds a batch from the drawn indices. Under DDP every rank walks the same order
    and takes its own slice of each step's `batch_size x world_size` draws; a step never spans two
    epochs. `rows` is what `make` reads, kept for callers that want it."""

    def __init__(self, rows: Any, size: int, make: Callable[[np.ndarray], Any], batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, what: str = "rows"):
        if size < batch_size * world_size:
            raise ValueError(f"{size} {what} are fewer than micro_batch x world size ({batch_size} x {world_size}): "
                             "lower micro_batch or add examples")
        self.rows, self.size, self.make = rows, size, make
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.cursor = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size))
        return self._order[1]

    def next_index(self) -> np.ndarray:
        step = self.batch_size * self.world_size
        if self.cursor + step > self.size:
            self.epoch, self.cursor = self.epoch + 1, 0
        start = self.cursor + self.rank * self.batch_size
        self.cursor += step
        return self.order(self.epoch)[start: start + self.batch_size]

    def next_batch(self) -> Any:
        return self.make(self.next_index())

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
