"""Sampling from a checkpoint with a KV cache: `winnow generate CKPT`.

Prompts of different lengths are batched by padding them on the left; an attention mask keeps
every sequence off its padding and positions start at each prompt's first real token. Sampling
supports temperature, top-k, top-p (nucleus), min-p, a token limit, stop strings, a seed, and
best-of-N, where each prompt is sampled N times and the sample with the highest mean log-probability
is returned with that score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from train.model import GPT, KVCache
from train.tokenizer import Vocab


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


@dataclass
class Completion:
    text: str
    tokens: list[int]
    score: float  # mean log-probability of the sampled tokens (under the temperature-scaled distribution)
    finish_reason: str  # "stop" (an end token or a stop string) or "length"


def filter_logits(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, min-p and top-p, as masks on the logits (-inf where cut)."""
    logits = logits.float() / p.temperature
    if p.top_k and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.min_p > 0:
        logits = logits.masked_fill(probs < p.min_p * probs.max(dim=-1, keepdim=True).values, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        cut = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= p.top_p)
        logits = logits.masked_fill(cut, float("-inf"))
    return logits


def sample_step(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next token ids (B,) and their log-probabilities."""
    if p.temperature == 0:
        ids = logits.argmax(-1)
        return ids, torch.log_softmax(logits.float(), -1).gather(-1, ids[:, None])[:, 0]
    filtered = filter_logits(logits, p)
    probs = torch.softmax(filtered, dim=-1)
    ids = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return ids, torch.log_softmax(filtered, -1).gather(-1, ids[:, None])[:, 0]


@torch.no_grad()
def stream(model: GPT, prompts: list[list[int]], p: SamplingParams,
           device: torch.device | str = "cpu") -> Iterator[tuple[list[int], list[float]]]:
    """Yields (token ids, log-probs), one of each per prompt, step by step, for left-padded, batched
    prompts; at most as many steps as the model's context leaves after the longest prompt."""
    steps = token_budget(model, prompts, p.max_new_tokens)
    generator = None
    if p.seed is not None:
        generator = torch.Generator(device=device).manual_seed(p.seed)
    batch, width = len(prompts), max(len(x) for x in prompts)
    idx = torch.zeros(batch, width, dtype=torch.long, device=device)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
    for i, prompt in enumerate(prompts):
        idx[i, width - len(prompt):] = torch.tensor(prompt, device=device)
        valid[i, width - len(prompt):] = True
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model.cfg, batch, width + steps, torch.device(device),
                    next(model.parameters()).dtype)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    diagonal = torch.eye(width, dtype=torch.bool, device=device)  # a padding row still attends to itself
    mask = ((causal & valid[:, None, :]) | diagonal)[:, None]
    logits, _ = model(idx, positions=positions, cache=cache, attn_mask=mask)
    last = logits[:, -1]
    next_pos = positions[:, -1] + 1
    keys = valid
    for _ in range(steps):
        ids, logprobs = sample_step(last, p, generator)
        yield ids.tolist(), logprobs.tolist()  # one transfer per step, not one per sequence
        keys = torch.cat([keys, torch.ones(batch, 1, dtype=torch.bool, device=device)], dim=1)
        logits, _ = model(ids[:, None], positions=next_pos[:, None], cache=cache, attn_mask=keys[:, None, None, :])
        last, next_pos = logits[:, -1], next_pos + 1


def token_budget(model: GPT, prompts: list[list[int]], wanted: int) -> int:
    """New tokens that fit in the model's context after the longest prompt (never more than asked)."""
    room = model.cfg.max_seq_len - max(len(x) for x in prompts)
    if room <= 0:
        raise ValueError(f"a prompt of {max(len(x) for x in prompts)} tokens leaves no room in the model's "
                         f"context of {model.cfg.max_seq_len}")
    return min(wanted, room)


def generate(model: GPT, vocab: Vocab, prompts: list[list[int]], p: SamplingParams,
             device: torch.device | str = "cpu", stop_ids: set[int] | None = None) -> list[Completion]:
    """One completion per prompt (the best of `p.best_of` samples)."""
    stop_ids = stop_ids if stop_ids is not None else {vocab.eos_id, vocab.end_of_turn_id}
    expanded = [prompt for prompt in prompts for _ in range(p.best_of)]
    n = len(expanded)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprob_sums = [0.0] * n
    finished: list[str | None] = [None] * n
    cut_texts: list[str | None] = [None] * n  # the text up to a stop string, where one appeared
    for ids, logprobs in stream(model, expanded, p, device):
        for i in range(n):
            if finished[i]:
                continue
            token = ids[i]
            if token in stop_ids:
                finished[i] = "stop"
                continue
            tokens[i].append(token)
            logprob_sums[i] += logprobs[i]
            if p.stop:
                text = vocab.decode(tokens[i])
                hit = min((text.find(s) for s in p.stop if s in text), default=-1)
                if hit >= 0:
                    cut_texts[i], finished[i] = text[:hit], "stop"
        if all(finished):
            break
    out = []
    for k in range(len(prompts)):
        group = range(k * p.best_of, (k + 1) * p.best_of)
        scores = {i: logprob_sums[i] / max(1, len(tokens[i])) for i in group}
        best = max(group, key=lambda i: scores[i])
        text = cut_texts[best] if cut_texts[best] is not None else vocab.decode(tokens[best])
        out.append(Completion(text, tokens[best], scores[best], finished[best] or "length"))
    return out
