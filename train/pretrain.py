"""`winnow train pretrain CONFIG` and `winnow train sft CONFIG`: next-token cross-entropy on the one
training loop (train/loop.py).

Pretraining reads windows of token shards (train/data.py); SFT reads rows of encoded examples
with a loss mask on the answers (train/sft.py). The loss is summed over the target tokens of a
step's micro-batches and divided by their count on every rank: an SFT micro-batch with few answer
tokens weighs what its tokens weigh, not as much as a full one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from train.config import TrainConfig
from train.loop import Distributed, build_optimizer, lr_at, peak_flops, run  # noqa: F401 (bench/ imports these)
from train.model import GPT
from train.start import build_model, model_config  # noqa: F401


def target_count(batch: tuple) -> torch.Tensor:
    """Tokens the loss covers in a micro-batch: the loss mask's, or every target."""
    return batch[2].sum() if len(batch) > 2 and batch[2] is not None else torch.tensor(batch[1].numel())


def batch_args(batch: tuple, device: torch.device) -> tuple:
    """(x, y[, loss_mask, positions, doc_ids]) on the device, as GPT.forward takes them; from pinned
    memory without blocking on a GPU."""
    if device.type != "cuda":
        return tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in batch)
    return tuple(t.pin_memory().to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t for t in batch)


class NextToken:
    """The language-modelling objective: stats are (summed loss, target tokens)."""

    def __init__(self, batches: Any, val_batches: Callable[[], list]):
        self.batches, self._val = batches, val_batches

    def setup(self, model: GPT, env: Distributed, autocast: Any) -> dict[str, Any]:
        return {}

    def to_device(self, batch: tuple, device: torch.device) -> tuple:
        return batch_args(batch, device)

    def weight(self, batch: tuple) -> torch.Tensor:
        return target_count(batch)

    def tokens(self, batch: tuple) -> int:
        return batch[0].numel()

    def forward(self, model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        _, loss = model(*batch, reduction="sum")
        return loss, torch.stack([loss.detach(), target_count(batch).to(loss.device).float()])

    def val_batches(self) -> list:
        return self._val()

    def summary(self, stats: torch.Tensor, prefix: str = "") -> dict[str, float]:
        loss, count = stats.tolist()
        return {f"{prefix}loss": round(loss / max(1.0, count), 6)}

    def describe(self, record: dict[str, Any]) -> str:
        return f"loss {record['loss']:.4f}" + (f" | val {record['val_loss']:.4f}" if "val_loss" in record else "")

    def extra(self) -> dict[str, Any]:
        return {}


def train(cfg: TrainConfig, batches: Any, val_batches: Callable[[], list], stop_at: int | None = None
          ) -> dict[str, Any]:
    """Runs (or resumes) pretraining or SFT. `batches` gives (x, y[, loss_mask, positions, doc_ids]) per
    micro-step and has state_dict/load_state_dict; `val_batches()` lists validation batches."""
    return run(cfg, NextToken(batches, val_batches), stop_at)
