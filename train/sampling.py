"""Choosing the next token for a batch whose rows each have their own sampling parameters.

Every row carries its temperature, top-k, top-p, min-p and random generator, as tensors of shape (B,),
so one batch can mix greedy rows with sampled ones at different settings. Sampling uses the
exponential race (argmax of p / E, E ~ Exp(1)), which draws exactly from p, with each row's noise
taken from that row's own generator: a row draws the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    best_of: int = 1


class RowParams:
    """The sampling parameters of the rows still decoding, as (B,) tensors on the model's device."""

    def __init__(self, params: list[SamplingParams], seeds: list[int], device: torch.device):
        self.greedy = torch.tensor([p.temperature == 0 for p in params], device=device)
        self.temperature = torch.tensor([p.temperature or 1.0 for p in params], device=device)
        self.top_k = torch.tensor([min(p.top_k, 1 << 31) for p in params], device=device)  # past the vocabulary: off
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.min_p = torch.tensor([p.min_p for p in params], device=device)
        self.all_greedy = all(p.temperature == 0 for p in params)
        self.any_top_k = any(p.top_k > 0 for p in params)
        self.any_top_p = any(p.top_p < 1.0 for p in params)
        self.any_min_p = any(p.min_p > 0 for p in params)
        self.generators = [None if p.temperature == 0 else torch.Generator(device=device).manual_seed(s % (1 << 63))
                           for p, s in zip(params, seeds, strict=True)]

    def keep(self, rows: torch.Tensor, kept: list[int]) -> None:
        """Keep only the rows at `rows` (the others finished)."""
        for name in ("greedy", "temperature", "top_k", "top_p", "min_p"):
            setattr(self, name, getattr(self, name)[rows])
        self.generators = [self.generators[i] for i in kept]


def filter_logits(logits: torch.Tensor, rp: RowParams) -> torch.Tensor:
    """Temperature, then top-k, min-p and top-p per row, as masks on the logits (-inf where cut)."""
    logits = logits.float() / rp.temperature[:, None]
    if rp.any_top_k:
        k = rp.top_k.clamp(max=logits.size(-1))
        top = torch.topk(logits, int(k.max()), dim=-1).values
        kth = top.gather(-1, (k - 1).clamp(min=0)[:, None])
        kth = torch.where(k[:, None] > 0, kth, torch.full_like(kth, float("-inf")))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if rp.any_min_p:
        probs = torch.softmax(logits, dim=-1)
        floor = rp.min_p[:, None] * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if rp.any_top_p:
        probs = torch.softmax(logits, dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        cut_sorted = (before >= rp.top_p[:, None]) & (rp.top_p[:, None] < 1.0)
        cut = torch.zeros_like(cut_sorted).scatter(-1, order, cut_sorted)
        logits = logits.masked_fill(cut, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, rp: RowParams, want_logprobs: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token ids (B,) and, when asked, their log-probabilities (under each row's filtered
    distribution; a greedy row's under its plain softmax)."""
    if rp.all_greedy:  # the common data-writing case: one argmax, no softmax over the vocabulary
        ids = logits.argmax(-1)
        if not want_logprobs:
            return ids, None
        chosen = logits.gather(-1, ids[:, None])[:, 0].float()
        return ids, chosen - torch.logsumexp(logits.float(), -1)
    filtered = filter_logits(logits, rp)
    probs = torch.softmax(filtered, dim=-1)
    race = torch.empty_like(probs)
    for row, generator in enumerate(rp.generators):
        if generator is None:
            race[row].fill_(1.0)
        else:
            race[row].exponential_(generator=generator)
    ids = torch.where(rp.greedy, logits.argmax(-1), (probs / race).argmax(-1))
    if not want_logprobs:
        return ids, None
    plain = torch.log_softmax(logits.float(), -1)
    logprobs = torch.where(rp.greedy[:, None], plain, torch.log_softmax(filtered, -1))
    return ids, logprobs.gather(-1, ids[:, None])[:, 0]
