"""Log-probabilities of given tokens under a model: what `winnow eval` sums and `winnow serve` echoes.

One full forward pass per batch, no cache: every token's log-probability given all tokens before it
in its sequence. Sequences are right-padded into batches of similar length; with causal attention
the padding after a sequence cannot change anything before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from train.model import GPT


@dataclass
class Scored:
    """`logprobs[i]` is log P(token i+1 | tokens 0..i); `top[i]` the most likely (id, log-prob) there."""

    logprobs: list[float]
    top: list[list[tuple[int, float]]] = field(default_factory=list)


@torch.no_grad()
def score(model: GPT, sequences: list[list[int]], device: torch.device | str = "cpu", top: int = 0,
          tokens_per_batch: int = 8192) -> list[Scored]:
    """Per-token log-probabilities (natural log) of each sequence, in the order given."""
    limit = model.cfg.max_seq_len
    for k, seq in enumerate(sequences):
        if len(seq) > limit:
            raise ValueError(f"sequence {k} has {len(seq)} tokens; the model's context is {limit}")
    out: list[Scored | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda k: -len(sequences[k]))
    start = 0
    while start < len(order):
        width = max(1, len(sequences[order[start]]))
        end = start + max(1, tokens_per_batch // width)
        batch = order[start:end]
        idx = torch.zeros(len(batch), width, dtype=torch.long)
        for row, k in enumerate(batch):
            idx[row, :len(sequences[k])] = torch.tensor(sequences[k], dtype=torch.long)
        logits, _ = model(idx.to(device))
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        chosen = logp.gather(-1, idx[:, 1:, None].to(logp.device))[..., 0].cpu()
        best = torch.topk(logp, min(top, logp.size(-1)), dim=-1) if top else None
        for row, k in enumerate(batch):
            n = max(0, len(sequences[k]) - 1)
            alternatives = []
            if best is not None:
                ids, values = best.indices[row, :n].tolist(), best.values[row, :n].tolist()
                alternatives = [list(zip(i, v, strict=True)) for i, v in zip(ids, values, strict=True)]
            out[k] = Scored(chosen[row, :n].tolist(), alternatives)
        start = end
    return out  # type: ignore[return-value]
